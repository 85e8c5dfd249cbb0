"""One declaration per operation, and what is made from it.

An area declares each of its operations once, as an `Op`: its name (the MCP tool and the permission a
session needs), what it does (the tool's description and the command's help), its input and output
models, the service call that carries it out, its HTTP method and path, its hints and its CLI shape.
From that one row come the HTTP route (`endpoint`), the MCP tool (`tool`), the CLI command
(`add_command`), and the call both `AgentDockAPI`s make: in process (`Op.serve`) and over the daemon's
socket (`DaemonClient.call`, which reads the same method, path and envelope). What does not fit a row
(SSE, artifact bytes, a tool that waits while it reports progress) stays explicit in its area.
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
import dataclasses
from enum import Enum
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.requests import Request
from starlette.responses import Response

from engine import errors, models
from engine.app import Engine
from engine.callers import Caller
from mcp_server import commands, http, mcp_tools

I = TypeVar("I", bound=models.Input)
O = TypeVar("O", bound=BaseModel)

READ = mcp_tools.READ
CHANGE = mcp_tools.annotations()
"""Changes something, not destructively, and repeating it is not a no-op."""
IDEMPOTENT = mcp_tools.annotations(idempotent_hint=True)
DESTROY = mcp_tools.annotations(destructive_hint=True, idempotent_hint=True)

_PATH_FIELD = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Op(Generic[I, O]):
    """One operation of one area (its toolset)."""

    toolset: str
    name: str
    """The MCP tool's name, and what a session's `tools` permission names."""
    summary: str
    """What it does, for an LLM choosing a tool and a person reading `--help`."""
    input: type[I]
    output: type[O]
    serve: Callable[[Engine, Caller, I], Awaitable[O]]
    """The service call, as the caller."""
    method: str
    path: str
    """Its HTTP route; `{field}` segments are fields of `input`, each an id checked by shape."""
    hints: ToolAnnotations = dataclasses.field(default_factory=lambda: READ)
    cli: str | None = None
    """`"group command"` (or one word for a top-level command); None: not a CLI command."""
    args: tuple[str, ...] = ()
    """The input fields the command takes as positional arguments, in order."""
    columns: tuple[str, ...] = ()
    """For a page of records: the table the command prints."""
    present: Callable[[Any], None] | None = None
    """How the command prints its answer for a person (default: the record's fields, or a table)."""
    envelope: str | None = "data"
    """The key the HTTP answer holds the output under (seed 002's agent routes use their own: `me`,
    `spawn`); None: the output is the body. A page (an output with a `data` list) is the body."""
    status: int = 200
    invalid: Callable[[Any], bool] | None = None
    """For an answer that can report a refusal (a soul found invalid): whether this one does; HTTP then
    answers 422 with it, which the client takes as the answer, not a failure."""
    tool: bool = True
    """Whether it is an MCP tool made from this row (False: HTTP and the CLI only, like the local user's
    session list, or a tool the area writes itself, like `agent_run`, which waits reporting progress)."""
    routed: bool = True
    """Whether its HTTP route is made from this row (False: the area serves its path itself, e.g. SSE)."""
    wait: str | None = None
    """The input field bounding a long poll, so that a client gives the answer that long."""
    max_body: int = http.MAX_BODY_BYTES

    @property
    def path_fields(self) -> list[str]:
        return _PATH_FIELD.findall(self.path)

    def parse(self, inp: I | None = None, /, **fields: Any) -> I:
        """The op's input: `inp` as it is, or the input model made from `fields` (checked)."""
        if inp is not None:
            if fields:
                raise TypeError("give the input model or its fields, not both")
            return inp
        return models.parse(self.input, fields)

    def url(self, inp: I) -> str:
        """The path with the input's ids put in, each one escaped segment."""
        return _PATH_FIELD.sub(lambda m: quote(str(getattr(inp, m.group(1))), safe=""), self.path)

    def rest(self, inp: I) -> dict[str, Any]:
        """The input less its path fields, as JSON: what the caller gave, and only that (a left-out field
        means the default on the other side too: a spawn's omitted `network_channels` is the parent's, not
        none), explicit nulls included (a profile update's `model: null` clears the model)."""
        dumped = inp.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return {k: v for k, v in dumped.items() if k not in self.path_fields}

    def wrapped(self) -> str | None:
        """The key under which HTTP carries the output (None: the body is the output)."""
        if self.envelope == "data" and "data" in self.output.model_fields:
            return None
        return self.envelope

    def timeout(self, inp: I) -> float | None:
        waited = getattr(inp, self.wait, None) if self.wait else None
        return float(waited) + 30 if isinstance(waited, (int, float)) else None


class Caller_(typing.Protocol):
    async def call(self, op: Op[I, O], inp: I | None = None, /, **fields: Any) -> O: ...


# ---------------------------------------------------------------- HTTP


def endpoint(op: Op[Any, Any], engine: Engine) -> http.Endpoint:
    """The op's route: path ids and the query (GET, DELETE) or the JSON body, checked as one input."""
    reads = op.method in ("GET", "DELETE")
    takes_key = "idempotency_key" in op.input.model_fields

    async def handler(request: Request, caller: Caller) -> Response:
        if reads:
            inp = http.params(request, op.input)
        else:
            for key in request.query_params:
                raise errors.InvalidInput(key, "this route takes no query parameters; send fields in the JSON body")
            fields = await http.body(request)
            for name, value in request.path_params.items():
                if name in fields and fields[name] != value:
                    raise errors.InvalidInput(name, "the body names another one than the path; send it once")
                fields[name] = value
            if takes_key:
                fields = http.with_idempotency_key(request, fields)
            inp = models.parse(op.input, fields)
        result = await op.serve(engine, caller, inp)
        key = op.wrapped()
        status = 422 if op.invalid is not None and op.invalid(result) else op.status
        body = result.model_dump(mode="json")
        return http.SafeJSONResponse(body if key is None else {key: body}, status_code=status)

    return http.Endpoint(_PATH_FIELD.sub(r"{\1:id}", op.path), handler, [op.method], op.max_body)


def endpoints(ops: Sequence[Op[Any, Any]], engine: Engine) -> list[http.Endpoint]:
    return [endpoint(op, engine) for op in ops if op.routed]


# ---------------------------------------------------------------- MCP


def tool(op: Op[Any, Any], api: Caller_, max_wait: float) -> Tool:
    """The op as an MCP tool. A long poll waits at most `max_wait` (clients give up on a call after about a
    minute): the caller calls again with its cursor."""

    async def handler(inp: models.Input, ctx: Context) -> BaseModel:
        waited = getattr(inp, op.wait, None) if op.wait else None
        if isinstance(waited, (int, float)) and waited > max_wait:
            inp = inp.model_copy(update={op.wait: max_wait})
        return await api.call(op, inp)

    return mcp_tools.make_tool(op.name, op.summary, op.input, op.output, handler, op.hints)


def tools(ops: Sequence[Op[Any, Any]], api: Caller_, max_wait: float) -> list[Tool]:
    return [tool(op, api, max_wait) for op in ops if op.tool]


# ---------------------------------------------------------------- CLI


def add_command(cli: commands.Commands, op: Op[Any, Any]) -> argparse.ArgumentParser:
    """The op as `agentdock <group> <command>`: its positional `args`, a flag for every other input
    field (help from the field's description), and the output printed (a table of `columns`)."""
    assert op.cli is not None
    group, _, name = op.cli.rpartition(" ")

    async def run(api: Caller_, args: argparse.Namespace) -> int:
        inp = models.parse(op.input, given(op.input, args))
        result = await api.call(op, inp)
        if op.present is not None and not args.json:
            op.present(result)
        else:
            commands.show(result, args.json, op.columns or None)
        return 0

    parser = cli.add(group or None, name, run, help=op.summary)
    for field, info in op.input.model_fields.items():
        add_argument(parser, field, info, positional=field in op.args)
    return parser


def given(model: type[models.Input], args: argparse.Namespace, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields of `model` the user gave as arguments (made by `add_argument`), ready to parse."""
    out = {}
    for name in fields if fields is not None else model.model_fields:
        info = model.model_fields[name]
        value = getattr(args, name, None)
        if value is None:
            continue
        kind = _kind(info)
        if kind == "json":
            value = _json_arg(value, name)
        elif kind == "pairs":
            value = commands.env_pairs(value)
        out[info.alias or name] = value
    return out


def add_argument(parser: argparse.ArgumentParser, field: str, info: FieldInfo, *, positional: bool = False) -> None:
    """`field` as an argument: an option `--the-field` unless `positional`; typed by its annotation."""
    kind = _kind(info)
    help_ = _help(info, kind)
    if positional:
        parser.add_argument(field, metavar=field.upper(), help=help_,
                            **({"type": kind} if kind in (int, float) else {}))
        return
    flag = "--" + (info.alias or field).rstrip("_").replace("_", "-")
    if kind is bool:
        parser.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif kind == "list":
        parser.add_argument(flag, dest=field, action="append", default=None, help=help_ + " (repeatable)")
    elif kind == "pairs":
        parser.add_argument(flag, dest=field, action="append", default=None, metavar="NAME=VALUE",
                            help=help_ + " (repeatable)")
    elif kind in (int, float):
        parser.add_argument(flag, dest=field, type=kind, default=None, help=help_)
    elif isinstance(kind, list):
        parser.add_argument(flag, dest=field, choices=kind, default=None, help=help_)
    else:
        parser.add_argument(flag, dest=field, default=None, help=help_)


def _help(info: FieldInfo, kind: object) -> str:
    """The field's description up to its first blank line, on one line (argparse wraps it)."""
    text = " ".join((info.description or "").split("\n\n")[0].split())
    return text + (" (JSON)" if kind == "json" else "")


def _kind(info: FieldInfo) -> Any:
    """How the CLI takes a field: int, float, bool, str, a list of choices, "list" (repeated) or "json"."""
    ann = info.annotation
    ann = _strip_optional(ann)
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        ann = _strip_optional(typing.get_args(ann)[0])
        origin = typing.get_origin(ann)
    if ann in (bool, int, float, str):
        return ann
    if isinstance(ann, type) and issubclass(ann, Enum):
        return [m.value for m in ann]
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(ann)]
    if origin in (list, tuple, set, frozenset) and _scalar(typing.get_args(ann)[0]):
        return "list"
    if origin is dict and typing.get_args(ann) == (str, str):
        return "pairs"
    return "json" if origin in (dict, list) or ann in (Any, object) or _is_model(ann) else str


def _scalar(ann: Any) -> bool:
    """A string, an enum of strings or a string shape (an `Annotated[str, ...]`)."""
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return ann is str or (isinstance(ann, type) and issubclass(ann, Enum)) or typing.get_origin(ann) is typing.Literal


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _json_arg(text: str, field: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(field, f"not valid JSON ({exc.msg})") from None
