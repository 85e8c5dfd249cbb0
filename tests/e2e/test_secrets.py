"""Secrets through the real daemon and CLI: a secret reaches the run that names it and appears nowhere
else (the database file, the daemon log, the events, `docker inspect` of the container and the
environment of its main process), printed values are masked, and bad or unknown names change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from runtimes.naming import RUNS_DIR, run_uid
from tests.conftest import AGENTDOCK, FULL, Daemon, owned_containers
from tests.e2e.test_http import RUNS, SANDBOXES, diagnostic, http, run_ids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
VALUE = "sk-agentdock-test-" + os.urandom(12).hex()
NAME = "MY_API_TOKEN"
# prints the value whole, split across two writes a moment apart, JSON-escaped in a line, and its hash
COMMAND = ('printf "%s" "$MY_API_TOKEN" | sha256sum | cut -c1-64; echo "whole=$MY_API_TOKEN"; '
           'v="$MY_API_TOKEN"; printf "split=%s" "${v%????????}"; sleep 0.3; echo "${v#${v%????????}}"; '
           'echo "err=$MY_API_TOKEN" >&2; '
           'while [ ! -e /workspace/go ]; do sleep 0.1; done')


def set_secret(daemon: Daemon, name: str, value: str) -> None:
    out = subprocess.run([AGENTDOCK, "secrets", "set", name, "--json"], input=value + "\n", env=daemon.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert value not in out.stdout + out.stderr
    assert json.loads(out.stdout)["name"] == name


def everything_on_disk(home: Path) -> bytes:
    """Every file under the home except the secrets themselves: the database, its WAL, the log, artifacts."""
    data = b""
    for path in home.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(home).parts:
            data += path.read_bytes()
    return data


def container_of(home: Path, run_id: str) -> Any:
    """The run's ephemeral container, once it is there (docker-py's list reads each container again,
    so one removed in between, a create the backend refused and retried, say, is just not there yet)."""
    try:
        found = docker.from_env().api.containers(all=True, filters={"label": f"agentdock.run_id={run_id}"})
        return docker.from_env().containers.get(found[0]["Id"]) if found else None
    except docker.errors.NotFound:
        return None


async def wait_for(predicate: Any, what: str) -> Any:
    with anyio.fail_after(60):
        while not (found := predicate()):
            await anyio.sleep(0.1)
    return found


PROFILES = "/api/v1/agent-runtime-profiles"
PROFILE_LIMITS = {"cpus": 0.5, "memory_mb": 256, "pids_limit": 64}


@pytest.mark.parametrize("where", ["sandbox", "ephemeral", "profile"])
async def test_a_secret_reaches_the_run_and_appears_nowhere_else(daemon: Daemon, where: str):
    """`profile`: the run names no secret; the tenant's default profile does, and also picks the ephemeral
    sandbox's image, limits and network, which `docker inspect` shows."""
    set_secret(daemon, NAME, VALUE)
    secret_file = daemon.settings.secrets_dir / NAME
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    async with http(daemon) as client:
        body: dict[str, Any] = {"prompt": "use the key", "command": COMMAND, "secrets": [NAME]}
        if where == "profile":
            del body["secrets"]
            made = await client.post(PROFILES, json={"name": "keyed", "runtime": "custom", "secrets": [NAME],
                                                     "is_default": True, "image": FULL, "network": True,
                                                     "resources": PROFILE_LIMITS})
            assert made.status_code == 201 and VALUE not in made.text, made.text
        if where == "sandbox":
            body["sandbox_id"] = sbx = (await client.post(SANDBOXES, json={})).json()["data"]["id"]
        resp = await client.post(RUNS, json=body)
        assert resp.status_code == 201, resp.text
        run = resp.json()["data"]
        assert run["secrets"] == [NAME] and VALUE not in resp.text

        # while it runs: the container's configuration and its main process know nothing of it
        container = await wait_for(lambda: container_of(daemon.settings.home, run["id"]) or (
            docker.from_env().containers.get(f"agentdock-{sbx}") if where == "sandbox" else None), "container")
        await wait_for(lambda: b"whole=" in container.exec_run(["cat", f"{RUNS_DIR}/{run['id']}/stdout"],
                                                               user=f"{run_uid(run['id'])}:1000").output, "output")
        info = docker.APIClient().inspect_container(container.id)
        assert VALUE not in json.dumps(info)
        if where == "profile":
            host = info["HostConfig"]
            assert info["Config"]["Image"] == FULL and host["NetworkMode"] == "bridge", (info["Config"], host)
            assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (500_000_000, 256 * 2**20, 64)
            assert run["profile_snapshot"]["secrets"] == [NAME] and run["profile_snapshot"]["source"] == "tenant_default"
        main_env = Path(f"/proc/{info['State']['Pid']}/environ").read_bytes()
        assert VALUE.encode() not in main_env
        for exec_id in info.get("ExecIDs") or []:
            assert VALUE not in json.dumps(docker.APIClient().exec_inspect(exec_id))
        container.exec_run(["touch", "/workspace/go"], user="1000")

        resp = await client.get(f"{RUNS}/{run['id']}", params={"wait": 60})
        run = resp.json()["data"]
        assert run["status"] == "succeeded", run
        out = run["output"].splitlines()
        assert out[0] == hashlib.sha256(VALUE.encode()).hexdigest()  # it reached the run, whole
        assert out[1:3] == ["whole=********", "split=********"]
        assert run["stderr"] == "err=********\n"
        assert VALUE not in resp.text
        events = await client.get(f"{RUNS}/{run['id']}/events", params={"limit": 1000})
        assert events.status_code == 200 and "whole=********" in events.text
        assert VALUE not in events.text
    if where == "sandbox":
        info = docker.APIClient().inspect_container(f"agentdock-{sbx}")
        assert VALUE not in json.dumps(info)
    listed = daemon.cli("secrets", "list", "--json")
    assert json.loads(listed.stdout)["data"][0]["name"] == NAME and VALUE not in listed.stdout
    assert VALUE.encode() not in everything_on_disk(daemon.settings.home)  # db, WAL, daemon log, artifacts


@pytest.mark.parametrize(("secrets", "field", "code"), [
    (["NOT_SET_ANYWHERE"], "secrets.0", "invalid_input"),
    (["bad name"], "secrets.0", "invalid_input"),
    (["PATH"], "secrets.0", "invalid_input"),
    ([NAME, NAME], "secrets", "invalid_input"),
    ("MY_API_TOKEN", "secrets", "invalid_input"),
])
async def test_a_run_naming_a_bad_or_unknown_secret_is_refused_naming_the_field_and_writes_nothing(
        daemon: Daemon, secrets: Any, field: str, code: str):
    set_secret(daemon, NAME, VALUE)
    async with http(daemon) as client:
        resp = await client.post(RUNS, json={"prompt": "p", "command": "true", "secrets": secrets})
        diag = diagnostic(resp, 400, code)
        assert diag["evidence"]["field"] == field, diag
        assert await run_ids(client) == []
    assert owned_containers(daemon.settings.home) == []


def test_secrets_cli_refuses_a_value_as_an_argument_and_bad_names_and_writes_nothing(daemon: Daemon):
    bad = subprocess.run([AGENTDOCK, "secrets", "set", NAME, VALUE], env=daemon.env, capture_output=True, text=True,
                         input="", timeout=60)
    assert bad.returncode != 0 and not (daemon.settings.secrets_dir / NAME).exists()
    for name in ("1ABC", "AGENTDOCK_X", "LD_PRELOAD", "../../etc/passwd"):
        out = subprocess.run([AGENTDOCK, "secrets", "set", name, "--json"], env=daemon.env, capture_output=True,
                             text=True, input=VALUE, timeout=60)
        assert out.returncode == 1, out
        assert json.loads(out.stdout)["diagnostic"]["evidence"]["field"] == "name"
        assert "Traceback" not in out.stderr
    short = subprocess.run([AGENTDOCK, "secrets", "set", NAME, "--json"], env=daemon.env, capture_output=True,
                           text=True, input="short", timeout=60)
    assert json.loads(short.stdout)["diagnostic"]["evidence"]["field"] == "value"
    assert VALUE not in short.stdout
    assert not daemon.settings.secrets_dir.exists() or list(daemon.settings.secrets_dir.iterdir()) == []
    missing = subprocess.run([AGENTDOCK, "secrets", "rm", NAME, "--json"], env=daemon.env, capture_output=True,
                             text=True, timeout=60)
    assert json.loads(missing.stdout)["diagnostic"]["code"] == "not_found"
