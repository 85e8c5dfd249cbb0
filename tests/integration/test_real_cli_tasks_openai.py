"""The real OpenAI-speaking CLIs (codex, hermes) complete a task in real Docker against the scripted
provider (tests/provider/openai.py): text, a tool call that writes a file, a final answer. The run
ends succeeded with the final answer as its output, the file is in the workspace, and the events carry
the CLI's messages, tool use and token usage. The run reaches the provider only through the model
gateway: its sandbox has no network, it holds a placeholder, and the gateway puts the stored key on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.settings import Settings
from tests.integration import test_real_clis
from tests.integration.test_real_clis import run_in
from tests.provider.openai import USAGE, ScriptedOpenAI, serve

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
KEY = "sk-openai-scripted-0123456789abcdef"
agents_image = test_real_clis.agents_image  # the fixture: the image, built (cached) on demand
MODEL = "scripted-model"  # not in the CLIs' catalogs: codex's default model needs its code-mode host
PROMPT = "Write the proof file, then say what you did."


@pytest.fixture
def provider() -> Iterator[tuple[ScriptedOpenAI, int]]:
    scripted = ScriptedOpenAI()
    with serve(scripted.app, "127.0.0.1") as port:  # the gateway calls it from the host
        yield scripted, port


@pytest.fixture
def settings(home: Path, agents_image: str, provider: tuple[ScriptedOpenAI, int]) -> Settings:
    return Settings(home=home, image=agents_image, cancel_grace_seconds=1.0,
                    gateway_upstreams=f"openai=http://127.0.0.1:{provider[1]},codex=http://127.0.0.1:{provider[1]}")


async def run_task(engine: Any, runtime: str, secret: str = "OPENAI_API_KEY") -> tuple[rm.Run, list[rm.RunEvent], str]:
    """The scripted task run by `runtime` in a fresh sandbox without a network, given the provider's key
    as a stored secret (so through the gateway): the run, its events, and the file it wrote, read back
    by a second run in the same workspace."""
    engine.secrets.set(secret, KEY.encode())
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    done = await run_in(engine, device.id, prompt=PROMPT, provider=runtime, model=MODEL,
                        secrets=[secret], timeout=110)
    events = (await engine.runs.events(ROOT, done.id, rm.EventsQuery(limit=1000))).data
    proof = await run_in(engine, device.id, prompt="read", command="cat agentdock-proof.txt")
    assert proof.status == "succeeded", (proof.failure_kind, proof.stderr, done.status, done.stderr[-2000:])
    assert KEY not in done.model_dump_json() + "".join(e.model_dump_json() for e in events)
    # Every request through the gateway counts (hermes also probes endpoints the scripted server 404s).
    assert done.model_requests >= 2 and (done.input_tokens, done.output_tokens) == (
        2 * USAGE["input"], 2 * USAGE["output"]), [e.payload for e in events if e.type == "model_request"]
    return done, events, proof.output


def of_type(events: list[rm.RunEvent], kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.type == kind]


@pytest.mark.parametrize("secret", ["OPENAI_API_KEY", "CODEX_API_KEY"])
async def test_real_codex_completes_the_scripted_task(engine, provider, secret):
    scripted, _ = provider
    done, events, written = await run_task(engine, "codex", secret)
    assert done.status == "succeeded", (done, [r.stage for r in scripted.requests])
    assert done.output == scripted.script.final
    assert written == scripted.script.content
    turns = [r for r in scripted.requests if r.stage != "side"]
    assert [(r.api, r.stage, r.key, r.model, r.stream) for r in turns] == [
        ("responses", "act", KEY, MODEL, True), ("responses", "final", KEY, MODEL, True)]
    assert turns[0].call == "exec_command"
    assert json.loads(turns[0].body["client_metadata"]["x-codex-turn-metadata"])["analytics_enabled"] is False
    texts = [p["text"] for p in of_type(events, "message") if not p.get("error") and "text" in p]
    assert texts == [scripted.script.first, scripted.script.final]
    [started] = of_type(events, "command_started")
    [finished] = of_type(events, "command_finished")
    assert "agentdock-proof.txt" in started["command"] and finished["exit_code"] == 0
    [usage] = [p["usage"] for p in of_type(events, "message") if "usage" in p]
    assert (usage["input_tokens"], usage["output_tokens"]) == (2 * USAGE["input"], 2 * USAGE["output"])


async def test_real_hermes_completes_the_scripted_task(engine, provider):
    scripted, _ = provider
    done, events, written = await run_task(engine, "hermes")
    assert done.status == "succeeded", (done, [r.stage for r in scripted.requests])
    assert done.output.strip() == scripted.script.final
    assert written == scripted.script.content
    turns = [r for r in scripted.requests if r.stage != "side"]
    assert [(r.api, r.stage, r.key, r.model, r.stream) for r in turns] == [
        ("chat", "act", KEY, MODEL, True), ("chat", "final", KEY, MODEL, True)]
    assert turns[0].call == "write_file"
    assert turns[1].body["stream_options"] == {"include_usage": True}
    texts = [p["text"] for p in of_type(events, "message") if "text" in p]
    assert texts == [scripted.script.first, scripted.script.final]
    [tool] = of_type(events, "tool_use")
    assert (tool["name"], tool["input"]) == ("write_file", {"path": "agentdock-proof.txt",
                                                           "content": scripted.script.content})
    [result] = of_type(events, "command_finished")
    assert result["tool_use_id"] == tool["id"] and '"bytes_written"' in result["output"]
    [usage] = [p["usage"] for p in of_type(events, "message") if "usage" in p]
    assert (usage["input_tokens"], usage["output_tokens"]) == (2 * USAGE["input"], 2 * USAGE["output"])
