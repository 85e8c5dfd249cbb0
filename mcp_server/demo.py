"""`make demo`: the main job end to end through a real MCP client session.

Launches `agentdock serve` over stdio (which starts the daemon on the embedded SQLite default),
creates a sandbox, runs a few agent runs in it (one fails, one exports an artifact, one asks for
a runtime the image lacks), one in an ephemeral sandbox, and prints what came back. Then a
claude-code run through the real CLI (the agents image, built on demand from packages cached under
the home): without a key it ends `auth_required` saying which secret to set; with the secret
ANTHROPIC_API_KEY set (`agentdock secrets set ANTHROPIC_API_KEY`, or ANTHROPIC_API_KEY in the
demo's environment, which the demo stores as that secret) it gives Claude's real answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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
    if result.is_error:  # the diagnostic is the error's JSON text (an error has no structured content)
        return {"tool_error": True, **json.loads(result.content[0].text)}  # type: ignore[union-attr]
    return result.structured_content or {}


async def main() -> int:
    beside = os.path.join(os.path.dirname(sys.executable), "agentdock")  # this install's, not another on PATH
    exe = beside if os.path.exists(beside) else shutil.which("agentdock") or "agentdock"
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

        real = await real_claude(client, exe)

    expected = (ok.get("status"), failing.get("status"), artifact.get("status"), missing.get("failure_kind"),
                ephemeral.get("status"), "diagnostic" in bad, real)
    healthy = expected == ("succeeded", "failed", "succeeded", "runtime_not_found", "succeeded", True, True)
    print("\ndemo:", "everything came back as expected" if healthy else f"UNEXPECTED {expected}")
    return 0 if healthy else 1


async def real_claude(client: Client, exe: str) -> bool:
    """claude-code through the real CLI: `auth_required` without a key, a real answer with the secret."""
    from runtimes import clis, images

    print("\n== the real Claude Code CLI (agentdock image build --runtimes claude-code)")
    held = await anyio.to_thread.run_sync(images.inspect_runtimes, images.AGENTS_IMAGE)
    if (held or {}).get("claude-code") == clis.CATALOG["claude-code"].version:
        print(f"  {images.AGENTS_IMAGE} holds claude-code {held['claude-code']}")  # type: ignore[index]
    else:
        await anyio.to_thread.run_sync(lambda: images.build([], runtimes=["claude-code"],
                                                            log=lambda m: print("  " + m)))
    listed = json.loads(subprocess.run([exe, "secrets", "list", "--json"], capture_output=True, text=True,
                                       timeout=60).stdout)
    have = any(s["name"] == "ANTHROPIC_API_KEY" for s in listed["data"])
    if not have and os.environ.get("ANTHROPIC_API_KEY"):
        print("  storing $ANTHROPIC_API_KEY as the secret ANTHROPIC_API_KEY (value on stdin)")
        subprocess.run([exe, "secrets", "set", "ANTHROPIC_API_KEY"], input=os.environ["ANTHROPIC_API_KEY"],
                       text=True, capture_output=True, timeout=60, check=True)
        have = True
    box = await call(client, "sandbox_create", {"name": "claude", "image": images.AGENTS_IMAGE, "network": have})
    prompt = "Reply with one short sentence: what is 6 times 7?"
    keyless = await call(client, "agent_run", {"sandbox_id": box["id"], "provider": "claude-code", "prompt": prompt})
    show("agent_run (claude-code, real CLI, no secret given)", keyless, RUN_KEYS)
    answered: dict[str, Any] = {}
    if have:
        answered = await call(client, "agent_run", {"sandbox_id": box["id"], "provider": "claude-code",
                                                    "prompt": prompt, "secrets": ["ANTHROPIC_API_KEY"]})
        while answered.get("status") in ("queued", "running"):
            answered = await call(client, "agent_run_get", {"run_id": answered["id"]})
        show("agent_run (claude-code, real CLI, secrets: [ANTHROPIC_API_KEY])", answered, RUN_KEYS)
    else:
        print("  (no ANTHROPIC_API_KEY secret: `agentdock secrets set ANTHROPIC_API_KEY < keyfile`, then "
              "`make demo` again for a real answer)")
    await call(client, "sandbox_delete", {"sandbox_id": box["id"]})
    return keyless.get("failure_kind") == "auth_required" and (not have or answered.get("status") == "succeeded")


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
