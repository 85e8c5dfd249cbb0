"""What the areas' MCP tools share: the tool factory, annotations, and the one mapping of errors.

Each tool's input schema is its input model (unknown fields refused), its output schema the record it
returns; every failure comes back as `isError` with the seeds' diagnostic.
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
    """The one mapping from exceptions to an MCP tool error. A task group's group of one error (a tool
    that waits while it reports progress) is that error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, errors.EngineError):
        diag = exc.diagnostic()
    else:
        diag = errors.internal(exc)
        log.error("unexpected error in a tool (diagnostic %s)", diag.id, exc_info=exc)
    body = {"diagnostic": diag.model_dump(mode="json"), "error": diag.message}
    return CallToolResult(is_error=True, content=[TextContent(type="text", text=json.dumps(body))],
                          structured_content=body)


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
    """What the user is asked before a risky action under a `confirm-risky` profile."""

    confirm: bool
    """Allow it."""


class NeedsInput(Exception):
    """Raised by a tool that must ask the client first (protocol 2026-07-28 and later): the tool answers
    with `result`, and the client calls it again with the user's answer in `input_responses`."""

    def __init__(self, result: InputRequiredResult) -> None:
        super().__init__("input required")
        self.result = result


APPROVAL_KEY = "agentdock_approval"
MODERN_ELICITATION = "2026-07-28"
"""From this protocol version on, a server asks through `InputRequiredResult`, not a request of its own."""


async def confirm_risky(api: Any, ctx: Context, action: str) -> Any:
    """Under a profile whose policy says `approval: confirm-risky`, ask the user (MCP elicitation) before
    `action`; refuse when the client cannot ask or the user does not allow it. Returns the API to make
    the call with: once the user allowed it, one that tells the daemon so (`api.approved()`)."""
    session = (await api.me()).session
    policy = (session.profile or {}).get("policy") or {}
    if policy.get("approval") != "confirm-risky":
        return api
    evidence = {"field": "approval", "action": action, "profile_id": session.profile_id}
    caps = ctx.client_capabilities
    if caps is None or caps.elicitation is None:
        raise errors.PermissionDenied(
            f"approval: this session's profile {session.profile_id} asks the user before it may {action}, and this "
            "MCP client cannot ask (it declares no elicitation capability); refused", evidence=evidence)
    message = f"agentdock: session {session.id} (profile {session.profile_id}) wants to {action}. Allow it?"
    version = ctx.protocol_version
    if version is not None and is_version_at_least(version, MODERN_ELICITATION):
        answer = (ctx.input_responses or {}).get(APPROVAL_KEY)
        if not isinstance(answer, ElicitResult):  # the first round: ask, and be called again with the answer
            raise NeedsInput(InputRequiredResult(input_requests={APPROVAL_KEY: ElicitRequest(
                params=ElicitRequestFormParams(message=message,
                                               requested_schema=render_elicitation_schema(Confirm)))}))
        action_taken = answer.action
        allowed = action_taken == "accept" and bool((answer.content or {}).get("confirm"))
    else:
        result = await ctx.elicit(message, Confirm)
        action_taken = result.action
        allowed = result.action == "accept" and result.data.confirm
    if allowed:
        return api.approved()
    raise errors.PermissionDenied(f"approval: the user did not allow this session to {action} ({action_taken})",
                                  evidence={**evidence, "answer": action_taken})


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
