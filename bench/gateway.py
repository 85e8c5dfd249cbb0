"""Model gateway overhead: time to first byte of a streamed Messages answer from a canned Anthropic
API, through the gateway (placeholder swapped for the key, answer metered) against straight to the
same server, measured from inside one run in a sandbox that may reach both, alternating, each on one
kept-alive connection (Python's standard library). Prints figures; never pass/fail.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import anyio
import docker

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sizing  # noqa: E402
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT  # noqa: E402
from engine.settings import Settings  # noqa: E402
from runtimes.egress_network import host_address  # noqa: E402
from runtimes.gateway import remove_egress  # noqa: E402
from runtimes.wiring import docker_engine  # noqa: E402
from tests.canned_upstream import CannedUpstream  # noqa: E402

QUICK = sizing.quick()
IMAGE = os.environ.get("AGENTDOCK_BENCH_IMAGE", "agentdock-full:latest")  # needs python3
N = int(os.environ.get("AGENTDOCK_BENCH_N", 5 if QUICK else 500))
WARMUP = 20

TIMER = r"""
import http.client, json, os, sys, time, urllib.parse
def conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port), u.path
paths = {"gateway": conn(os.environ["ANTHROPIC_BASE_URL"]), "direct": conn(sys.argv[2])}
body = json.dumps({"model": "m", "stream": True, "messages": []})
headers = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"}
out = {"gateway": [], "direct": []}
for i in range(int(sys.argv[1]) + 20):
    for name, (c, prefix) in paths.items():
        t = time.perf_counter()
        c.request("POST", prefix + "/v1/messages", body=body, headers=headers)
        resp = c.getresponse()
        resp.read(1)
        ttfb = (time.perf_counter() - t) * 1000
        resp.read()
        assert resp.status == 200, resp.status
        if i >= 20:
            out[name].append(ttfb)
print(json.dumps(out))
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main() -> None:
    bridge = host_address(docker.from_env().api.inspect_network("bridge"))
    with tempfile.TemporaryDirectory(prefix="ad-bench-", dir="/tmp") as tmp, CannedUpstream(bridge) as upstream:
        settings = Settings(home=Path(tmp), image=IMAGE, pool_size=0, gateway_upstreams=f"anthropic={upstream.url}")
        try:
            async with docker_engine(settings).running() as engine:
                engine.secrets.set("ANTHROPIC_API_KEY", b"sk-ant-bench-" + os.urandom(8).hex().encode())
                # `network`: the sandbox reaches the canned server straight, and the gateway through the host
                device = await engine.devices.create(ROOT, dm.DeviceCreate(network=True))
                run = await engine.runs.create(ROOT, rm.RunCreate(
                    sandbox_id=device.id, prompt="p", secrets=["ANTHROPIC_API_KEY"], timeout=600,
                    command=f"python3 -c '{TIMER}' {N} {upstream.url}"))
                done = await engine.runs.wait(ROOT, run.id, 600)
                await engine.devices.delete(ROOT, device.id)
        finally:
            remove_egress(str(settings.home))
    if done.status != "succeeded":
        raise SystemExit(f"the timing run {done.status}: {done.error}\n{done.stderr[-2000:]}")
    times = json.loads(done.output)
    g, d = times["gateway"], times["direct"]
    print(f"model gateway, time to first byte of a streamed answer, {N} requests each, from inside a sandbox")
    print(f"direct to the upstream   p50 {pct(d, 50):.2f} ms  p99 {pct(d, 99):.2f} ms")
    print(f"through the gateway      p50 {pct(g, 50):.2f} ms  p99 {pct(g, 99):.2f} ms")
    print(f"added latency            p50 {pct(g, 50) - pct(d, 50):.2f} ms  p99 {pct(g, 99) - pct(d, 99):.2f} ms")
    print(f"requests counted on the run: {done.model_requests} (expected {N + WARMUP})")


if __name__ == "__main__":
    anyio.run(main)
