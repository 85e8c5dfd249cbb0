"""`make demo` end to end: `python -m mcp_server.demo` on a fresh home, as a subprocess. It must say that
everything came back as expected, and nothing on the way may log an exception: not the demo, not the
`agentdock serve` it drives (whose stderr is the demo's), not the daemon that serve starts (its log)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.settings import Settings
from mcp_server import daemon as daemon_mod
from tests.conftest import ROOT, logged_errors

pytestmark = pytest.mark.docker


def test_the_demo_runs_end_to_end_and_nothing_on_the_way_logs_an_exception(settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDOCK_") and k != "ANTHROPIC_API_KEY"}
    env.update(AGENTDOCK_HOME=str(settings.home),  # the agent CLIs' packages are fetched once, not per home
               AGENTDOCK_CACHE=os.environ.get("AGENTDOCK_CACHE") or str(Path.home() / ".agentdock" / "cache"))
    try:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "mcp_server.demo"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        daemon_mod.stop(settings)  # the demo leaves its daemon running, as it tells its user
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo: everything came back as expected" in done.stdout
    assert logged_errors(done.stderr) == [], done.stderr[-3000:]
    log = daemon_mod.log_path(settings).read_text()
    assert f"serving on {settings.control_socket}" in log  # the daemon the demo started, on this home
    assert logged_errors(log) == [], log[-3000:]
