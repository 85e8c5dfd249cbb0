"""A failed `agentdock image build`, through the real CLI: a diagnostic saying what to do, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AGENTDOCK


def image_build(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTDOCK, "image", "build", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def test_image_build_without_a_docker_engine_prints_a_diagnostic_with_what_to_do(tmp_path: Path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "AGENTDOCK_HOME": str(tmp_path)}
    text = image_build(env, "--small")
    as_json = image_build(env, "--small", "--json")

    assert text.returncode == 1 and as_json.returncode == 1
    assert "Traceback" not in text.stdout + text.stderr + as_json.stdout + as_json.stderr
    assert text.stderr.startswith("error: cannot reach the Docker engine"), text.stderr
    assert "  try: docker info" in text.stderr
    body = json.loads(as_json.stdout)
    assert set(body) == {"diagnostic", "error"}
    diag = body["diagnostic"]
    assert (diag["code"], diag["category"], diag["suggested_command"]) == ("image_build_failed", "backend",
                                                                          "docker info")
    assert body["error"] == diag["message"] and "cannot reach the Docker engine" in diag["message"]


@pytest.mark.docker
def test_offline_full_image_build_without_debootstrap_says_to_install_it(tmp_path: Path):
    # A fresh home has no rootfs cache, and a PATH without debootstrap: the offline build cannot start.
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"AGENTDOCK_HOME": str(tmp_path), "AGENTDOCK_OFFLINE_ONLY": "1", "PATH": str(empty)}
    result = image_build(env, "--full", "--force", "--json")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    diag = json.loads(result.stdout)["diagnostic"]
    assert (diag["code"], diag["suggested_command"]) == ("image_build_failed", "apt-get install debootstrap")
    assert diag["message"].startswith("debootstrap is missing")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_image_build_with_an_unknown_runtime_names_the_field_and_builds_nothing(tmp_path: Path):
    env = {"AGENTDOCK_HOME": str(tmp_path), "AGENTDOCK_CACHE": str(tmp_path / "cache")}
    result = image_build(env, "--runtimes", "claude-code,nope", "--json")

    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    diag = json.loads(result.stdout)["diagnostic"]
    assert (diag["code"], diag["evidence"]["field"]) == ("invalid_input", "runtimes")
    assert "'nope'" in diag["message"] and "claude-code, codex, pi, hermes" in diag["message"]
    assert not (tmp_path / "cache").exists()
