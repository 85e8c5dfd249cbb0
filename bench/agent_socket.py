"""Agent socket round trips: `GET /api/agent/me` over agent.sock from inside a sandbox (a spawned
session, its bearer token checked on every request) against the same request over control.sock
from the host (the root session), measured in one run with the same client code: Python's
standard library on one kept-alive connection. Prints figures; never pass/fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sizing  # noqa: E402
from engine.devices import models as dm
from engine.sessions import models as sessions
from engine.settings import Settings  # noqa: E402
from mcp_server import areas, daemon  # noqa: E402
from mcp_server.client import DaemonClient  # noqa: E402

QUICK = sizing.quick()
IMAGE = os.environ.get("AGENTDOCK_BENCH_IMAGE", "agentdock-full:latest")  # needs python3
N = int(os.environ.get("AGENTDOCK_BENCH_N", 5 if QUICK else 500))

TIMER = r"""
import http.client, json, os, socket, sys, time
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); self.sock.connect(os.environ["SOCK"])
conn, token, n = C("agentdock"), os.environ.get("AGENTDOCK_TOKEN"), int(sys.argv[1])
headers = {"Authorization": "Bearer " + token} if token else {}
out = []
for i in range(n + 20):
    t = time.perf_counter()
    conn.request("GET", "/api/agent/me", headers=headers)
    resp = conn.getresponse(); body = resp.read()
    assert resp.status == 200, body
    if i >= 20: out.append((time.perf_counter() - t) * 1000)
print(json.dumps(out))
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ad-bench-", dir="/tmp") as tmp:
        settings = Settings(home=Path(tmp), image=IMAGE)
        os.environ["AGENTDOCK_HOME"] = tmp
        daemon.start(settings)
        try:
            host = subprocess.run([sys.executable, "-c", TIMER, str(N)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "SOCK": str(settings.control_socket)})
            from_host = json.loads(host.stdout)
            async with DaemonClient(settings, token="") as client:
                device = await client.call(areas.devices.CREATE, dm.DeviceCreate(image=IMAGE))
                spawned = await client.call(areas.agent.SPAWN, sessions.SpawnRequest(
                    agent_name="bench", permissions={"tools": ["agent"]}, prompt="bench", target_id=device.id,
                    command=f"SOCK=$AGENTDOCK_SOCKET python3 -c '{TIMER}' {N}", timeout=600))
                assert spawned.run is not None
                run = await areas.runs.until_ended(client, spawned.run.id)
                await client.call(areas.devices.DELETE, sandbox_id=device.id)
            if run.status != "succeeded":
                raise SystemExit(f"the in-sandbox timer failed: {run.failure_kind} {run.stderr[-500:]}")
            from_sandbox = json.loads(run.output)
        finally:
            daemon.stop(settings)

    print(f"agent socket round trips: GET /api/agent/me, {N} requests each on one kept-alive connection")
    for name, xs in (("control.sock from the host (root session)", from_host),
                     ("agent.sock from inside a sandbox (session token)", from_sandbox)):
        print(f"  {name:<50} p50 {pct(xs, 50):6.2f} ms   p99 {pct(xs, 99):6.2f} ms")
    print(f"  ratio agent.sock / control.sock: p50 {pct(from_sandbox, 50) / pct(from_host, 50):.2f}x   "
          f"p99 {pct(from_sandbox, 99) / pct(from_host, 99):.2f}x")


if __name__ == "__main__":
    anyio.run(main)
