"""What the areas' CLI commands share: the parser they add to, printing, and failures as diagnostics.

An area declares its commands with `Commands.group(...)`; a command is `async (api, args) -> exit code`
and runs against the daemon through `AgentDockAPI`. Text output shows control characters as escapes;
`--json` prints exact JSON (a failure: the seeds' `{"diagnostic", "error"}` body).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from engine import errors

if TYPE_CHECKING:
    from mcp_server.api import AgentDockAPI

Command = Callable[["AgentDockAPI", argparse.Namespace], Awaitable[int]]
"""An area's command: runs against the API and prints its result; returns the exit code."""


class Commands:
    """The `agentdock` parser as areas see it: top-level command groups, shared by name (the runs
    area adds `prompt` to the devices area's `sandbox` group), each subcommand with `--json`/`--home`."""

    def __init__(self, sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self._sub = sub
        self._common = common
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def group(self, name: str, help: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            parser = self._sub.add_parser(name, parents=[self._common], help=help)
            self._groups[name] = parser.add_subparsers(dest="action", required=True)
        return self._groups[name]

    def local(self, group: str, name: str, fn: Callable[[argparse.Namespace], int],
              help: str | None = None) -> argparse.ArgumentParser:
        """A subcommand of `group` that runs `fn(args)` in this process, without the daemon (secrets:
        their values never cross a socket)."""
        parser = self._groups[group].add_parser(name, parents=[self._common], help=help)
        parser.set_defaults(fn=fn)
        return parser

    def add(self, group: str | None, name: str, call: Command, help: str | None = None) -> argparse.ArgumentParser:
        """A subcommand of `group` (None: a top-level command) that runs `call`; add its arguments to
        what this returns."""
        parent = self._sub if group is None else self._groups[group]
        parser = parent.add_parser(name, parents=[self._common], help=help)
        parser.set_defaults(call=call)
        return parser


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """Show control characters (terminal escapes a run printed, say) as escapes, not as commands to
    the terminal: a run's output must not be able to rewrite the screen or the window title."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def show(value: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print a record, a page of records (as a table of `columns`) or a dict."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if as_json:
        print(json.dumps(value, indent=2))
        return
    rows = value.get("data") if isinstance(value, dict) and isinstance(value.get("data"), list) else None
    if rows is not None and columns:
        table = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
        widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for t in table:
            print(safe("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True))))
        if value.get("next_cursor"):
            print(f"(more: --cursor {value['next_cursor']})")
        return
    if isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                v = json.dumps(v)
            elif isinstance(v, str) and "\n" in v:
                v = "\n" + "\n".join("    " + line for line in v.rstrip("\n").split("\n"))
            print(safe(f"{k.ljust(width)}  {v}"))
        return
    print(safe(str(value)))


def fail(exc: errors.EngineError, as_json: bool) -> int:
    """Print a failure as its diagnostic (never a traceback); the exit code is 1."""
    diag = exc.diagnostic()
    if as_json:
        print(json.dumps({"diagnostic": diag.model_dump(mode="json"), "error": diag.message}, indent=2))
    else:
        print(safe(f"error: {diag.message}"), file=sys.stderr)
        if diag.suggested_command:
            print(safe(f"  try: {diag.suggested_command}"), file=sys.stderr)
    return 1


def env_pairs(pairs: list[str] | None) -> dict[str, str] | None:
    """`--env NAME=VALUE` flags as a dict (None when none were given)."""
    if not pairs:
        return None
    out = {}
    for p in pairs:
        if "=" not in p:
            raise errors.InvalidInput("env", f"{p!r} is not NAME=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def given(**fields: Any) -> dict[str, Any]:
    """The flags the user gave (those not None), to parse into a request model."""
    return {k: v for k, v in fields.items() if v is not None}
