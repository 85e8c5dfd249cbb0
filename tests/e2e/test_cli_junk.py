"""Every `agentdock` command given junk for each of its arguments, as a careless user types it, against a
real daemon: each refuses with an error (argparse's usage error or a diagnostic), never a traceback,
and nothing is created."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from mcp_server import cli
from tests.conftest import Daemon

pytestmark = [pytest.mark.docker]

SKIPPED = {"daemon", "serve", "image"}
"""Commands that run a server or build images: not a place for junk arguments."""
LISTS = [("runs", "list"), ("sandbox", "list"), ("agent-run-groups", "list"), ("tasks", "list"),
         ("profiles", "list"), ("sessions", "list"), ("channels", "list")]


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            if not path and name in SKIPPED:
                continue
            yield from leaves(sub, (*path, name))


def junk(parser: argparse.ArgumentParser) -> list[str]:
    """Junk for every argument that takes a value: ids that are no ids, negative counts, NaN, broken JSON."""
    argv: list[str] = []
    for action in parser._actions:
        if action.option_strings and action.nargs == 0 or isinstance(action, argparse._HelpAction):
            continue  # flags that take no value
        if action.dest in ("json", "home") or action.choices:
            continue  # global flags; a choice argparse refuses itself
        value = {int: "-1", float: "nan"}.get(action.type, "../nope")
        if action.dest in ("metadata", "payload", "result", "body") or "json" in (action.help or "").lower():
            value = "{bad"
        if action.option_strings:
            argv += [action.option_strings[-1], value]
        elif action.nargs not in ("*", "?"):
            argv.append(value)
    return argv


def test_every_command_refuses_junk_with_an_error_and_never_a_traceback(daemon: Daemon, capsys):
    home = str(daemon.settings.home)
    answered = {}
    for path, parser in leaves(cli.parser()):
        given = junk(parser)
        if not given and path != ("runtimes",):
            continue  # a command that takes nothing to get wrong (a list, your own soul)
        argv = [*path, *given, "--home", home]
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage error
            code = exc.code
        out = capsys.readouterr()
        assert "Traceback" not in out.err + out.out, (argv, out.err)
        answered[" ".join(path)] = (code, out.err.strip().splitlines()[-1:] if out.err.strip() else out.out[:200])
    assert len(answered) > 40, sorted(answered)
    # `runtimes --image nope` answers that no such image is built: a read, and an answer.
    accepted = {cmd: said for cmd, (code, said) in answered.items() if code == 0 and cmd != "runtimes"}
    assert accepted == {}, "\n".join(f"{c}: {s!r}"[:150] for c, s in accepted.items())
    for args in LISTS:
        assert cli.main([*args, "--json", "--home", home]) == 0
        listed = json.loads(capsys.readouterr().out)
        rows = listed.get("data", listed.get("channels"))
        assert [r for r in rows if r.get("id") != "ses_root"] == [], (args, rows)
