"""Every runtime adapter against its fake CLI (the real success format, and the real no-credential
answer) in a real container of the small image: command line, typed events, final answer, and the
failure classified (`auth_required` naming the secret to set). Hermes' answer is read back from its
session store by python3, which the small image lacks: its success path runs with the real CLI
(tests/integration/test_real_cli_tasks_openai.py) and its reader in tests/unit/test_harness.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.settings import Settings
from tests.conftest import SMALL

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
KEY = "fake-key-0123456789"


@pytest.fixture
def settings(home: Path) -> Settings:
    # osa's invocation is not public: a setting gives its command template (here: the fake pi's)
    return Settings(home=home, image=SMALL, cancel_grace_seconds=1.0,
                    osa_command='pi -p --mode text --model "${1:-none}"')


async def run(engine: Any, provider: str, prompt: str, **fields: Any) -> rm.Run:
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    created = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt=prompt,
                                                              provider=provider, **fields))
    with anyio.fail_after(60):
        done = await engine.runs.wait(ROOT, created.id, 65)
    assert done.status.terminal, done
    return done


async def events(engine: Any, run_id: str) -> list[rm.RunEvent]:
    return (await engine.runs.events(ROOT, run_id, rm.EventsQuery(limit=1000))).data


async def test_pi_fake_session_becomes_tool_events_and_its_last_assistant_text_is_the_answer(engine):
    done = await run(engine, "pi", "list the files", model="anthropic/claude-sonnet-4-5")
    assert (done.status, done.exit_code, done.output) == ("succeeded", 0, "Done: list the files"), done
    evs = await events(engine, done.id)
    types = [e.type for e in evs if e.type in ("tool_use", "command_started", "command_finished", "message")]
    assert types == ["tool_use", "command_started", "command_finished", "message", "message"]
    assert next(e for e in evs if e.type == "command_started").payload["command"] == "echo hello"


async def test_osa_runs_the_command_template_from_the_setting_with_the_model_as_its_first_argument(engine):
    done = await run(engine, "osa", "hello osa", model="m-1")
    assert (done.status, done.output) == ("succeeded", "Done: hello osa\n"), done


@pytest.mark.parametrize(("provider", "secret"), [("claude-code", "ANTHROPIC_API_KEY"), ("claude", "ANTHROPIC_API_KEY"),
                                                  ("pi", "ANTHROPIC_API_KEY"), ("hermes", "OPENROUTER_API_KEY"),
                                                  ("codex", "CODEX_API_KEY")])
async def test_a_runtime_without_a_credential_fails_auth_required_naming_the_secret_to_set(engine, provider, secret):
    # the fakes print what the real CLIs print without a key (NOAUTH); codex's own check runs before its CLI
    done = await run(engine, provider, "hello NOAUTH")
    assert (done.status, done.failure_kind) == ("failed", "auth_required"), done
    assert f"agentdock secrets set {secret}" in (done.error or "")
    finished = (await events(engine, done.id))[-1]
    assert finished.type == "run_finished" and finished.payload["failure_kind"] == "auth_required"


async def test_codex_with_its_key_as_a_secret_reaches_the_cli_and_answers(engine):
    engine.secrets.set("CODEX_API_KEY", KEY.encode())
    done = await run(engine, "codex", "write a haiku", secrets=["CODEX_API_KEY"])
    assert (done.status, done.output, done.secrets) == ("succeeded", "Done: write a haiku", ["CODEX_API_KEY"]), done


async def test_an_ordinary_failure_stays_nonzero_exit(engine):
    done = await run(engine, "pi", "please FAIL", model="x")
    assert (done.status, done.failure_kind, done.exit_code) == ("failed", "nonzero_exit", 1), done
