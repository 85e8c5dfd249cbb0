"""The `agentdock` command: daemon, serve (MCP over stdio), image, and each area's commands (sandbox,
runs). Every command has --json; a failure prints its diagnostic, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from pydantic import ValidationError

from engine import errors, models
from engine.settings import Settings
from mcp_server import areas, commands, daemon, network
from mcp_server.client import DaemonClient
from mcp_server.http import VERSION
from runtimes import adapters


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(home=Path(args.home)) if args.home else Settings.load()


def cmd_daemon(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "run":
        daemon.configure_logging(settings)
        anyio.run(daemon.serve, settings)
        return 0
    if args.action == "start":
        pid = daemon.start(settings)
        commands.show({"status": "started", "pid": pid, "home": str(settings.home)}, args.json)
        return 0
    if args.action == "stop":
        pid = daemon.stop(settings)
        commands.show({"status": "stopped" if pid else "not running", "pid": pid}, args.json)
        return 0
    if args.action == "token":  # the TCP listener's bearer token, made on first use
        daemon.private_home(settings)
        print(network.token(settings))
        return 0
    pid = daemon.running_pid(settings)
    healthy = daemon.healthy(settings)
    commands.show({"status": "running" if healthy else ("starting or stuck" if pid else "not running"), "pid": pid,
                   "home": str(settings.home), "socket": str(settings.control_socket), **network.describe(settings)},
                  args.json)
    return 0 if healthy else 3


def cmd_serve(args: argparse.Namespace) -> int:
    from mcp_server import mcp_app

    settings = _settings(args)
    toolsets = [t for t in args.toolsets.split(",") if t] if args.toolsets else None
    mcp_app.chosen_tools(toolsets)  # an unknown name is refused before any daemon starts
    as_session = bool(os.environ.get("AGENTDOCK_TOKEN"))
    if not as_session:  # a session (inside a sandbox) reaches the daemon that runs it; it starts none
        daemon.ensure(settings)

    async def go() -> None:
        async with DaemonClient(settings) as client:
            grants = None
            if as_session:  # the tools this session may call (its permissions, its profile's bundles), no others
                grants = frozenset(c.id for c in (await client.call(areas.agent.ME)).capabilities)
            await mcp_app.serve_stdio(client, settings, toolsets, grants)

    anyio.run(go)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from runtimes import images

    from runtimes import clis

    which = ["small", "full"] if args.all or not (args.small or args.full) else (
        ["small"] if args.small else []) + (["full"] if args.full else [])
    named = args.runtimes if args.runtimes is not None else _settings(args).image_runtimes
    wanted = clis.parse(named) if named else []
    if args.runtimes is not None and not (args.small or args.full or args.all):
        which = []  # `--runtimes` alone: the agents image (and the full image it is built on)
    built = images.build(which, force=args.force, log=(lambda m: None) if args.json else print, runtimes=wanted)
    commands.show({"images": built}, args.json)
    return 0


def cmd_runtimes(args: argparse.Namespace) -> int:
    """The runtime catalog, and which real CLIs an image holds (at which versions)."""
    from runtimes import agents_image, clis

    if not models.IMAGE_REF.fullmatch(args.image):
        raise errors.InvalidInput("image", "must be an image reference (letters, digits and ._/:@-)")
    held = agents_image.inspect_runtimes(args.image)
    rows = []
    for name, adapter in adapters.DEFAULT.items():
        cli = clis.CATALOG.get(clis.ALIASES.get(name, name))
        rows.append({
            "runtime": name, "binary": adapter.binary or "(your command)",
            "package": f"{cli.package}@{cli.version}" if cli else "-",
            "secrets": ",".join(getattr(adapter, "secrets", ())) or "-",
            "in_image": (held or {}).get(cli.runtime, "no") if cli else "-",
        })
    commands.show({"image": args.image, "image_exists": held is not None, "data": rows}, args.json,
                  ["runtime", "binary", "package", "secrets", "in_image"])
    if not args.json:
        print(f"image {args.image}: " + ("not built (agentdock image build --runtimes claude-code,codex,pi,hermes)"
                                         if held is None else ", ".join(f"{k} {v}" for k, v in held.items()) or
                                         "no agent CLIs"))
    return 0


def cmd_area(args: argparse.Namespace) -> int:
    """An area's command, against the daemon (started if none runs)."""
    settings = _settings(args)
    daemon.ensure(settings)

    async def go() -> int:
        async with DaemonClient(settings) as client:
            return await args.call(client, args)

    return anyio.run(go)


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """--json and --home: taken before the command or after any subcommand (a subcommand's default is
    `SUPPRESS`, so it never overwrites what was given earlier)."""
    parser.add_argument("--json", action="store_true", default=default, help="exact JSON output")
    parser.add_argument("--home", default=default, help="state directory (default $AGENTDOCK_HOME or ~/.agentdock)")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="agentdock", description="A local, durable control plane for agent work: "
                                "runs in Docker sandboxes, groups, tasks, channels, spawned sessions.")
    _global_flags(p, None)
    p.add_argument("--version", action="version", version=f"agentdock {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", parents=[common], help="run, start, stop or inspect the daemon")
    d.add_argument("action", choices=["run", "start", "stop", "status", "token"],
                   help="run in the foreground, start in the background, stop, report its status, or print the "
                        "bearer token of its TCP listener (AGENTDOCK_LISTEN; made on first use)")
    d.set_defaults(fn=cmd_daemon)

    s = sub.add_parser("serve", parents=[common], help="MCP server on stdio (starts the daemon if needed)")
    s.add_argument("--toolsets", help=f"comma-separated toolsets ({','.join(a.NAME for a in areas.AREAS)}), single "
                   "tools, or a preset: `coordinator` (a small set for handing work out), `all` (the default)")
    s.set_defaults(fn=cmd_serve)

    i = sub.add_parser("image", parents=[common], help="build the sandbox images offline")
    i.add_argument("action", choices=["build"], help="build them")
    i.add_argument("--small", action="store_true", help="the small sandbox image (the default)")
    i.add_argument("--full", action="store_true", help="the full image (a Debian rootfs with tools)")
    i.add_argument("--all", action="store_true", help="every image")
    i.add_argument("--force", action="store_true", help="build again even if the image is there")
    i.add_argument("--runtimes", help="real agent CLIs for the agents image (agentdock-agents:latest), comma-"
                                      "separated: claude-code,codex,pi,hermes (default: $AGENTDOCK_IMAGE_RUNTIMES)")
    i.set_defaults(fn=cmd_image)

    r = sub.add_parser("runtimes", parents=[common], help="the runtime catalog, and the CLIs an image holds")
    r.add_argument("--image", default="agentdock-agents:latest", help="the image whose CLIs to list")
    r.set_defaults(fn=cmd_runtimes)

    cli = commands.Commands(sub, common)
    areas.add_commands(cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:  # everything after -- is the prompt (argparse mishandles -- inside subcommands)
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    args.json = bool(args.json)
    if hasattr(args, "prompt"):
        args.prompt = [*(args.prompt or []), *tail]
    try:
        return cmd_area(args) if hasattr(args, "call") else args.fn(args)
    except errors.EngineError as exc:
        return commands.fail(exc, getattr(args, "json", False))
    except ValidationError as exc:  # a command that built its input without `models.parse`
        return commands.fail(models.invalid(exc), getattr(args, "json", False))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
