"""The model gateway on real Docker: a run given ANTHROPIC_API_KEY reaches a canned Anthropic API only
through the gateway, holding a placeholder; the upstream gets the real key, streams pass unbuffered,
the run's record counts requests and tokens, and nothing of the key is anywhere in the device."""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import docker
import pytest

from engine import models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.gateway import GatewayUnavailable
from engine.secrets import MASK, SecretStore
from engine.settings import Settings
from mcp_server import areas
from mcp_server import daemon as daemon_mod
from mcp_server.client import DaemonClient
from runtimes.egress_network import egress_names
from runtimes.naming import container_name
from runtimes.wiring import docker_engine
from tests.canned_upstream import PLAIN_USAGE, STREAM_INPUT, STREAM_OUTPUT, CannedUpstream
from tests.conftest import FULL, Daemon, Engine, owned_containers
from tests.integration.test_restart import settled, wait_for_event

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

REAL = "sk-ant-real-" + pysecrets.token_hex(16)

CLIENT = r"""
import json, os, sys, urllib.request, urllib.error
base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
def post(body, k):
    req = urllib.request.Request(base + "/v1/messages", data=json.dumps(body).encode(), method="POST",
                                 headers={"x-api-key": k, "content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=120)
out = {"env": sorted(f"{k}={v}" for k, v in os.environ.items())}
out["plain"] = json.load(post({"model": "m", "max_tokens": 5, "messages": []}, key))["content"][0]["text"]
stream = post({"model": "m", "stream": True, "metadata": {"hold": True}, "messages": []}, key)
first = b""
while not first.endswith(b"\n\n"):
    first += stream.readline()
print("FIRST " + json.loads(first.split(b"data: ")[1])["type"], flush=True)
out["rest"] = [json.loads(l[6:])["type"] + ":" + json.loads(l[6:]).get("delta", {}).get("text", "")
               for l in stream.read().decode().splitlines() if l.startswith("data: ")]
try:
    post({"model": "m", "messages": []}, "adgw_run_forged_" + "0" * 64)
except urllib.error.HTTPError as e:
    out["forged"] = [e.code, json.load(e)["diagnostic"]["code"]]
print(json.dumps(out))
"""

PROBE = r"""
import json, socket, sys, urllib.request, urllib.error
def tcp(host, port):
    s = socket.socket(); s.settimeout(20)
    try:
        s.connect((host, port)); return "open"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
gw, key, targets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {name: tcp(host, port) for name, (host, port) in targets.items()}
req = urllib.request.Request(gw + "/v1/messages", data=b"{}", method="POST", headers={"x-api-key": key})
try:
    urllib.request.urlopen(req, timeout=30); out["finished_key"] = "accepted"
except urllib.error.HTTPError as e:
    out["finished_key"] = [e.code, json.load(e)["diagnostic"]["code"]]
print(json.dumps(out))
"""


@pytest.fixture
def upstream() -> Iterator[CannedUpstream]:
    with CannedUpstream() as up:
        yield up


@pytest.fixture
async def gw_engine(home, upstream) -> AsyncIterator[Engine]:
    settings = Settings(home=home, image=FULL, cancel_grace_seconds=1.0,
                        gateway_upstreams=f"anthropic={upstream.url}")
    async with docker_engine(settings).running() as engine:
        engine.secrets.set("ANTHROPIC_API_KEY", REAL.encode())
        yield engine


def in_device(device_id: str, *cmd: str) -> tuple[int, str]:
    code, out = docker.from_env().containers.get(container_name(device_id)).exec_run(list(cmd))
    return code, out.decode(errors="replace")


def seen_from_the_host(device_id: str) -> tuple[str, str]:
    """Every environment of every process in the device, and the paths under its writable places that
    hold REAL, read from the host as root (nothing inside the device may read them all)."""
    api = docker.from_env().api
    top = api.top(container_name(device_id))
    pids = [row[top["Titles"].index("PID")] for row in top["Processes"]]
    environs = "\n".join(Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
                         for pid in pids)
    root = f"/proc/{api.inspect_container(container_name(device_id))['State']['Pid']}/root"
    found = subprocess.run(["grep", "-rlF", REAL, *(f"{root}{d}" for d in ("/workspace", "/tmp", "/run", "/etc",
                                                                        "/root", "/home"))],
                           capture_output=True, text=True).stdout
    return environs, found


async def output_shows(engine: Engine, run_id: str, text: str) -> None:
    after = 0
    with anyio.fail_after(120):
        while True:
            page = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after_sequence=after, wait_seconds=10))
            if any(text in json.dumps(e.payload) for e in page.data):
                return
            assert page.run_status not in (models.RunStatus.succeeded, models.RunStatus.failed), \
                await engine.runs.get(ROOT, run_id)
            after = page.next_after_sequence


async def test_a_run_reaches_its_provider_only_through_the_gateway_with_a_placeholder_for_the_key(gw_engine, upstream):
    engine = gw_engine
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command=f"python3 -c '{CLIENT}'",
                                                          secrets=["ANTHROPIC_API_KEY"], timeout=180))

    # The stream's first event reached the run while the upstream holds the rest: nothing buffered it.
    await output_shows(engine, run.id, "FIRST message_start")
    # Meanwhile, with the run's processes alive: the key is in no process's environment, file or config.
    environs, found = seen_from_the_host(device.id)
    placeholder = engine.tokens.placeholder(run.id, "anthropic")
    assert f"ANTHROPIC_API_KEY={placeholder}" in environs and REAL not in environs
    assert found == ""
    inspected = docker.from_env().api.inspect_container(container_name(device.id))
    assert REAL not in json.dumps(inspected)
    upstream.go_on.set()

    done = await engine.runs.wait(ROOT, run.id, 120)
    assert done.status is models.RunStatus.succeeded, done
    out = json.loads(done.output.splitlines()[-1])
    assert out["plain"] == "hello"
    assert out["rest"] == ["content_block_delta:one0", "content_block_delta:two1", "content_block_delta:three2",
                           "message_delta:", "message_stop:"]
    assert out["forged"] == [401, "unauthenticated"]
    # The whole environment the run saw: the placeholder and the gateway's address, never the key.
    assert f"ANTHROPIC_API_KEY={placeholder}" in out["env"]
    assert f"ANTHROPIC_BASE_URL={engine.gateway.address}/anthropic" in out["env"]
    assert REAL not in done.output and MASK not in done.output
    assert upstream.keys == [REAL, REAL]  # the forged request was never forwarded
    assert (done.model_requests, done.input_tokens, done.output_tokens) == (
        2, PLAIN_USAGE["input_tokens"] + STREAM_INPUT, PLAIN_USAGE["output_tokens"] + STREAM_OUTPUT)
    events = (await engine.runs.events(ROOT, run.id, rm.EventsQuery(limit=500))).data
    usage = [e.payload for e in events if e.type == "model_request"]
    assert usage == [{"provider": "anthropic", "status": 200, "input_tokens": 7, "output_tokens": 3},
                     {"provider": "anthropic", "status": 200, "input_tokens": STREAM_INPUT, "output_tokens": STREAM_OUTPUT}]
    assert REAL not in json.dumps([e.model_dump(mode="json") for e in events])

    # From inside a device nothing but the gateway answers (the host's other ports, the host on Docker's
    # bridge, the internet, another device), and the gateway refuses the finished run's placeholder.
    other = await engine.devices.create(ROOT, dm.DeviceCreate())
    docker.from_env().containers.get(container_name(other.id)).exec_run(
        ["python3", "-m", "http.server", "8000"], detach=True)
    net = docker.from_env().api.inspect_container(container_name(other.id))["NetworkSettings"]["Networks"]
    other_ip = next(iter(net.values()))["IPAddress"]
    gw_host = engine.gateway.address.removeprefix("http://").split(":")[0]
    with socket.create_server(("0.0.0.0", 0)) as host_port:
        port = host_port.getsockname()[1]
        targets = {"host_other_port": [gw_host, port], "docker_bridge_host": ["172.17.0.1", port],
                   "internet": ["1.1.1.1", 80], "other_device": [other_ip, 8000],
                   "gateway": [gw_host, engine.settings.gateway_port]}
        probe = await engine.runs.create(ROOT, rm.RunCreate(
            sandbox_id=device.id, prompt="p", timeout=120,
            command=f"python3 -c '{PROBE}' {engine.gateway.address}/anthropic {placeholder} '{json.dumps(targets)}'"))
        probed = await engine.runs.wait(ROOT, probe.id, 120)
    assert probed.status is models.RunStatus.succeeded, probed
    reach = json.loads(probed.output)
    assert reach.pop("gateway") == "open"
    assert reach.pop("finished_key") == [403, "permission_denied"]
    # Refused at once (a reset), not dropped: a CLI trying a host it cannot reach is not left waiting.
    assert set(reach.values()) == {"ConnectionRefusedError"}, reach
    # No name resolves there, and a lookup gives up after a second (not Docker's 5 s, twice).
    code, resolv = in_device(device.id, "cat", "/etc/resolv.conf")
    assert code == 0 and "timeout:1" in resolv and "attempts:1" in resolv, resolv
    assert in_device(other.id, "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000')")[0] == 0


async def test_a_run_without_the_credential_cannot_use_the_gateway_and_other_secrets_stay_plain_env(gw_engine, upstream):
    engine = gw_engine
    engine.secrets.set("OTHER_TOKEN", b"other-token-value")
    run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", secrets=["OTHER_TOKEN"], command=(
        'test "${#OTHER_TOKEN}" = 17 && test -z "${ANTHROPIC_API_KEY:-}${ANTHROPIC_BASE_URL:-}" && echo plain')))
    done = await engine.runs.wait(ROOT, run.id, 120)
    assert (done.status, done.output, done.model_requests) == (models.RunStatus.succeeded, "plain\n", 0), done
    assert upstream.keys == []


WAITS_THEN_ASKS = r"""
import json, os, time, urllib.request
print("waiting", flush=True)
while not os.path.exists("/tmp/go"):
    time.sleep(0.1)
req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=b"{}", method="POST",
                             headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"]})
print(json.load(urllib.request.urlopen(req, timeout=60))["content"][0]["text"])
"""


@pytest.fixture
def gw_daemon(settings, upstream, monkeypatch) -> Iterator[Daemon]:
    env = {**os.environ, "AGENTDOCK_HOME": str(settings.home), "AGENTDOCK_IMAGE": FULL,
           "AGENTDOCK_GATEWAY_UPSTREAMS": f"anthropic={upstream.url}"}
    for k in ("AGENTDOCK_HOME", "AGENTDOCK_IMAGE", "AGENTDOCK_GATEWAY_UPSTREAMS"):
        monkeypatch.setenv(k, env[k])
    d = Daemon(Settings(home=settings.home), env)
    SecretStore(settings.secrets_dir).set("ANTHROPIC_API_KEY", REAL.encode())
    d.start()
    yield d
    daemon_mod.stop(d.settings)


async def test_a_run_resumed_after_a_kill_9_of_the_daemon_still_reaches_its_provider(gw_daemon, upstream):
    async with DaemonClient(gw_daemon.settings) as client:
        run = await client.call(areas.runs.CREATE, rm.RunCreate(
            prompt="p", secrets=["ANTHROPIC_API_KEY"], command=f"python3 -c '{WAITS_THEN_ASKS}'", timeout=120))
        await wait_for_event(client, run.id, "output")
    pid = gw_daemon.pid()
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(10):
        while gw_daemon.pid() is not None:
            await anyio.sleep(0.05)
    gw_daemon.start()
    [container] = [c for c in owned_containers(gw_daemon.settings.home) if c.labels.get("agentdock.run_id") == run.id]
    assert container.exec_run(["touch", "/tmp/go"], user="0").exit_code == 0

    done = await settled(gw_daemon, run.id)
    assert (done.status, done.output, done.model_requests) == ("succeeded", "waiting\nhello\n", 1), done
    assert upstream.keys == [REAL]
    assert gw_daemon.logged_errors() == []


async def test_without_a_firewall_devices_get_no_network_and_a_run_given_a_providers_key_is_refused(home, monkeypatch):
    # No iptables (the gateway cannot keep the host's other ports out); what the devices' disks need stays.
    tools = home / "bin"
    tools.mkdir()
    for name in ("mkfs.ext4", "mount", "umount"):
        (tools / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", str(tools))
    settings = Settings(home=home, image=FULL)
    async with docker_engine(settings).running() as engine:
        engine.secrets.set("ANTHROPIC_API_KEY", REAL.encode())
        assert engine.gateway.address is None
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        assert docker.from_env().api.inspect_container(container_name(device.id))["HostConfig"]["NetworkMode"] == "none"
        with pytest.raises(GatewayUnavailable) as refused:
            await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="env",
                                                            secrets=["ANTHROPIC_API_KEY"]))
        assert refused.value.evidence == {"secrets": ["ANTHROPIC_API_KEY"]}
        await engine.devices.delete(ROOT, device.id)
    assert [n for n in docker.from_env().networks.list() if n.name == egress_names(str(home))[0]] == []
