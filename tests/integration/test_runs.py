"""Agent runs on the real Docker engine: I/O, events, cancel, timeout, ephemeral devices, caps,
artifacts, structured runtimes, missing runtimes, idempotency and listing."""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.ports import HarnessInput
from engine.settings import Settings
from engine.callers import ROOT
from runtimes import harness
from tests.conftest import FULL, SMALL

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture
def settings(home: Path, request: pytest.FixtureRequest) -> Settings:
    """The shared defaults; a test may override fields with `parametrize("settings", [{...}], indirect=True)`."""
    overrides = getattr(request, "param", {})
    return Settings(home=home, image=SMALL, cancel_grace_seconds=1.0, **overrides)


# ---------------------------------------------------------------- helpers


async def finish(engine: Any, run_id: str, timeout: float = 30) -> rm.Run:
    """The run once it is terminal; fails the test if that takes longer than `timeout`."""
    with anyio.fail_after(timeout):
        run = await engine.runs.wait(ROOT, run_id, timeout + 5)
    assert run.status.terminal, run
    return run


async def all_events(engine: Any, run_id: str) -> list[rm.RunEvent]:
    out: list[rm.RunEvent] = []
    after = 0
    while True:
        page = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after=after, limit=1000))
        if not page.data:
            return out
        out += page.data
        after = page.next_after_sequence


async def wait_for_output(engine: Any, run_id: str, text: str, timeout: float = 20) -> None:
    """Long-poll the run's events until an `output` event carries `text`."""
    after = 0
    with anyio.fail_after(timeout):
        while True:
            page = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after=after, wait=2))
            if any(e.type == "output" and text in e.payload.get("text", "") for e in page.data):
                return
            assert page.data or not page.run_status.terminal, f"run ended without printing {text!r}"
            after = page.next_after_sequence


def container(device_id: str) -> Any:
    return docker.from_env().containers.get(f"agentdock-{device_id}")


def processes(device_id: str) -> list[str]:
    """Command lines of every process in the device, but the `ps` that lists them."""
    out = container(device_id).exec_run(["ps", "-o", "args"]).output.decode()
    return [line.strip() for line in out.splitlines()[1:] if line.strip() and line.strip() != "ps -o args"]


KEEPALIVE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


def assert_only_keepalive_left(device_id: str) -> None:
    procs = processes(device_id)
    assert not any("sleep 1000" in p for p in procs), procs
    assert not any("agentdock-run" in p or "agentdock-launcher" in p for p in procs), procs
    assert all(KEEPALIVE in p or p == "sleep 3600" for p in procs), procs


async def sandbox(engine: Any, **kw: Any) -> dm.Device:
    return await engine.devices.create(ROOT, dm.DeviceCreate(**kw))


# ---------------------------------------------------------------- prompt, cwd, env


async def test_prompt_reaches_stdin_and_env_cwd_is_created_and_run_env_overrides_device_env(engine):
    device = await sandbox(engine, env={"SHARED": "device", "DEVICE_ONLY": "d"})
    prompt = "line one\nit's \"quoted\" $HOME `x`"
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt=prompt, cwd="sub/dir", env={"SHARED": "run", "RUN_ONLY": "r"},
        command='printf "stdin=%s|\\n" "$(cat)"; printf "env=%s|\\n" "$AGENTDOCK_PROMPT"; '
                'echo "pwd=$(pwd)"; echo "vars=$SHARED,$DEVICE_ONLY,$RUN_ONLY"',
    ))
    run = await finish(engine, run.id)

    assert run.status is models.RunStatus.succeeded, run
    assert run.output == (f"stdin={prompt}|\nenv={prompt}|\npwd=/workspace/sub/dir\nvars=run,d,r\n")
    assert run.cwd == "/workspace/sub/dir"
    assert run.env_keys == ["RUN_ONLY", "SHARED"]
    assert container(device.id).exec_run(["test", "-d", "/workspace/sub/dir"]).exit_code == 0


# ---------------------------------------------------------------- events


async def test_events_are_numbered_without_gaps_and_bracketed_by_queued_started_finished(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="echo out; echo err >&2"))
    seen: list[rm.RunEvent] = []
    after = 0
    with anyio.fail_after(30):  # follow live by long-poll, as a client would
        while True:
            page = await engine.runs.events(ROOT, run.id, rm.EventsQuery(after=after, wait=2))
            seen += page.data
            after = page.next_after_sequence
            if page.run_status.terminal and not page.data:
                break

    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert seen == await all_events(engine, run.id)
    types = [e.type for e in seen]
    assert types[:2] == ["run_queued", "run_started"]
    assert types[-1] == "run_finished"
    assert types.count("run_finished") == 1
    assert seen[-1].payload["status"] == "succeeded"
    assert "".join(e.payload["text"] for e in seen if e.type == "output") == "out\n"
    assert "".join(e.payload["text"] for e in seen if e.type == "stderr") == "err\n"
    assert all(e.agent_run_id == run.id for e in seen)


async def test_many_short_lines_are_coalesced_into_few_output_events_that_add_up_to_the_output(engine):
    device = await sandbox(engine)
    lines = 2000
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command=f"seq {lines}"))
    run = await finish(engine, run.id)

    expected = "".join(f"{i}\n" for i in range(1, lines + 1))
    assert run.status is models.RunStatus.succeeded
    assert run.output == expected
    events = await all_events(engine, run.id)
    outputs = [e for e in events if e.type == "output"]
    assert 1 <= len(outputs) <= lines // 20
    assert "".join(e.payload["text"] for e in outputs) == expected
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_long_poll_that_reads_just_before_the_run_ends_still_returns_when_it_ends(engine):
    """Forces the interleaving where the run finishes (and notifies) between the long-poll's read
    and its wait: the poll must not sleep through to its full `wait`."""
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="echo done"))
    notified = [anyio.Event()]
    real_publish, real_events = engine.topics.publish, engine.store.events

    def publish(touched: Any) -> None:
        real_publish(touched)
        notified[0].set()

    held = []

    async def events_read_then_held_until_the_run_ends(stream: str, after: int, limit: int, *rest: Any) -> Any:
        rows = await real_events(stream, after, limit, *rest)
        if not held:  # the first read only: hand back its (now stale) answer after the run has ended
            held.append(rows)
            while True:
                notified[0] = anyio.Event()
                if (await engine.store.runs.run(run.id)).status.terminal:
                    break
                await notified[0].wait()
        return rows

    engine.topics.publish = publish
    engine.store.events = events_read_then_held_until_the_run_ends
    with anyio.fail_after(3):
        page = await engine.runs.events(ROOT, run.id, rm.EventsQuery(after=10_000, wait=30))
    assert held == [[]]
    assert page.run_status is models.RunStatus.succeeded and page.data == []


# ---------------------------------------------------------------- cancel and timeout


async def test_cancel_of_a_running_command_ends_canceled_and_leaves_only_the_keepalive(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="echo started; sleep 1000"))
    await wait_for_output(engine, run.id, "started")
    assert any("sleep 1000" in p for p in processes(device.id))  # the check below can see it

    with anyio.fail_after(20):
        canceled = await engine.runs.cancel(ROOT, run.id)

    assert (canceled.status, canceled.failure_kind) == ("canceled", "canceled")
    assert canceled.finished_at is not None
    assert_only_keepalive_left(device.id)
    events = await all_events(engine, run.id)
    assert events[-1].type == "run_finished" and events[-1].payload["status"] == "canceled"


async def test_cancel_right_after_create_still_stops_the_process(engine):
    """Forces the interleaving where the cancel lands before the process has started."""
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000"))
    with anyio.fail_after(20):
        canceled = await engine.runs.cancel(ROOT, run.id)
    assert (canceled.status, canceled.failure_kind) == ("canceled", "canceled")
    assert_only_keepalive_left(device.id)


async def test_cancel_of_a_finished_run_is_an_invalid_transition(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="true"))
    run = await finish(engine, run.id)
    assert run.status is models.RunStatus.succeeded

    with pytest.raises(errors.InvalidTransition):
        await engine.runs.cancel(ROOT, run.id)
    assert (await engine.runs.get(ROOT, run.id)).status is models.RunStatus.succeeded


async def test_cancel_twice_returns_the_canceled_run_and_adds_no_events(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="echo started; sleep 1000"))
    await wait_for_output(engine, run.id, "started")
    with anyio.fail_after(20):
        first = await engine.runs.cancel(ROOT, run.id)
    events = await all_events(engine, run.id)

    with anyio.fail_after(20):
        second = await engine.runs.cancel(ROOT, run.id)

    assert first.status is models.RunStatus.canceled
    assert second == first
    assert await all_events(engine, run.id) == events


async def test_timeout_fails_the_run_with_failure_kind_timeout_and_kills_the_process(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000",
                                                    timeout=2))
    run = await finish(engine, run.id, timeout=20)

    assert (run.status, run.failure_kind) == ("failed", "timeout")
    assert "timed out" in (run.error or "") and "2" in (run.error or "")
    assert run.started_at is not None and run.finished_at is not None
    assert run.finished_at - run.started_at >= timedelta(seconds=2)
    assert_only_keepalive_left(device.id)


# ---------------------------------------------------------------- ephemeral


async def test_a_run_without_target_gets_an_ephemeral_sandbox_that_is_gone_once_the_run_ends(engine, home):
    run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo hi"))
    assert run.ephemeral is True
    assert run.target_kind is models.TargetKind.sandbox and run.target_id.startswith("sbx_")

    run = await finish(engine, run.id)

    assert (run.status, run.output) == ("succeeded", "hi\n")
    with pytest.raises(errors.NotFound):
        await engine.devices.get(ROOT, run.target_id)
    api = docker.from_env().api  # summaries only: no per-container inspect that could race a removal
    assert api.containers(all=True, filters={"label": f"agentdock.run_id={run.id}"}) == []
    assert api.containers(all=True, filters={"label": f"agentdock.home={home}"}) == []


# ---------------------------------------------------------------- output cap


@pytest.mark.parametrize("settings", [{"output_cap_bytes": 1000}], indirect=True)
async def test_output_and_stderr_are_cut_at_the_cap_and_flagged_and_the_run_still_succeeds(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p",
        command="head -c 5000 /dev/zero | tr '\\0' a; head -c 5000 /dev/zero | tr '\\0' b >&2"))
    run = await finish(engine, run.id)

    assert (run.status, run.exit_code) == ("succeeded", 0)
    assert run.output == "a" * 1000 and run.output_truncated is True
    assert run.stderr == "b" * 1000 and run.stderr_truncated is True
    events = await all_events(engine, run.id)
    assert "".join(e.payload.get("text", "") for e in events if e.type == "output") == "a" * 1000
    assert "".join(e.payload.get("text", "") for e in events if e.type == "stderr") == "b" * 1000


@pytest.mark.parametrize("settings", [{"output_cap_bytes": 1000}], indirect=True)
async def test_output_under_the_cap_is_not_flagged(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="head -c 1000 /dev/zero | tr '\\0' a"))
    run = await finish(engine, run.id)
    assert run.output == "a" * 1000
    assert (run.output_truncated, run.stderr_truncated) == (False, False)


@pytest.mark.parametrize("settings", [{"output_cap_bytes": 1000}], indirect=True)
async def test_a_structured_runtimes_answer_is_cut_at_the_cap_in_bytes(engine):
    device = await sandbox(engine)
    prompt = "é" * 1500  # 2 bytes each in UTF-8
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt=prompt, provider="claude-code"))
    run = await finish(engine, run.id)

    assert run.status is models.RunStatus.succeeded, run
    assert run.output_truncated is True
    assert len(run.output.encode()) <= 1000
    assert run.output.startswith("Done: é")


# ---------------------------------------------------------------- artifacts

BINARY = bytes(range(256)) * 4
HTML = b"<html><body>report</body></html>\n"


def write_artifacts_command() -> str:
    octal = "".join(f"\\{b:03o}" for b in BINARY)
    return f"mkdir -p out && printf '%s\\n' '{HTML.decode().strip()}' >report.html && printf '{octal}' >out/data.bin"


def check_exported(events: list[rm.RunEvent], ok: dict[str, bytes], missing: list[str]) -> None:
    exported = {e.payload["path"]: e.payload for e in events if e.type == "artifact_exported"}
    assert set(exported) == set(ok) | set(missing)
    for path, data in ok.items():
        assert exported[path]["ok"] is True
        assert (exported[path]["size"], exported[path]["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    for path in missing:
        assert exported[path]["ok"] is False
        assert exported[path]["error"] == "not_found"


async def test_artifacts_named_in_metadata_are_exported_with_size_and_digest_and_a_missing_one_is_reported(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p", command=write_artifacts_command(),
        metadata={"artifact_paths": ["report.html", "/workspace/out/data.bin", "missing.txt"], "task": "t1"}))
    run = await finish(engine, run.id)
    assert run.status is models.RunStatus.succeeded, run

    listed = (await engine.runs.artifacts(ROOT, run.id)).data
    assert [(a.path, a.size, a.sha256) for a in listed] == [
        ("/workspace/out/data.bin", len(BINARY), hashlib.sha256(BINARY).hexdigest()),
        ("/workspace/report.html", len(HTML), hashlib.sha256(HTML).hexdigest()),
    ]
    assert all(a.agent_run_id == run.id for a in listed)
    assert await engine.runs.artifact_bytes(ROOT, run.id, "/workspace/out/data.bin") == BINARY
    assert await engine.runs.artifact_bytes(ROOT, run.id, "/workspace/report.html") == HTML
    events = await all_events(engine, run.id)
    check_exported(events, {"/workspace/report.html": HTML, "/workspace/out/data.bin": BINARY},
                   ["/workspace/missing.txt"])
    missing = next(e for e in events if e.type == "artifact_exported" and not e.payload["ok"])
    assert "missing.txt" in missing.message
    assert events[-1].type == "run_finished"
    with pytest.raises(errors.NotFound):
        await engine.runs.artifact_bytes(ROOT, run.id, "/workspace/missing.txt")


async def test_artifact_bytes_finds_an_artifact_by_the_relative_path_used_in_artifact_paths(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p", command=write_artifacts_command(),
        metadata={"artifact_paths": ["report.html"]}))
    run = await finish(engine, run.id)
    assert [a.path for a in (await engine.runs.artifacts(ROOT, run.id)).data] == ["/workspace/report.html"]

    assert await engine.runs.artifact_bytes(ROOT, run.id, "report.html") == HTML


async def test_artifact_bytes_for_a_path_outside_the_workspace_is_invalid_input(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="true"))
    run = await finish(engine, run.id)

    with pytest.raises(errors.InvalidInput) as caught:
        await engine.runs.artifact_bytes(ROOT, run.id, "/etc/passwd")
    assert "/workspace" in caught.value.message


async def test_artifacts_of_an_ephemeral_run_are_exported_before_its_sandbox_goes(engine, home):
    run = await engine.runs.create(ROOT, rm.RunCreate(
        prompt="p", command=write_artifacts_command(),
        metadata={"artifact_paths": ["out/data.bin", "report.html"]}))
    run = await finish(engine, run.id)

    assert run.status is models.RunStatus.succeeded and run.ephemeral
    assert [(a.path, a.size) for a in (await engine.runs.artifacts(ROOT, run.id)).data] == [
        ("/workspace/out/data.bin", len(BINARY)), ("/workspace/report.html", len(HTML))]
    assert await engine.runs.artifact_bytes(ROOT, run.id, "/workspace/out/data.bin") == BINARY
    check_exported(await all_events(engine, run.id),
                   {"/workspace/report.html": HTML, "/workspace/out/data.bin": BINARY}, [])


# ---------------------------------------------------------------- structured runtimes

STRUCTURED = {
    # provider -> (event types the fake's session maps to, in order; the raw line that echoes the model)
    "claude-code": (["message", "tool_use", "command_started", "command_finished", "message", "message"], "init"),
    "claude": (["message", "tool_use", "command_started", "command_finished", "message", "message"], "init"),
    # codex: its agent message, then `turn.completed` as the final message carrying the usage
    "codex": (["command_started", "command_finished", "message", "message"], "thread.started"),
}
AGENT_TYPES = {"message", "tool_use", "command_started", "command_finished"}
KEYS = {"codex": {"CODEX_API_KEY": "fake-key-for-the-fake-cli"}}
"""Codex's command line checks for a credential before it starts the CLI (see runtimes/adapters/codex.py)."""


async def raw_stdout(engine: Any, device_id: str, provider: str, model: str) -> list[dict[str, Any]]:
    """The runtime's raw JSON lines for the command line its harness builds (a run's own files are
    removed once it is settled, so this runs that command line again, as a custom command)."""
    argv = harness.get(provider).argv(HarnessInput(prompt="write a haiku", command=None, model=model,
                                                   cwd="/workspace"))
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device_id, prompt="write a haiku",
                                                    command=shlex.join(argv), env=KEYS.get(provider)))
    out = (await finish(engine, run.id)).output
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("provider", sorted(STRUCTURED))
async def test_structured_runtime_succeeds_with_its_final_answer_typed_events_and_the_model(engine, provider):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="write a haiku",
                                                    provider=provider, model="test-model-7",
                                                    env=KEYS.get(provider)))
    run = await finish(engine, run.id)

    assert (run.status, run.exit_code, run.failure_kind) == ("succeeded", 0, None), run
    assert run.output == "Done: write a haiku"
    assert run.model == "test-model-7"
    expected_types, model_line = STRUCTURED[provider]
    events = await all_events(engine, run.id)
    assert [e.type for e in events if e.type in AGENT_TYPES] == expected_types
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    started = next(e for e in events if e.type == "command_started")
    finished = next(e for e in events if e.type == "command_finished")
    assert started.payload["command"] == "echo hello"
    assert "hello" in finished.payload["output"]
    assert any(e.type == "message" and "Done: write a haiku" in e.payload.get("text", "") for e in events)
    final = [e for e in events if e.type == "message" and e.payload.get("final")]
    assert len(final) == 1 and final[0].payload["usage"]["output_tokens"] > 0, final
    lines = await raw_stdout(engine, device.id, provider, "test-model-7")
    echoed = [line for line in lines if line.get("subtype") == model_line or line.get("type") == model_line]
    assert [line["model"] for line in echoed] == ["test-model-7"]


@pytest.mark.parametrize("provider", sorted(STRUCTURED))
async def test_structured_runtime_reporting_failure_fails_the_run_with_nonzero_exit(engine, provider):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="please FAIL now",
                                                    provider=provider, env=KEYS.get(provider)))
    run = await finish(engine, run.id)

    assert (run.status, run.failure_kind, run.exit_code) == ("failed", "nonzero_exit", 1)
    events = await all_events(engine, run.id)
    assert any(e.type == "message" and "fake failure requested" in e.message for e in events)
    assert events[-1].type == "run_finished" and events[-1].payload["failure_kind"] == "nonzero_exit"


@pytest.mark.parametrize(("provider", "image"), [("osa", SMALL), ("claude-code", FULL), ("codex", FULL)])
async def test_a_runtime_missing_from_the_image_fails_at_once_with_runtime_not_found(engine, provider, image):
    device = await sandbox(engine, image=image)
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="hello", provider=provider))
    run = await finish(engine, run.id, timeout=10)

    assert (run.status, run.failure_kind) == ("failed", "runtime_not_found"), run
    assert run.error is not None
    assert "not installed" in run.error and f"agentdock image build --runtimes {provider}" in run.error
    assert "custom" in run.error  # the other way out: bring your own command


# ---------------------------------------------------------------- idempotency


async def test_same_idempotency_key_and_body_returns_the_same_run(engine):
    device = await sandbox(engine)
    body = {"sandbox_id": device.id, "prompt": "p", "command": "echo once", "idempotency_key": "k-1"}
    first = await engine.runs.create(ROOT, models.parse(rm.RunCreate, body))
    second = await engine.runs.create(ROOT, models.parse(rm.RunCreate, dict(body)))

    assert second.id == first.id
    assert [r.id for r in await engine.store.runs.list(rm.RunListQuery())] == [first.id]
    run = await finish(engine, first.id)
    assert run.output == "once\n"


async def test_same_idempotency_key_with_a_different_body_is_a_conflict_naming_the_first_run(engine):
    device = await sandbox(engine)
    first = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="true",
                                                      idempotency_key="k-2"))
    with pytest.raises(errors.Conflict) as caught:
        await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="other", command="true",
                                                  idempotency_key="k-2"))

    assert caught.value.diagnostic().evidence["run_id"] == first.id
    assert first.id in caught.value.message
    assert [r.id for r in await engine.store.runs.list(rm.RunListQuery())] == [first.id]


async def test_concurrent_creates_with_one_idempotency_key_make_one_run(engine, home):
    device = await sandbox(engine)
    got: list[str] = []

    async def create() -> None:
        run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="true",
                                                        idempotency_key="k-3"))
        got.append(run.id)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(create)

    assert len(got) == 5 and len(set(got)) == 1
    assert [r.id for r in await engine.store.runs.list(rm.RunListQuery())] == got[:1]
    await finish(engine, got[0])
    assert len(await all_events(engine, got[0])) > 0
    assert [e.type for e in await all_events(engine, got[0])].count("run_queued") == 1


async def test_concurrent_ephemeral_creates_with_one_idempotency_key_make_one_run_and_one_sandbox(engine, home):
    got: list[rm.Run] = []

    async def create() -> None:
        got.append(await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="true", idempotency_key="k-4")))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(create)

    assert len({r.id for r in got}) == 1 and len({r.target_id for r in got}) == 1
    assert [r.id for r in await engine.store.runs.list(rm.RunListQuery())] == [got[0].id]
    assert [d.id for d in await engine.store.devices.list(include_ephemeral=True)] == [got[0].target_id]
    run = await finish(engine, got[0].id)
    assert run.status is models.RunStatus.succeeded


# ---------------------------------------------------------------- list


async def test_list_filters_by_target_and_status_and_pages_newest_first_without_repeats(engine):
    a = await sandbox(engine)
    b = await sandbox(engine)
    created: list[tuple[str, str, str]] = []  # (id, target, expected status), oldest first
    for target, command in [(a, "true"), (b, "true"), (a, "false"), (a, "true"), (b, "false")]:
        run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=target.id, prompt="p", command=command))
        created.append((run.id, target.id, "succeeded" if command == "true" else "failed"))
    for run_id, _, status in created:
        assert (await finish(engine, run_id)).status == status
    newest_first = [c[0] for c in reversed(created)]

    async def ids(**q: Any) -> list[str]:
        return [r.id for r in (await engine.runs.list(ROOT, rm.RunListQuery(**q))).data]

    assert await ids() == newest_first
    assert await ids(target_id=a.id) == [i for i, t, _ in reversed(created) if t == a.id]
    assert await ids(status="failed") == [i for i, _, s in reversed(created) if s == "failed"]
    assert await ids(target_id=a.id, status="succeeded") == [
        i for i, t, s in reversed(created) if t == a.id and s == "succeeded"]
    assert await ids(target_id="sbx_0000000000000000dead") == []

    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await engine.runs.list(ROOT, rm.RunListQuery(limit=2, cursor=cursor))
        pages.append([r.id for r in page.data])
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(pages) < 10
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == newest_first

    filtered: list[str] = []
    cursor = None
    while True:
        page = await engine.runs.list(ROOT, rm.RunListQuery(target_id=a.id, limit=1, cursor=cursor))
        filtered += [r.id for r in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert filtered == [i for i, t, _ in reversed(created) if t == a.id]


async def test_cancel_kills_a_process_tree_that_ignores_term_after_the_grace(engine):
    device = await sandbox(engine)
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p",
        command="trap '' TERM; sh -c \"trap '' TERM; sleep 1000\" & echo started; wait"))
    await wait_for_output(engine, run.id, "started")
    with anyio.fail_after(30):
        run = await engine.runs.cancel(ROOT, run.id)
    assert (run.status, run.failure_kind, run.exit_code) == ("canceled", "canceled", 137)
    assert_only_keepalive_left(device.id)
