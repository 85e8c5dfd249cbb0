"""`make demo`: a coordinator's whole story through a real MCP client session.

The demo is the coordinator: the local user's `agentdock serve` over stdio (which starts the daemon
when none runs). It stores a secret at the terminal (`agentdock secrets set`, value on stdin), creates
a profile that names it, dispatches a group of three runs under that profile with live progress (one
prints the secret by accident: the record shows `********`; one exports an artifact), writes souls for
two children, queues two tasks and spawns the two children, each an agent run in its own sandbox that
talks back over `agent.sock`: it claims a task, reports on its family channel and completes the task.
The coordinator reads that channel, the tasks, the children's souls and the group's stream, then shows
a failing run, a bad input and the real claude-code CLI (`auth_required` without a key; Claude's real
answer when the secret ANTHROPIC_API_KEY is set, or ANTHROPIC_API_KEY is in the demo's environment).
Every step prints what came back. It ends by stopping the children and removing the profile and the
secret; the records stay, and the daemon keeps running.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from engine.settings import Settings

SECRET = "DEMO_API_KEY"
WAIT = 20
"""Seconds one long-poll waits (under the server's 45 s bound)."""
ENDED = ("succeeded", "failed", "canceled")
STORY_SECONDS = 120
"""The most the children's part may take before the demo says so and stops."""

Progress = Callable[[float, float | None, str | None], Awaitable[None]]


class ToolFailed(Exception):
    def __init__(self, tool: str, diagnostic: dict[str, Any]) -> None:
        super().__init__(f"{tool}: {diagnostic.get('message') or diagnostic}")
        self.tool = tool
        self.diagnostic = diagnostic


class Agentdock:
    """Every tool the demo calls, with its field names: the one place a renamed tool or field changes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def call(self, tool: str, args: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
        """The tool's structured answer; a tool error raises `ToolFailed` with its diagnostic."""
        result = await self.client.call_tool(tool, args, progress_callback=progress)
        if result.is_error:
            raise ToolFailed(tool, _diagnostic(result))
        return result.structured_content or {}

    async def refused(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """The diagnostic of a call that must be refused (an answer instead is a failure of the demo)."""
        result = await self.client.call_tool(tool, args)
        if not result.is_error:
            raise ToolFailed(tool, {"message": f"expected a refusal, got {result.structured_content}"})
        return _diagnostic(result)

    async def tools(self) -> list[str]:
        return [t.name for t in (await self.client.list_tools()).tools]

    async def me(self) -> dict[str, Any]:
        return await self.call("agent_me", {})

    # profiles
    async def create_profile(self, name: str, workspace_id: str, **fields: Any) -> dict[str, Any]:
        return await self.call("profile_create", {"name": name, "workspace_id": workspace_id, **fields})

    async def delete_profile(self, profile_id: str) -> dict[str, Any]:
        return await self.call("profile_delete", {"profile_id": profile_id})

    # devices and runs
    async def create_sandbox(self, name: str, image: str, network: bool) -> dict[str, Any]:
        return await self.call("sandbox_create", {"name": name, "image": image, "network": network})

    async def delete_sandbox(self, sandbox_id: str) -> dict[str, Any]:
        return await self.call("sandbox_delete", {"sandbox_id": sandbox_id})

    async def run(self, progress: Progress | None = None, **fields: Any) -> dict[str, Any]:
        return await self.call("agent_run", fields, progress)

    async def run_refused(self, **fields: Any) -> dict[str, Any]:
        return await self.refused("agent_run", fields)

    async def run_get(self, run_id: str) -> dict[str, Any]:
        return await self.call("agent_run_get", {"run_id": run_id})

    async def run_events(self, run_id: str, after: int, wait: float = 0) -> tuple[list[dict[str, Any]], int, str]:
        """A page of the run's events after `after`: the events, the cursor to continue from, the run's status."""
        page = await self.call("agent_run_events", {"run_id": run_id, "after_sequence": after, "wait_seconds": wait})
        return page["data"], page["next_after_sequence"], page["run_status"]

    async def artifact(self, run_id: str, path: str) -> dict[str, Any]:
        return await self.call("agent_run_artifacts", {"run_id": run_id, "path": path})

    # groups
    async def create_group(self, name: str, workspace_id: str, concurrency_limit: int) -> dict[str, Any]:
        return await self.call("group_create", {"name": name, "workspace_id": workspace_id,
                                                "concurrency_limit": concurrency_limit})

    async def dispatch(self, group_id: str, runs: list[dict[str, Any]], idempotency_key: str,
                       progress: Progress) -> dict[str, Any]:
        """Waits for the runs (at most the server's bound; then `done` is false: the same call waits again)."""
        return await self.call("group_dispatch", {"group_id": group_id, "runs": runs,
                                                  "idempotency_key": idempotency_key}, progress)

    async def group_get(self, group_id: str) -> dict[str, Any]:
        return await self.call("group_get", {"group_id": group_id})

    async def group_events(self, group_id: str, after_sequence: int) -> dict[str, Any]:
        """A page: `data`, `next_after_sequence`, `is_active`."""
        return await self.call("group_events", {"group_id": group_id, "after_sequence": after_sequence,
                                                "limit": 1000})

    # souls
    async def validate_soul(self, agent_name: str, content: str) -> dict[str, Any]:
        return await self.call("soul_validate", {"agent_name": agent_name, "content": content})

    async def soul(self, agent_name: str) -> dict[str, Any]:
        return await self.call("soul_get", {"agent_name": agent_name})

    # tasks
    async def create_task(self, title: str, payload: dict[str, Any], workspace_id: str) -> dict[str, Any]:
        return await self.call("task_create", {"title": title, "payload": payload, "workspace_id": workspace_id})

    async def task_get(self, task_id: str) -> dict[str, Any]:
        return await self.call("task_get", {"task_id": task_id})

    # sessions
    async def spawn(self, agent_name: str, workspace_id: str, profile_id: str, tools: list[str], prompt: str,
                    command: str) -> dict[str, Any]:
        return await self.call("agent_spawn", {
            "agent_name": agent_name, "workspace_id": workspace_id, "spawn_role": "worker", "ttl_seconds": 600,
            "permissions": {"tools": tools, "sandbox_profiles": [profile_id]},
            "agent_runtime_profile_id": profile_id, "prompt": prompt, "command": command, "timeout": 300})

    async def stop(self, session_id: str) -> dict[str, Any]:
        return await self.call("agent_stop", {"session_id": session_id})

    # channels
    async def channels(self) -> list[dict[str, Any]]:
        return (await self.call("channel_list", {}))["channels"]

    async def recv(self, channel_id: str) -> list[dict[str, Any]]:
        """What came since the last recv; waits for the next message (at most the server's bound) if none."""
        return (await self.call("channel_recv", {"channel_id": channel_id, "wait": True}))["messages"]


def _diagnostic(result: Any) -> dict[str, Any]:
    """A tool error's diagnostic: from the structured content, else from the text content."""
    data = result.structured_content or {}
    if "diagnostic" in data:
        return data["diagnostic"]
    text = " ".join(getattr(c, "text", "") for c in result.content)
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"message": text}
    return parsed.get("diagnostic", parsed) if isinstance(parsed, dict) else {"message": text}


# ---------------------------------------------------------------- printing


def title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def line(text: str) -> None:
    print("  " + text, flush=True)


def field(name: str, value: Any) -> None:
    if isinstance(value, str):
        value = value.strip()
        if "\n" in value:
            value = "\n    " + value.replace("\n", "\n    ")
    line(f"{name:<13} {value}")


def one_line(text: Any, limit: int = 90) -> str:
    text = text if isinstance(text, str) else json.dumps(text)
    text = " / ".join(part for part in text.strip().splitlines() if part)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def show_run(label: str, run: dict[str, Any]) -> None:
    """A run, output first."""
    title(label)
    for k in ("output", "stderr"):
        if (run.get(k) or "").strip():
            field(k, run[k])
    why = ", ".join(str(v) for v in (run.get("failure_kind"), run.get("exit_code") and f"exit {run['exit_code']}") if v)
    field("status", f"{run['status']}" + (f" ({why})" if why else "") + f"  {run['id']}")
    if run.get("error"):
        field("error", run["error"])


# ---------------------------------------------------------------- the children

WORKER = r'''
import json, os, subprocess

def call(method, path, body=None):  # the stdlib client the daemon puts beside agent.sock
    args = ["python3", "/run/agentdock/agentdock-agent", method, path] + ([json.dumps(body)] if body else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode:  # the diagnostic is on stderr
        try:
            why = json.loads(done.stderr)["diagnostic"]["message"]
        except (ValueError, KeyError):
            why = done.stderr.strip()
        raise SystemExit(f"{method} {path}: {why}")
    return json.loads(done.stdout)

soul = call("GET", "/api/agent/soul")
family = call("GET", "/api/agent/context")["context"]["coordination_channel"]["channel"]["id"]

def report(kind, body, task_id):
    call("POST", f"/api/agent/channels/{family}/send",
         {"body": body, "metadata": {"message_kind": kind, "task_id": task_id}})

claim = call("POST", "/api/agent/tasks/claim-next", {"lease_seconds": 60})["claim"]  # queued before we were
if claim is None:
    raise SystemExit("no task to claim")
task, task_run, token = claim["task"], claim["run"]["id"], claim["claim_token"]
report("progress", {"claimed": task["title"], "attempt": claim["run"]["attempt"]}, task["id"])
below = task["payload"]["below"]
primes = sum(all(n % d for d in range(2, int(n ** 0.5) + 1)) for n in range(2, below))
call("POST", f"/api/agent/tasks/{task_run}/complete", {"claim_token": token, "result": {"primes": primes}})
report("result", {"task": task["title"], "primes": primes, "soul_digest": soul["digest"]}, task["id"])
print(f"{os.environ['AGENTDOCK_SESSION_ID']}: {task['title']}: {primes}")
'''

SOULS = {
    "demo-ada": """---
role: Counts primes, fast, and says only the number.
tone: [terse]
principles:
  - claim one task, finish it, report it
constraints: [never print a secret]
collaboration: [report progress and the result on the family channel]
tags: [demo, worker]
version: "1"
---
You are Ada, a worker of the agentdock demo. Claim a task, do it, report the result.
""",
    "demo-grace": """---
role: Counts primes carefully and reports each step.
tone: [calm, precise]
principles:
  - report when you start and when you finish
constraints: [never print a secret]
collaboration: [report progress and the result on the family channel]
tags: [demo, worker]
version: "1"
---
You are Grace, a worker of the agentdock demo. Claim a task, do it, report the result.
""",
}
TASKS = {"count the primes below 50,000": 50_000, "count the primes below 80,000": 80_000}


# ---------------------------------------------------------------- the story


async def story(ad: Agentdock, exe: str) -> dict[str, Any]:
    """Everything the coordinator does; returns what the end checks."""
    seen: dict[str, Any] = {}
    tools = await ad.tools()
    me = await ad.me()
    me_id = me["session"]["id"]
    print(f"agentdock over MCP: {len(tools)} tools; the coordinator is {me_id} (the local user)")
    try:
        await steps(ad, exe, me_id, seen)
    finally:
        await cleanup(ad, exe, seen)
    return seen


async def steps(ad: Agentdock, exe: str, me_id: str, seen: dict[str, Any]) -> None:
    suffix = secrets.token_hex(3)
    workspace = f"demo-{suffix}"  # the demo's tasks and children, apart from anything else in this home

    title(f"a secret, set at the terminal: agentdock secrets set {SECRET} (value on stdin, never on a socket)")
    cli(exe, "secrets", "set", SECRET, stdin=secrets.token_urlsafe(24))
    seen["secret"] = SECRET
    stored = next(s for s in json.loads(cli(exe, "secrets", "list", "--json"))["data"] if s["name"] == SECRET)
    line(f"stored {SECRET}: {stored['size']} bytes. Runs name it; only they see the value.")

    title("profile_create: how the demo's workers run")
    profile = await ad.create_profile(
        f"demo-worker-{suffix}", workspace, runtime="custom", description="agentdock demo workers",
        env={"DEMO_GREETING": "hello from the profile"}, secrets=[SECRET], tools=["artifacts"])
    seen["profile"] = profile["id"]
    for k in ("id", "name", "workspace_id", "runtime", "env", "secrets", "tools"):
        field(k, profile[k])

    await dispatch_group(ad, workspace, profile["id"], seen)
    await children(ad, me_id, workspace, profile["id"], seen)
    await group_stream(ad, seen["group"]["id"], seen["group_roles"])

    failing = await ad.run(prompt="Run the tests.", command="echo 'running tests'; echo '2 tests failed' >&2; exit 1")
    show_run("a run that fails (agent_run in an ephemeral sandbox)", failing)
    seen["failing"] = failing

    bad = await ad.run_refused(prompt="x", command="true", timeout=0)
    title("agent_run with timeout=0: refused, nothing written")
    line(f"{bad.get('code')}: {bad.get('message')}")
    seen["bad_input"] = bad.get("code")

    seen["claude"] = await real_claude(ad, exe)


async def cleanup(ad: Agentdock, exe: str, seen: dict[str, Any]) -> None:
    """Stop the children, delete the profile, remove the secret: whatever the story got to create (it may
    have stopped half-way). The records stay."""
    title("cleanup: agent_stop the children, profile_delete, secrets rm (the records stay)")
    seen["cleanup_failed"] = []

    async def step(what: str, call: Callable[[], Awaitable[str]]) -> None:
        try:
            line(await call())
        except ToolFailed as exc:
            seen["cleanup_failed"].append(what)
            line(f"could not {what}: {exc}")

    for child in seen.get("children", []):
        async def stop(child: dict[str, Any] = child) -> str:
            stopped = await ad.stop(child["session"]["id"])
            return f"{stopped['id']} {stopped['agent_name']}: {stopped['state']}"
        await step(f"stop {child['session']['id']}", stop)
    with anyio.move_on_after(60):  # a stop cancels the child's run; the profile is in use until it has ended
        for child in seen.get("children", []):
            await until_ended(ad, child["run"]["id"])
    if "profile" in seen:
        async def delete() -> str:
            await ad.delete_profile(seen["profile"])
            return f"profile {seen['profile']} deleted"
        await step(f"delete {seen['profile']}", delete)
    if "secret" in seen:
        async def remove() -> str:
            cli(exe, "secrets", "rm", SECRET)
            return f"secret {SECRET} removed. The daemon keeps running: `agentdock daemon stop` stops it."
        await step(f"remove {SECRET}", remove)


async def dispatch_group(ad: Agentdock, workspace: str, profile_id: str, seen: dict[str, Any]) -> None:
    title("group_create + group_dispatch: three runs under the profile, progress as it comes")
    group = await ad.create_group("demo", workspace, concurrency_limit=3)
    line(f"group {group['id']} in workspace {group['workspace_id']}, concurrency {group['concurrency_limit']}")
    runs = [
        {"orchestration_role": "counter", "prompt": "Count the primes below 100.",
         "command": "python3 -c \"print(sum(all(n % d for d in range(2, n)) for n in range(2, 100)))\""},
        {"orchestration_role": "keyholder", "prompt": "Check the API key is there.",
         "command": f"echo \"$DEMO_GREETING: {SECRET} is set, ${{#{SECRET}}} characters\"; "
                    f"echo \"and printed by accident: ${SECRET}\""},
        {"orchestration_role": "reporter", "prompt": "Write a report.",
         "command": "mkdir -p out && printf '<h1>%s</h1>\\n' \"$AGENTDOCK_PROMPT\" > out/report.html && "
                    "echo wrote out/report.html",
         "metadata": {"artifact_paths": ["/workspace/out/report.html"]}},
    ]
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")
        line(f"progress {done:g}/{total:g}  {message}" if total else f"progress  {message}")

    manifest = [{**r, "agent_runtime_profile_id": profile_id} for r in runs]
    with anyio.fail_after(STORY_SECONDS):
        result = {"done": False}
        while not result["done"]:
            result = await ad.dispatch(group["id"], manifest, f"demo-{group['id']}", progress)
    by_index = {r["index"]: r for r in result["results"]}
    line(f"done: {result['done']}, {len(notes)} progress notifications")
    outputs = []
    for i, item in enumerate(runs):
        run = by_index[i]["run"]
        outputs.append(run)
        line(f"[{i}] {item['orchestration_role']:<10} {run['status']:<10} {one_line(run['output'], 110)}")
    files = await ad.artifact(outputs[2]["id"], "/workspace/out/report.html")
    for a in files.get("data", []):
        line(f"artifact of [2]: {a['path']} {a['size']} bytes, sha256 {a['sha256'][:16]}...: "
             f"{files['content']['content'].strip()}")
    final = await ad.group_get(group["id"])
    counts = final["entry_counts"]
    line(f"group {final['status']}: entries {counts['succeeded']} succeeded of {counts['total']}")
    roles = {run["id"]: f"[{i}] {item['orchestration_role']}" for i, (run, item) in enumerate(zip(outputs, runs))}
    seen.update(group=final, group_outputs=[r["output"] for r in outputs], group_roles=roles, progress=len(notes),
                artifact=(files.get("content") or {}).get("content"))


async def children(ad: Agentdock, me_id: str, workspace: str, profile_id: str, seen: dict[str, Any]) -> None:
    title("souls for two children: soul_validate each, then write it as $AGENTDOCK_HOME/souls/<name>.md")
    souls_dir = Settings.load().souls_dir
    for name, content in SOULS.items():
        checked = await ad.validate_soul(name, content)
        line(f"{name}: {checked['validation_status']}, {len(checked['diagnostics'])} diagnostics; "
             f"role: {checked['frontmatter']['role']}")
        if checked["validation_status"] == "valid":
            write_soul(souls_dir, name, content)

    title("task_create: two tasks for the children")
    tasks = []
    for task_title, below in TASKS.items():
        task = await ad.create_task(task_title, {"below": below}, workspace)
        tasks.append(task)
        line(f"{task['id']} {task['status']:<8} {task['title']}")

    title("agent_spawn: two children, each an agent run in its own sandbox under the profile")
    spawned = seen.setdefault("children", [])
    for name in SOULS:
        child = await ad.spawn(name, workspace, profile_id, ["agent", "tasks", "channels", "soul"], WORKER, "python3 -")
        spawned.append(child)
        line(f"{child['session']['id']} {name}: parent {child['lineage']['parent_session_id']}, "
             f"depth {child['lineage']['spawn_depth']}, run {child['run']['id']} {child['run']['status']}, "
             f"token shown once ({len(child['token'])} chars)")
    ours = {c["session"]["id"]: c["session"]["agent_name"] for c in spawned}

    family = next(c for c in await ad.channels() if c["channel"] == f"family:{me_id}")
    title(f"channel_recv on the family channel {family['id']} ({family['channel']}), long-polling")
    received: list[dict[str, Any]] = []
    with anyio.fail_after(STORY_SECONDS):
        while sum(m["metadata"]["message_kind"] == "result" for m in received) < len(spawned):
            page = await ad.recv(family["id"])
            for m in page:
                if m["from_session_id"] not in ours:
                    continue  # an earlier spawn's news in this home
                received.append(m)
                line(f"#{m['sequence']} {ours[m['from_session_id']]:<10} {m['metadata']['message_kind']:<8} "
                     f"{one_line(m['body'])}")
            if not page and all([await ended_already(ad, c["run"]["id"]) for c in spawned]):
                line("(the children's runs have ended: nothing more will come)")
                break

    title("the children's runs, as they ended")
    ended = []
    with anyio.fail_after(STORY_SECONDS):
        for child in spawned:
            run = await until_ended(ad, child["run"]["id"])
            ended.append(run)
            said = run["output"] if run["status"] == "succeeded" else f"{run['error']}: {run['stderr']}"
            line(f"{run['id']} {ours[child['session']['id']]:<10} {run['status']:<9} {one_line(said, 200)}")

    title("task_get: who did what")
    done_tasks = []
    for task in tasks:
        got = await ad.task_get(task["id"])
        done_tasks.append(got)
        holders = ", ".join(f"{r['session_id']} ({ours.get(r['session_id'], '?')}) {r['status']}"
                            for r in got["runs"])
        line(f"{got['id']} {got['status']:<9} result {json.dumps(got['result'])}  by {holders}")

    title("soul_get: the children's souls")
    read = {}
    for name in SOULS:
        soul = await ad.soul(name)
        read[name] = soul
        reported = [m["body"].get("soul_digest") for m in received
                    if m["metadata"]["message_kind"] == "result" and ours[m["from_session_id"]] == name]
        same = "the same one the child reported" if reported == [soul["digest"]] else f"the child reported {reported}"
        line(f"{name}: {soul['validation_status']}, role: {soul['frontmatter']['role']}")
        line(f"{'':<{len(name)}}  {soul['digest'][:23]}..., {same}")
    seen.update(messages=received, child_runs=ended, tasks=done_tasks, souls=read)


async def group_stream(ad: Agentdock, group_id: str, roles: dict[str, str]) -> None:
    title("group_events: the group's one stream, every child's events and its own")
    cursor = 0
    while True:
        page = await ad.group_events(group_id, cursor)
        for e in page["data"]:
            who = roles.get(e.get("agent_run_id") or "", "group")
            text = e.get("message") or (e.get("payload") or {}).get("text") or e.get("payload")
            line(f"{e['sequence']:>3} {e['type']:<17} {who:<13} {one_line(text, 70)}")
        if not page["data"]:
            break
        cursor = page["next_after_sequence"]


async def ended_already(ad: Agentdock, run_id: str) -> bool:
    return (await ad.run_get(run_id))["status"] in ENDED


async def until_ended(ad: Agentdock, run_id: str) -> dict[str, Any]:
    """The run's record once it has ended: long-polls its events until it has (the caller bounds the wait)."""
    after, status = 0, "queued"
    while status not in ENDED:
        _, after, status = await ad.run_events(run_id, after, WAIT)
    return await ad.run_get(run_id)


def write_soul(souls_dir: Path, name: str, content: str) -> None:
    """A soul is a Markdown file in the home: written whole (a temporary file renamed into place)."""
    souls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = souls_dir / f".{name}.md.demo.tmp"
    tmp.write_text(content)
    tmp.chmod(0o600)
    os.replace(tmp, souls_dir / f"{name}.md")


def cli(exe: str, *args: str, stdin: str | None = None) -> str:
    """The agentdock CLI as a user runs it at the terminal; its stdout."""
    done = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ToolFailed(f"agentdock {' '.join(args)}", {"message": done.stderr.strip() or done.stdout.strip()})
    return done.stdout


async def real_claude(ad: Agentdock, exe: str) -> bool:
    """claude-code through the real CLI: `auth_required` without a key, a real answer with the secret."""
    from runtimes import agents_image, clis, images

    title("the real Claude Code CLI (agentdock image build --runtimes claude-code)")
    held = await anyio.to_thread.run_sync(agents_image.inspect_runtimes, agents_image.AGENTS_IMAGE)
    if (held or {}).get("claude-code") == clis.CATALOG["claude-code"].version:
        line(f"{agents_image.AGENTS_IMAGE} holds claude-code {held['claude-code']}")  # type: ignore[index]
    else:
        await anyio.to_thread.run_sync(lambda: images.build([], runtimes=["claude-code"], log=line))
    listed = json.loads(cli(exe, "secrets", "list", "--json"))
    have = any(s["name"] == "ANTHROPIC_API_KEY" for s in listed["data"])
    if not have and os.environ.get("ANTHROPIC_API_KEY"):
        line("storing $ANTHROPIC_API_KEY as the secret ANTHROPIC_API_KEY (value on stdin)")
        cli(exe, "secrets", "set", "ANTHROPIC_API_KEY", stdin=os.environ["ANTHROPIC_API_KEY"])
        have = True
    box = await ad.create_sandbox("claude", agents_image.AGENTS_IMAGE, network=have)
    prompt = "Reply with one short sentence: what is 6 times 7?"
    keyless = await ad.run(target_id=box["id"], provider="claude-code", prompt=prompt)
    show_run("agent_run (claude-code, real CLI, no secret given)", keyless)
    answered: dict[str, Any] = {}
    if have:
        answered = await ad.run(target_id=box["id"], provider="claude-code", prompt=prompt,
                                secrets=["ANTHROPIC_API_KEY"])
        with anyio.fail_after(300):
            answered = await until_ended(ad, answered["id"])
        show_run("agent_run (claude-code, real CLI, secrets: [ANTHROPIC_API_KEY])", answered)
    else:
        line("(no ANTHROPIC_API_KEY secret: `agentdock secrets set ANTHROPIC_API_KEY < keyfile`, then "
             "`make demo` again for a real answer)")
    await ad.delete_sandbox(box["id"])
    return keyless.get("failure_kind") == "auth_required" and (not have or answered.get("status") == "succeeded")


def verdict(seen: dict[str, Any]) -> list[str]:
    """What did not come back as the story says (empty: everything did)."""
    wrong = []
    group = seen["group"]
    if (group["status"], group["entry_counts"]["succeeded"], group["entry_counts"]["total"]) != ("succeeded", 3, 3):
        wrong.append(f"group {group['status']} {group['entry_counts']}")
    if not seen["progress"]:
        wrong.append("no progress notification during the dispatch")
    if "********" not in seen["group_outputs"][1]:
        wrong.append("the secret printed by accident was not masked")
    if not seen["artifact"]:
        wrong.append("no artifact")
    tasks = seen["tasks"]
    if [t["status"] for t in tasks] != ["completed", "completed"]:
        wrong.append(f"tasks {[t['status'] for t in tasks]}")
    holders = {r["session_id"] for t in tasks for r in t["runs"] if r["status"] == "completed"}
    if holders != {c["session"]["id"] for c in seen["children"]}:
        wrong.append("the tasks were not completed by the two children, one each")
    kinds = sorted(m["metadata"]["message_kind"] for m in seen["messages"])
    if kinds != ["progress", "progress", "result", "result"]:
        wrong.append(f"family channel messages {kinds}")
    if [r["status"] for r in seen["child_runs"]] != ["succeeded", "succeeded"]:
        wrong.append(f"children's runs {[r['status'] for r in seen['child_runs']]}")
    if any(s["validation_status"] != "valid" for s in seen["souls"].values()):
        wrong.append("a soul is not valid")
    if (seen["failing"]["status"], seen["bad_input"], seen["claude"]) != ("failed", "invalid_input", True):
        wrong.append(f"single runs {seen['failing']['status']} {seen['bad_input']} claude={seen['claude']}")
    if seen["cleanup_failed"]:
        wrong.append(f"cleanup: could not {', '.join(seen['cleanup_failed'])}")
    return wrong


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions in a (nested) exception group: the client's task groups wrap what the story raised."""
    return [leaf for exc in group.exceptions
            for leaf in (leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


async def main() -> int:
    started = time.monotonic()
    beside = os.path.join(os.path.dirname(sys.executable), "agentdock")  # this install's, not another on PATH
    exe = beside if os.path.exists(beside) else shutil.which("agentdock") or "agentdock"
    params = StdioServerParameters(command=exe, args=["serve"], env=dict(os.environ))
    problems: list[str] = []
    seen: dict[str, Any] = {}
    try:
        async with Client(params) as client:
            seen = await story(Agentdock(client), exe)
    except* ToolFailed as failed:
        for exc in leaves(failed):
            problems.append(f"{exc}\n{json.dumps(getattr(exc, 'diagnostic', {}), indent=2)}")
    except* TimeoutError:
        problems.append(f"the children did not finish within {STORY_SECONDS} s")
    if problems:
        print("\ndemo: " + "\n".join(problems), flush=True)
        return 1
    wrong = verdict(seen)
    took = time.monotonic() - started
    print(f"\ndemo: {'everything came back as expected' if not wrong else 'UNEXPECTED: ' + '; '.join(wrong)} "
          f"({took:.0f} s)")
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
