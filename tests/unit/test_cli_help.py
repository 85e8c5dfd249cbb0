"""Every `agentdock` command and flag says what it is for, and the global flags go anywhere."""

from __future__ import annotations

import argparse
import subprocess

from mcp_server import cli
from tests.conftest import AGENTDOCK


def _walk(parser: argparse.ArgumentParser, path: str = "agentdock"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helped.get(name), f"{path} {name}: the command has no help"
                yield from _walk(sub, f"{path} {name}")


def test_every_command_and_every_flag_has_help():
    missing = []
    for path, parser in _walk(cli.parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_global_flags_go_before_the_command_or_after_it():
    early = cli.parser().parse_args(["--json", "--home", "/h", "tasks", "list"])
    late = cli.parser().parse_args(["tasks", "list", "--json", "--home", "/h"])
    neither = cli.parser().parse_args(["tasks", "list"])
    assert (early.json, early.home) == (True, "/h") == (late.json, late.home)
    assert (neither.json, neither.home) == (None, None)


def test_version_prints_the_version():
    out = subprocess.run([AGENTDOCK, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("agentdock 0."), out
