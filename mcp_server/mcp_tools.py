"""What the areas' MCP tools share: the tool factory, annotations, and the one mapping of errors.

Each tool's input schema is its input model (unknown fields refused), its output schema the record it
returns; every failure comes back as `isError` with the seeds' diagnostic as its JSON text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.elicitation import render_elicitation_schema
from mcp_types import (CallToolResult, ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult,
                       TextContent, ToolAnnotations)
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, ConfigDict

from engine import errors, models

log = logging.getLogger("agentdock.mcp")


class _RawArgs(ArgModelBase):
    """Hands the raw arguments to the tool, which validates them itself into a diagnostic."""

    model_config = ConfigDict(extra="allow")

    def model_dump_one_level(self) -> dict[str, Any]:
        return {"args": dict(self.model_extra or {})}


READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def annotations(**kw: bool) -> ToolAnnotations:
    """Honest hints for a tool that changes something: nothing is claimed unless said."""
    base = {"read_only_hint": False, "destructive_hint": False, "idempotent_hint": False, "open_world_hint": False}
    return ToolAnnotations(**{**base, **kw})


def _result(value: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value.model_dump_json())],
                          structured_content=value.model_dump(mode="json"))


def error_result(exc: BaseException) -> CallToolResult:
    """The one mapping from exceptions to an MCP tool error: the seeds' `{"diagnostic", "error"}` as the
    result's JSON text, and no structured content, which would have to match the tool's output schema
    (a client checks it, and would reject the result before anyone saw the diagnostic). A task group's
    group of one error (a tool that waits while it reports progress) is that error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, errors.EngineError):
        diag = exc.diagnostic()
    else:
        diag = errors.internal(exc)
        log.error("unexpected error in a tool (diagnostic %s)", diag.id, exc_info=exc)
    body = {"diagnostic": diag.model_dump(mode="json"), "error": diag.message}
    return CallToolResult(is_error=True, content=[TextContent(type="text", text=json.dumps(body))])


Handler = Callable[[Any, Context], Awaitable[BaseModel]]


def make_tool(name: str, description: str, input_model: type[models.Input], output_model: type[BaseModel],
              handler: Handler, annotations: ToolAnnotations) -> Tool:
    async def fn(args: dict[str, Any], ctx: Context) -> CallToolResult:
        try:
            return _result(await handler(models.parse(input_model, args), ctx))
        except NeedsInput as need:
            return need.result  # type: ignore[return-value]
        except Exception as exc:
            return error_result(exc)

    return Tool(
        fn=fn, name=name, description=description,
        parameters=input_model.model_json_schema(by_alias=True),
        fn_metadata=FuncMetadata(arg_model=_RawArgs, output_schema=output_model.model_json_schema(),
                                 output_model=output_model),
        is_async=True, context_kwarg="ctx", annotations=annotations,
    )


class Confirm(BaseModel):
    """What the person is asked about one pending approval."""

    confirm: bool
    """Approve it (unticked: deny it)."""


class Answer(NamedTuple):
    action: str
    """The client's `accept`, `decline` or `cancel`."""
    content: dict[str, Any]
    """The form's fields when accepted."""


class NeedsInput(Exception):
    """Raised by a tool that must ask the client first (protocol 2026-07-28 and later): the tool answers
    with `result`, and the client calls it again with the person's answers in `input_responses`."""

    def __init__(self, result: InputRequiredResult) -> None:
        super().__init__("input required")
        self.result = result


MODERN_ELICITATION = "2026-07-28"
"""From this protocol version on, a server asks through `InputRequiredResult`, not a request of its own."""


async def ask(ctx: Context, questions: dict[str, str], form: type[BaseModel]) -> dict[str, Answer]:
    """Ask the person at the client (MCP elicitation) each question, keyed, with `form`; the answers by key.
    Both protocol eras: before 2026-07-28 the server sends one `elicitation/create` per question; from it
    on, the first call answers with every question at once (`NeedsInput`) and the client calls again with
    the answers. A key the client did not answer is left out."""
    caps = ctx.client_capabilities
    if caps is None or caps.elicitation is None:
        raise errors.PermissionDenied(
            "this MCP client cannot ask its user (it declares no elicitation capability); decide from a terminal "
            "instead", suggested_command="agentdock approvals list --status pending",
            evidence={"field": "elicitation"})
    version = ctx.protocol_version
    if version is not None and is_version_at_least(version, MODERN_ELICITATION):
        given = {k: v for k, v in (ctx.input_responses or {}).items() if k in questions and isinstance(v, ElicitResult)}
        if not given:  # the first round: ask, and be called again with the answers
            schema = render_elicitation_schema(form)
            raise NeedsInput(InputRequiredResult(input_requests={
                key: ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
                for key, message in questions.items()}))
        return {k: Answer(v.action, dict(v.content or {})) for k, v in given.items()}
    answers = {}
    for key, message in questions.items():
        result = await ctx.elicit(message, form)
        answers[key] = Answer(result.action, result.data.model_dump() if result.action == "accept" else {})
    return answers


class Resource(NamedTuple):
    """A record readable as an MCP resource (JSON): `read` takes the template's parameters by name and
    reads under `resource_errors()`."""

    uri_template: str
    name: str
    description: str
    read: Callable[..., Awaitable[str]]


@contextlib.contextmanager
def resource_errors() -> Iterator[None]:
    """Resource reads answer engine errors as the protocol's resource errors (not-found: -32602)."""
    try:
        yield
    except errors.EngineError as exc:
        diag = exc.diagnostic()
        if diag.code == "not_found":
            raise ResourceNotFoundError(diag.message) from None
        raise ResourceError(diag.message) from None
