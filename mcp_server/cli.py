"""The `agentdock` command: daemon, serve (MCP over stdio), sandbox, runs, image. Every command has --json."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from engine import errors
from engine.settings import Settings
from mcp_server import daemon
from mcp_server.client import DaemonClient


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(home=Path(args.home)) if args.home else Settings()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """Show control characters (terminal escapes a run printed, say) as escapes, not as commands to
    the terminal: a run's output must not be able to rewrite the screen or the window title."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _print(value: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
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
            print(_safe("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True))))
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
            print(_safe(f"{k.ljust(width)}  {v}"))
        return
    print(_safe(str(value)))


def _fail(exc: errors.EngineError, as_json: bool) -> int:
    diag = exc.diagnostic()
    if as_json:
        print(json.dumps({"diagnostic": diag.model_dump(mode="json"), "error": diag.message}, indent=2))
    else:
        print(_safe(f"error: {diag.message}"), file=sys.stderr)
        if diag.suggested_command:
            print(f"  try: {diag.suggested_command}", file=sys.stderr)
    return 1


def _with_client(args: argparse.Namespace, call: Callable[[DaemonClient], Awaitable[Any]]) -> Any:
    settings = _settings(args)
    daemon.ensure(settings)

    async def go() -> Any:
        async with DaemonClient(settings) as client:
            return await call(client)

    return anyio.run(go)


def _env_pairs(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        if "=" not in p:
            raise errors.InvalidInput("env", f"{p!r} is not NAME=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


# ---------------------------------------------------------------- commands

RUN_COLUMNS = ["id", "status", "provider", "target_id", "exit_code", "failure_kind", "created_at"]
DEVICE_COLUMNS = ["id", "kind", "status", "image", "name", "created_at"]


def cmd_daemon(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "run":
        daemon.configure_logging(settings)
        anyio.run(daemon.serve, settings)
        return 0
    if args.action == "start":
        pid = daemon.start(settings)
        _print({"status": "started", "pid": pid, "home": str(settings.home)}, args.json)
        return 0
    if args.action == "stop":
        pid = daemon.stop(settings)
        _print({"status": "stopped" if pid else "not running", "pid": pid}, args.json)
        return 0
    pid = daemon.running_pid(settings)
    healthy = daemon.healthy(settings)
    _print({"status": "running" if healthy else ("starting or stuck" if pid else "not running"), "pid": pid,
            "home": str(settings.home), "socket": str(settings.control_socket)}, args.json)
    return 0 if healthy else 3


def cmd_serve(args: argparse.Namespace) -> int:
    from mcp_server import mcp_app

    settings = _settings(args)
    daemon.ensure(settings)
    toolsets = [t for t in args.toolsets.split(",") if t] if args.toolsets else None

    async def go() -> None:
        async with DaemonClient(settings) as client:
            await mcp_app.serve_stdio(client, toolsets)

    anyio.run(go)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from runtimes import images

    which = ["small", "full"] if args.all or not (args.small or args.full) else (
        ["small"] if args.small else []) + (["full"] if args.full else [])
    built = images.build(which, force=args.force, log=(lambda m: None) if args.json else print)
    _print({"images": built}, args.json)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    a = args.action
    if a == "create":
        body = {"kind": args.kind, "name": args.name, "image": args.image, "cpus": args.cpus,
                "memory_mb": args.memory_mb, "pids_limit": args.pids_limit, "network": args.network or None,
                "env": _env_pairs(args.env)}
        _print(_with_client(args, lambda c: c.create_device({k: v for k, v in body.items() if v is not None})),
               args.json)
    elif a == "list":
        _print(_with_client(args, lambda c: c.list_devices()), args.json, DEVICE_COLUMNS)
    elif a == "get":
        _print(_with_client(args, lambda c: c.get_device(args.id)), args.json)
    elif a == "rm":
        _print(_with_client(args, lambda c: c.delete_device(args.id)), args.json)
    elif a == "prompt":
        prompt = " ".join(args.prompt)
        body = {"target_id": args.id, "provider": args.provider, "cwd": args.cwd, "timeout": args.timeout,
                "model": args.model, "command": args.runtime_command, "prompt": prompt,
                "env": _env_pairs(args.env), "idempotency_key": args.idempotency_key}
        if args.metadata:
            try:
                body["metadata"] = json.loads(args.metadata)
            except json.JSONDecodeError as exc:
                raise errors.InvalidInput("metadata", f"not valid JSON: {exc.msg}") from None
        body = {k: v for k, v in body.items() if v is not None}

        async def run(c: DaemonClient) -> Any:
            created = await c.create_run(body)
            if args.async_:
                return created
            return await _wait(c, created.id)

        run_ = _with_client(args, run)
        _print(run_, args.json)
        return 0 if run_.status in ("succeeded", "queued", "running") else 1
    return 0


async def _wait(c: DaemonClient, run_id: str) -> Any:
    after = 0
    while True:
        page = await c.run_events(run_id, after=after, wait=10)
        after = page.next_after
        if page.run_status.terminal and not page.data:
            return await c.get_run(run_id)


def cmd_runs(args: argparse.Namespace) -> int:
    a = args.action
    if a == "list":
        params = {"target_id": args.target_id, "status": args.status, "limit": args.limit, "cursor": args.cursor}
        _print(_with_client(args, lambda c: c.list_runs(**params)), args.json, RUN_COLUMNS)
    elif a == "get":
        _print(_with_client(args, lambda c: c.get_run(args.id)), args.json)
    elif a == "cancel":
        _print(_with_client(args, lambda c: c.cancel_run(args.id)), args.json)
    elif a == "events":
        async def events(c: DaemonClient) -> Any:
            page = await c.run_events(args.id, after=args.after, limit=args.limit)
            if not args.follow:
                return page
            after = args.after
            while True:
                for ev in page.data:
                    print(ev.model_dump_json() if args.json else _safe(f"{ev.sequence:>5}  {ev.type:<18} "
                          f"{ev.message or json.dumps(ev.payload)[:120]}"), flush=True)
                after = page.next_after
                if page.run_status.terminal and not page.data:
                    return None
                page = await c.run_events(args.id, after=after, wait=10)

        result = _with_client(args, events)
        if result is not None:
            _print(result, args.json, ["sequence", "type", "message", "created_at"])
    elif a == "artifacts":
        if args.path:
            content = _with_client(args, lambda c: c.artifact_content(args.id, args.path))
            sys.stdout.buffer.write(content)
        else:
            _print(_with_client(args, lambda c: c.artifacts(args.id)), args.json, ["path", "size", "sha256"])
    return 0


# ---------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="exact JSON output")
    common.add_argument("--home", help="state directory (default $AGENTDOCK_HOME or ~/.agentdock)")
    p = argparse.ArgumentParser(prog="agentdock", description="A local, durable control plane for agent work.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("daemon", parents=[common], help="run, start, stop or inspect the daemon")
    d.add_argument("action", choices=["run", "start", "stop", "status"])
    d.set_defaults(fn=cmd_daemon)

    s = sub.add_parser("serve", parents=[common], help="MCP server on stdio (starts the daemon if needed)")
    s.add_argument("--toolsets", help="comma-separated: devices,runs (default: all)")
    s.set_defaults(fn=cmd_serve)

    i = sub.add_parser("image", parents=[common], help="build the sandbox images offline")
    i.add_argument("action", choices=["build"])
    i.add_argument("--small", action="store_true")
    i.add_argument("--full", action="store_true")
    i.add_argument("--all", action="store_true")
    i.add_argument("--force", action="store_true")
    i.set_defaults(fn=cmd_image)

    sb = sub.add_parser("sandbox", parents=[common], help="sandboxes and computers").add_subparsers(
        dest="action", required=True)
    c = sb.add_parser("create", parents=[common])
    c.add_argument("--kind", choices=["sandbox", "computer"], default="sandbox")
    c.add_argument("--name")
    c.add_argument("--image")
    c.add_argument("--cpus", type=float)
    c.add_argument("--memory-mb", type=int)
    c.add_argument("--pids-limit", type=int)
    c.add_argument("--network", action="store_true")
    c.add_argument("--env", action="append", metavar="NAME=VALUE")
    sb.add_parser("list", parents=[common])
    for name in ("get", "rm"):
        sb.add_parser(name, parents=[common]).add_argument("id")
    pr = sb.add_parser("prompt", parents=[common], help="run a prompt in a sandbox")
    pr.add_argument("id")
    pr.add_argument("--provider")
    pr.add_argument("--cwd")
    pr.add_argument("--timeout", type=int)
    pr.add_argument("--model")
    pr.add_argument("--runtime-command")
    pr.add_argument("--env", action="append", metavar="NAME=VALUE")
    pr.add_argument("--metadata", help="JSON object")
    pr.add_argument("--idempotency-key")
    pr.add_argument("--async", dest="async_", action="store_true", help="return at once")
    pr.add_argument("prompt", nargs="*", help="the prompt (after --)")
    for sp in sb.choices.values():
        sp.set_defaults(fn=cmd_sandbox)

    r = sub.add_parser("runs", parents=[common], help="agent runs").add_subparsers(dest="action", required=True)
    ls = r.add_parser("list", parents=[common])
    ls.add_argument("--target-id")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor")
    for name in ("get", "cancel"):
        r.add_parser(name, parents=[common]).add_argument("id")
    ev = r.add_parser("events", parents=[common])
    ev.add_argument("id")
    ev.add_argument("--after", type=int, default=0)
    ev.add_argument("--limit", type=int, default=500)
    ev.add_argument("--follow", action="store_true")
    ar = r.add_parser("artifacts", parents=[common])
    ar.add_argument("id")
    ar.add_argument("--path")
    for sp in r.choices.values():
        sp.set_defaults(fn=cmd_runs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:  # everything after -- is the prompt (argparse mishandles -- inside subcommands)
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    if hasattr(args, "prompt"):
        args.prompt = [*(args.prompt or []), *tail]
    try:
        return args.fn(args)
    except errors.EngineError as exc:
        return _fail(exc, getattr(args, "json", False))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
