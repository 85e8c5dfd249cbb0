"""`make demo`: the main job end to end through a real MCP client session.

Launches `agentdock serve` over stdio (which starts the daemon on the embedded SQLite default),
creates a sandbox, runs a few agent runs in it (one fails, one exports an artifact, one asks for
a runtime the image lacks), one in an ephemeral sandbox, and prints what came back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


def show(title: str, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    print(f"\n== {title}")
    for k in keys:
        v = data.get(k)
        if isinstance(v, str) and "\n" in v.strip():
            v = "\n    " + v.strip().replace("\n", "\n    ")
        print(f"  {k:<13} {v}")


RUN_KEYS = ("id", "provider", "status", "exit_code", "failure_kind", "output", "stderr", "error")


async def call(client: Client, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args, **kw)
    data = result.structured_content or {}
    if result.is_error:
        return {"tool_error": True, **data}
    return data


async def main() -> int:
    exe = shutil.which("agentdock") or os.path.join(os.path.dirname(sys.executable), "agentdock")
    params = StdioServerParameters(command=exe, args=["serve"], env=dict(os.environ))
    async with Client(params) as client:
        tools = await client.list_tools()
        print("agentdock MCP tools:", ", ".join(t.name for t in tools.tools))

        sandbox = await call(client, "sandbox_create", {"name": "demo"})
        show("sandbox_create", sandbox, ("id", "kind", "status", "image", "cpus", "memory_mb", "network"))
        sid = sandbox["id"]

        progress: list[str] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        ok = await call(client, "agent_run", {
            "sandbox_id": sid, "provider": "custom", "prompt": "Count the primes below 100.",
            "command": "python3 -c \"import sys; print(sys.stdin.read()); "
                       "print(sum(all(n % d for d in range(2, n)) for n in range(2, 100)))\"",
        }, progress_callback=on_progress)
        show("agent_run (custom, python3)", ok, RUN_KEYS)
        print(f"  progress notifications: {len(progress)}")

        failing = await call(client, "agent_run", {
            "sandbox_id": sid, "provider": "custom", "prompt": "Run the tests.",
            "command": "echo 'running tests'; echo '2 tests failed' >&2; exit 1",
        })
        show("agent_run (failing)", failing, RUN_KEYS)

        artifact = await call(client, "agent_run", {
            "sandbox_id": sid, "provider": "custom", "prompt": "Write a report.",
            "command": "mkdir -p out && printf '<h1>%s</h1>\\n' \"$AGENTDOCK_PROMPT\" > out/report.html && "
                       "echo wrote out/report.html",
            "metadata": {"artifact_paths": ["/workspace/out/report.html"]},
        })
        show("agent_run (with an artifact)", artifact, RUN_KEYS)
        files = await call(client, "agent_run_artifacts", {"run_id": artifact["id"],
                                                           "path": "/workspace/out/report.html"})
        for a in files.get("data", []):
            print(f"  artifact      {a['path']} {a['size']} bytes sha256 {a['sha256'][:16]}...")
        if files.get("content"):
            print(f"  content       {files['content']['content'].strip()}")

        missing = await call(client, "agent_run", {"sandbox_id": sid, "provider": "claude-code",
                                                    "prompt": "Fix the bug."})
        show("agent_run (claude-code, not installed in this image)", missing, RUN_KEYS)

        ephemeral = await call(client, "agent_run", {"provider": "custom", "prompt": "Where am I?",
                                                      "command": "uname -a; id; pwd"})
        show("agent_run (ephemeral sandbox, removed after)", ephemeral, RUN_KEYS + ("target_id",))

        bad = await call(client, "agent_run", {"sandbox_id": sid, "prompt": "x", "timeout": 0})
        print("\n== agent_run with timeout=0 (bad input)")
        print("  " + json.dumps(bad.get("diagnostic"), indent=2).replace("\n", "\n  "))

        events = await call(client, "agent_run_events", {"run_id": ok["id"]})
        print(f"\n== agent_run_events of {ok['id']}")
        for e in events["data"]:
            print(f"  {e['sequence']:>3} {e['type']:<16} {e['message'] or json.dumps(e['payload'])[:70]}")

        listing = await call(client, "agent_run_list", {"target_id": sid})
        print(f"\n== agent_run_list: {len(listing['data'])} runs in {sid}")
        await call(client, "sandbox_delete", {"sandbox_id": sid})
        print(f"   sandbox {sid} deleted. The daemon keeps running: `agentdock daemon stop` stops it.")

    expected = (ok.get("status"), failing.get("status"), artifact.get("status"), missing.get("failure_kind"),
                ephemeral.get("status"), "diagnostic" in bad)
    healthy = expected == ("succeeded", "failed", "succeeded", "runtime_not_found", "succeeded", True)
    print("\ndemo:", "everything came back as expected" if healthy else f"UNEXPECTED {expected}")
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
