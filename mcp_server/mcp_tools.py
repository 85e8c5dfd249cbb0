"""What the areas' MCP tools share: the tool factory, its lean schemas, annotations, and the one mapping
of errors.

Each tool's input schema is its input model (unknown fields refused), its output schema the record it
returns, both trimmed to what a model needs to call the tool (`tools/list` is a client's context
budget); every failure comes back as `isError` with the seeds' diagnostic as its text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
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


SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
"""Keywords whose value maps names to schemas (the names themselves are data, not keywords)."""
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")
NULL = {"type": "null"}
REF_PREFIX = "#/$defs/"
JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
ANY_JSON = {"anyOf": [{"type": t} for t in JSON_TYPES if t != "integer"]}
"""Any JSON value, said so (a schema with no keyword at all is legal but unportable: the Inspector's
`--strict` flags it, and clients mapping schemas onto a typed dialect drop or refuse it)."""
CONSTRAINING = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "not")


def _children(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key, value in node.items():
        if key in SUBSCHEMA_MAPS and isinstance(value, dict):
            yield from (v for v in value.values() if isinstance(v, dict))
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))
        elif key in SUBSCHEMA_ONE and isinstance(value, dict):
            yield value


def _refs(node: dict[str, Any]) -> Iterator[str]:
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith(REF_PREFIX):
        yield node["$ref"].removeprefix(REF_PREFIX)
    for child in _children(node):
        yield from _refs(child)


def _map_children(node: dict[str, Any], fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: fn(v) if isinstance(v, dict) else v for k, v in value.items()}
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [fn(v) if isinstance(v, dict) else v for v in value]
        elif key in SUBSCHEMA_ONE and isinstance(value, dict):
            out[key] = fn(value)
        else:
            out[key] = value
    return out


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The input model's JSON schema as a model reads it: no titles; an optional field (`X | None = None`)
    as just X, without its null default (the model still accepts null; the schema need not say so); a
    definition used once written where it is used. Patterns, bounds, enums, defaults and descriptions
    stay: they are what a caller needs to get a call right the first time."""
    schema = model.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.pop("$defs", {})
    uses = Counter(_refs(schema))
    for definition in defs.values():
        uses.update(_refs(definition))
    kept = {name for name in defs if uses[name] > 1 or name in set(_refs(defs[name]))}

    def lean(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref", "").removeprefix(REF_PREFIX)
        if ref in defs and ref not in kept:  # inline: the use's own keys (its description) win
            node = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        node = _map_children({k: v for k, v in node.items() if k != "title"}, lean)
        if not any(k in node for k in CONSTRAINING):
            node = {**ANY_JSON, **node}
        branches = node.get("anyOf")
        if (isinstance(branches, list) and len(branches) == 2 and NULL in branches and "default" in node
                and node["default"] is None):
            node = {**next(b for b in branches if b != NULL),
                    **{k: v for k, v in node.items() if k != "anyOf"}}
        if "default" in node and node["default"] is None:
            del node["default"]
        return node

    out = lean(schema)
    if kept:
        out["$defs"] = {name: lean(defs[name]) for name in sorted(kept)}
    return out


def _types(node: dict[str, Any], defs: dict[str, Any]) -> set[str] | None:
    """The JSON types a value of `node` can have, or None when it can be anything."""
    ref = node.get("$ref", "").removeprefix(REF_PREFIX)
    if ref in defs:
        return _types(defs[ref], defs)
    if "type" in node:
        return {node["type"]} if isinstance(node["type"], str) else set(node["type"])
    branches = node.get("anyOf") or node.get("oneOf")
    if branches is None and len(node.get("allOf", [])) == 1:
        branches = node["allOf"]
    if branches:
        found: set[str] = set()
        for branch in branches:
            types = _types(branch, defs)
            if types is None:
                return None
            found |= types
        return found
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if values is not None:
        names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
                 list: "array", dict: "object"}
        return {names[type(v)] for v in values}
    return None


def _typed(types: set[str] | None) -> dict[str, Any]:
    """A schema of exactly these JSON types, in the portable spelling (one `type` per schema)."""
    if types is None:
        return ANY_JSON
    if "integer" in types and "number" in types:
        types = types - {"integer"}
    ordered = [t for t in JSON_TYPES if t in types]
    return {"type": ordered[0]} if len(ordered) == 1 else {"anyOf": [{"type": t} for t in ordered]}


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The record's top-level fields with their JSON types (a nested record is just an `object` or an
    `array`); no descriptions (the tool's description says what it returns). Every result the model
    serializes validates against it, as a client checks."""
    full = model.model_json_schema(mode="serialization", by_alias=True)
    defs = full.get("$defs", {})
    return {"type": "object",
            "properties": {name: _typed(_types(node, defs)) for name, node in full.get("properties", {}).items()}}


def lean_annotations(hints: ToolAnnotations) -> ToolAnnotations:
    """The hints that say something the protocol's defaults do not: a read-only tool is just that (whether
    it is destructive or idempotent means nothing then); otherwise `readOnlyHint: false` and
    `idempotentHint: false` are the defaults, while `destructiveHint` and `openWorldHint` default to true
    and so are always said."""
    if hints.read_only_hint:
        return ToolAnnotations(title=hints.title, read_only_hint=True, open_world_hint=hints.open_world_hint)
    return ToolAnnotations(title=hints.title, destructive_hint=hints.destructive_hint,
                           idempotent_hint=hints.idempotent_hint or None, open_world_hint=hints.open_world_hint)


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
        parameters=input_schema(input_model),
        fn_metadata=FuncMetadata(arg_model=_RawArgs, output_schema=output_schema(output_model),
                                 output_model=output_model),
        is_async=True, context_kwarg="ctx", annotations=lean_annotations(annotations),
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
