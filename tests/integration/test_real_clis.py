"""The real agent CLIs in the agents image, in real containers: each at its pinned version, its help,
and its real answer without a credential classified `auth_required`; with ANTHROPIC_API_KEY set in
the environment of the test run, a real claude-code answer through a secret.

The image is built on demand (`images.build(runtimes=...)`); the packages are fetched once into
$AGENTDOCK_CACHE (default ~/.agentdock/cache), so later runs reuse them and an unchanged image."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.settings import Settings
from runtimes import clis, images
from runtimes.agents_image import AGENTS_IMAGE, inspect_runtimes
from tests.conftest import AGENTDOCK

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
AGENTS = AGENTS_IMAGE


@pytest.fixture(scope="module")
def agents_image() -> Iterator[str]:
    cache = os.environ.get("AGENTDOCK_CACHE") or str(Path.home() / ".agentdock" / "cache")
    saved = os.environ.get("AGENTDOCK_CACHE")
    os.environ["AGENTDOCK_CACHE"] = cache
    try:
        images.build([], runtimes=list(clis.CATALOG), log=lambda line: None)
    finally:
        if saved is None:
            os.environ.pop("AGENTDOCK_CACHE", None)
    yield AGENTS


@pytest.fixture
def settings(home: Path, agents_image: str) -> Settings:
    return Settings(home=home, image=agents_image, cancel_grace_seconds=1.0)


async def run_in(engine: Any, device_id: str, **fields: Any) -> rm.Run:
    created = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device_id, **fields))
    with anyio.fail_after(180):
        done = await engine.runs.wait(ROOT, created.id, 185)
    assert done.status.terminal, done
    return done


def test_the_agents_image_labels_each_cli_with_its_pinned_version(agents_image: str, home: Path) -> None:
    assert inspect_runtimes(agents_image) == {n: c.version for n, c in clis.CATALOG.items()}
    out = subprocess.run([AGENTDOCK, "runtimes", "--json", "--home", str(home)], capture_output=True, text=True,
                         timeout=60)
    rows = {r["runtime"]: r for r in json.loads(out.stdout)["data"]}
    assert rows["claude-code"]["in_image"] == clis.CATALOG["claude-code"].version
    assert rows["custom"]["in_image"] == "-" and rows["osa"]["in_image"] == "-"


async def test_each_real_cli_runs_in_a_sandbox_and_reports_its_version_and_help(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    command = ("claude --version; codex --version; pi --version 2>&1; hermes --version | head -1; "
               "claude --help | grep -c -- --output-format; codex exec --help | grep -c -- --json; "
               "pi --help 2>&1 | grep -c -- --mode; hermes --help | grep -c -- --oneshot")
    done = await run_in(engine, device.id, prompt="versions", command=command)
    assert done.status == "succeeded", done
    lines = done.output.splitlines()
    assert lines[0] == f"{clis.CATALOG['claude-code'].version} (Claude Code)"
    assert lines[1] == f"codex-cli {clis.CATALOG['codex'].version}"
    assert lines[2] == clis.CATALOG["pi"].version
    assert lines[3].startswith(f"Hermes Agent v{clis.CATALOG['hermes'].version}")
    assert all(int(n) >= 1 for n in lines[4:8]), lines


@pytest.mark.parametrize(("provider", "secret", "said"), [
    ("claude-code", "ANTHROPIC_API_KEY", "Not logged in"),
    ("pi", "ANTHROPIC_API_KEY", "No API key found"),
    ("hermes", "OPENROUTER_API_KEY", "No inference provider configured"),
    ("codex", "CODEX_API_KEY", "no credential"),  # codex itself would retry the network until the timeout
])
async def test_a_real_cli_without_a_credential_fails_auth_required_naming_the_secret(engine, provider, secret, said):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    done = await run_in(engine, device.id, prompt="say hello", provider=provider, timeout=170)
    assert (done.status, done.failure_kind) == ("failed", "auth_required"), done
    assert f"agentdock secrets set {secret}" in (done.error or "")
    assert said in (done.error or ""), done.error


@pytest.mark.skipif(not os.environ.get("ANTHROPIC_API_KEY"),
                    reason="needs a real ANTHROPIC_API_KEY in the environment (and network to api.anthropic.com)")
async def test_real_claude_code_answers_with_the_key_given_as_a_secret(engine):
    key = os.environ["ANTHROPIC_API_KEY"]
    engine.secrets.set("ANTHROPIC_API_KEY", key.encode())
    device = await engine.devices.create(ROOT, dm.DeviceCreate(network=True))
    done = await run_in(engine, device.id, prompt="Reply with the single word: pong", provider="claude-code",
                        secrets=["ANTHROPIC_API_KEY"], timeout=170)
    assert done.status == "succeeded", done
    assert "pong" in done.output.lower()
    assert key not in done.model_dump_json()
