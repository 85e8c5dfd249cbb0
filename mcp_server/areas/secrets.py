"""Secrets: CLI commands only (`agentdock secrets set|list|rm`), run in this process on the home's files.

A value is read from stdin or a file, never from an argument (arguments show in `ps` and shell
history), and never crosses a socket or reaches an MCP client: there are no secret tools or routes.
A run names the secrets it needs (`secrets: [NAME]`); see `engine.secrets`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from mcp.server.mcpserver.tools import Tool

from engine import errors, secrets
from engine.app import Engine
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint

NAME = "secrets"
"""No MCP tools or HTTP routes: values are set and removed at the terminal only."""


def endpoints(engine: Engine) -> list[Endpoint]:
    return []


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    return []


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return []


def _store(args: argparse.Namespace) -> secrets.SecretStore:
    settings = Settings.load(home=Path(args.home)) if args.home else Settings.load()
    return secrets.SecretStore(settings.secrets_dir)


def _value(args: argparse.Namespace) -> bytes:
    limit = secrets.MAX_VALUE_BYTES + 2  # room for a trailing newline, and one byte to tell it is too long
    if args.file:
        try:
            with open(args.file, "rb") as f:
                return f.read(limit + 1)
        except OSError as exc:
            raise errors.InvalidInput("file", f"cannot read {args.file}: {exc.strerror}") from None
    if sys.stdin is None or sys.stdin.closed:
        raise errors.InvalidInput("value", "give the value on stdin or with --file")
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {args.name} (not echoed): ").encode()
    return sys.stdin.buffer.read(limit + 1)


def cmd_set(args: argparse.Namespace) -> int:
    store = _store(args)
    secrets.check_name(args.name)  # before reading anything
    info = store.set(args.name, _value(args))
    commands.show(info, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    commands.show(_store(args).list(), args.json, ["name", "size", "updated_at"])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    commands.show(_store(args).remove(args.name), args.json)
    return 0


def add_commands(cli: commands.Commands) -> None:
    cli.group("secrets", "named secrets (API keys) for runs: set, list, rm")
    s = cli.local("secrets", "set", cmd_set, help="store a secret: the value from stdin or --file, never an argument")
    s.add_argument("name", help="the secret's name, the environment variable a run gets (e.g. ANTHROPIC_API_KEY)")
    s.add_argument("--file", help="read the value from this file (one trailing newline is dropped)")
    cli.local("secrets", "list", cmd_list, help="names and sizes, never values")
    cli.local("secrets", "rm", cmd_rm, help="remove a secret").add_argument("name", help="the secret's name")
