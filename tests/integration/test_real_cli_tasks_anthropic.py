"""The real claude and pi complete a task in a real sandbox of the agents image, against the scripted
Anthropic Messages API (tests/provider/anthropic.py): some text, a tool call that writes a file, then the
final answer. The run succeeds with that answer as its output, the file is in the workspace, and the
events carry the CLI's messages, its tool use and result, and the token usage the server reported. A key
the API refuses ends the run `auth_required`.

The run reaches the model only through the model gateway: its sandbox has no network, it holds a
placeholder and the gateway's base URL, and the gateway puts the stored key on (the scripted server sees
the real key; the run, its events and its environment never do)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.settings import Settings
from tests.integration import test_real_clis as real
from tests.provider.anthropic import MAIN_USAGE, TOOL_USE_ID, Script, ScriptedAnthropic

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
agents_image = real.agents_image
KEY = "sk-ant-scripted-0123456789abcdef"
SCRIPT = Script(path="/workspace/notes.txt", content="written by the scripted model\nsecond line\n",
                opening="I will write notes.txt now.", answer="Done: notes.txt holds two lines.")
WRITE_TOOL = {"claude-code": ("Write", "file_path"), "pi": ("write", "path")}
"""Each CLI's file-writing tool, as its requests name it, and the tool's path field."""


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedAnthropic, int]]:
    server = ScriptedAnthropic(SCRIPT)
    with server.serving("127.0.0.1") as port:  # the gateway calls it from the host
        yield server, port


@pytest.fixture
def settings(home: Path, agents_image: str, scripted: tuple[ScriptedAnthropic, int]) -> Settings:
    return Settings(home=home, image=agents_image, cancel_grace_seconds=1.0,
                    gateway_upstreams=f"anthropic=http://127.0.0.1:{scripted[1]}")


def model_route(engine: Any) -> tuple[dm.DeviceCreate, dict[str, Any]]:
    """The device and the run fields through which a run reaches the model: a sandbox without a network,
    and the key as a stored secret ANTHROPIC_API_KEY (so the run goes through the gateway)."""
    engine.secrets.set("ANTHROPIC_API_KEY", KEY.encode())
    return dm.DeviceCreate(), {"secrets": ["ANTHROPIC_API_KEY"]}


@pytest.mark.parametrize("provider", ["claude-code", "pi"])
async def test_a_real_cli_completes_the_scripted_task_with_its_events_and_usage(engine, scripted, provider):
    server, _ = scripted
    device_fields, run_fields = model_route(engine)
    device = await engine.devices.create(ROOT, device_fields)
    done = await real.run_in(engine, device.id, prompt="Write notes.txt with two lines.", provider=provider,
                             timeout=120, **run_fields)
    assert (done.status, done.output) == ("succeeded", SCRIPT.answer), done

    tool, path_key = WRITE_TOOL[provider]
    task = server.task_requests()
    assert [s.answered for s in task] == ["tool_use", "final"], [(s.method, s.path, s.answered) for s in server.seen]
    assert all(s.api_key == KEY and s.stream and tool in s.tools for s in task)
    assert server.seen == task, "side traffic (claude's HEAD /api/hello, say) is turned off by the adapter"

    evs = (await engine.runs.events(ROOT, done.id, rm.EventsQuery(limit=1000))).data
    texts = [e.payload.get("text") for e in evs if e.type == "message" and "text" in e.payload]
    assert texts == [SCRIPT.opening, SCRIPT.answer], texts
    (use,) = [e for e in evs if e.type == "tool_use"]
    assert use.payload == {"id": TOOL_USE_ID, "name": tool, "input": {path_key: SCRIPT.path, "content": SCRIPT.content}}
    (result,) = [e for e in evs if e.type == "command_finished"]
    assert result.payload["tool_use_id"] == TOOL_USE_ID and result.payload["is_error"] is False, result
    (final,) = [e for e in evs if e.type == "message" and e.payload.get("final")]
    turns = len(task)
    assert final.payload["usage"] == {"input_tokens": turns * MAIN_USAGE["input_tokens"],
                                      "output_tokens": turns * MAIN_USAGE["output_tokens"],
                                      "cache_read_tokens": 0, "cache_write_tokens": 0}, final.payload
    assert (done.model_requests, done.input_tokens, done.output_tokens) == (
        turns, turns * MAIN_USAGE["input_tokens"], turns * MAIN_USAGE["output_tokens"]), "counted by the gateway"
    assert KEY not in done.model_dump_json() and not [e for e in evs if KEY in e.model_dump_json()]

    written = await real.run_in(engine, device.id, prompt="read", command=f"cat {SCRIPT.path}")
    assert (written.status, written.output) == ("succeeded", SCRIPT.content), written


@pytest.mark.parametrize("provider", ["claude-code", "pi"])
async def test_a_real_cli_whose_key_the_api_refuses_fails_auth_required(engine, scripted, provider):
    server, _ = scripted
    server.script = replace(SCRIPT, key="sk-ant-another-key")  # the stored key is not the one it takes
    device_fields, run_fields = model_route(engine)
    # claude retries a 401 ten times (minutes, with its backoff); here once is enough
    device = await engine.devices.create(ROOT, device_fields)
    done = await real.run_in(engine, device.id, prompt="Write notes.txt.", provider=provider, timeout=120,
                             env={"CLAUDE_CODE_MAX_RETRIES": "0"}, **run_fields)
    assert (done.status, done.failure_kind) == ("failed", "auth_required"), done
    assert "agentdock secrets set ANTHROPIC_API_KEY" in (done.error or "")
    assert server.seen and {s.answered for s in server.seen} == {"refused"}
