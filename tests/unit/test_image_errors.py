"""Every way an image build can fail reaches the CLI user as one `image_build_failed` diagnostic."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import docker.errors
import pytest

from mcp_server import cli
from runtimes import image_build, images


class FakeDockerAPI:
    def close(self) -> None:
        pass


FAILURES = [
    pytest.param(subprocess.CalledProcessError(2, ["tar", "-c", "."]), "CalledProcessError", "a build command failed",
                 id="subprocess"),
    pytest.param(docker.errors.APIError("500 Server Error: no space left on device"), "APIError",
                 "the Docker engine failed a step of the build", id="docker-py"),
    pytest.param(FileNotFoundError(2, "No such file or directory", "debootstrap"), "FileNotFoundError",
                 "a build step could not run", id="missing-tool"),
]


@pytest.mark.parametrize(("exc", "kind", "message"), FAILURES)
def test_a_failing_build_step_is_an_image_build_failed_diagnostic_in_json_mode(exc, kind, message, monkeypatch,
                                                                                capsys):
    def builder(api: Any, force: bool, log: Any) -> str:
        raise exc

    monkeypatch.setattr(image_build, "client", FakeDockerAPI)
    monkeypatch.setitem(images._BUILDERS, "small", builder)
    code = cli.main(["image", "build", "--small", "--json"])
    out, err = capsys.readouterr()

    assert code == 1
    body = json.loads(out)
    diag = body["diagnostic"]
    assert (diag["code"], diag["category"], diag["evidence"]["type"]) == ("image_build_failed", "backend", kind)
    assert diag["message"].startswith(message) and diag["suggested_command"]
    assert "Traceback" not in out + err


def test_a_failing_build_step_in_text_mode_prints_the_error_and_what_to_try(monkeypatch, capsys):
    def builder(api: Any, force: bool, log: Any) -> str:
        raise subprocess.CalledProcessError(1, ["docker", "import"])

    monkeypatch.setattr(image_build, "client", FakeDockerAPI)
    monkeypatch.setitem(images._BUILDERS, "small", builder)
    code = cli.main(["image", "build", "--small"])
    out, err = capsys.readouterr()

    assert code == 1
    assert err.splitlines() == [
        "error: a build command failed: Command '['docker', 'import']' returned non-zero exit status 1.",
        "  try: agentdock image build --force"]
    assert "Traceback" not in out + err
