"""Run latency: agentdock against raw Docker, measured in the same run. Prints figures; never pass/fail.

- a trivial run in an existing sandbox through the daemon's API (create + wait for the end)
  against a raw docker-py `exec_run` in a running container;
- a run in a fresh ephemeral sandbox through the daemon against a raw
  `containers.run(..., remove=True)`;
- a run without a target through a second daemon with a warm pool (AGENTDOCK_POOL_SIZE): it claims a
  container started ahead; each timed run starts with the pool full (waited for, untimed), and runs
  that found no ready container are counted apart.
Both sides use the same image (agentdock-small by default; AGENTDOCK_BENCH_IMAGE to change).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import docker

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sizing  # noqa: E402
from engine.devices import models as dm
from engine.runs import models as rm
from engine.settings import Settings  # noqa: E402
from mcp_server import areas, daemon  # noqa: E402
from mcp_server.client import DaemonClient  # noqa: E402

QUICK = sizing.quick()
IMAGE = os.environ.get("AGENTDOCK_BENCH_IMAGE", "agentdock-small:latest")
N_EXEC = int(os.environ.get("AGENTDOCK_BENCH_N_EXEC", 2 if QUICK else 40))
N_EPHEMERAL = int(os.environ.get("AGENTDOCK_BENCH_N_EPHEMERAL", 1 if QUICK else 15))
N_WARM = int(os.environ.get("AGENTDOCK_BENCH_N_WARM", 2 if QUICK else 30))
POOL = 2


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def timed_sync(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def timed_async(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def row(name: str, xs: list[float]) -> str:
    return f"  {name:<44} p50 {statistics.median(xs):7.1f} ms   p95 {pct(xs, 95):7.1f} ms   (n={len(xs)})"


def pool_full(client: docker.DockerClient, home: Path) -> None:
    """Until the warm daemon's pool holds POOL running containers and nothing else (a used one removed),
    then a moment for its last one to be recorded ready and the machine to settle. Untimed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = client.api.containers(all=True, filters={"label": f"agentdock.home={home}"})
        if len(found) == POOL and all("agentdock.pool" in c["Labels"] and c["State"] == "running" for c in found):
            time.sleep(0.3)
            return
        time.sleep(0.02)
    raise TimeoutError(f"the pool of {home} did not fill in 60 s")


async def created_and_ended(api: DaemonClient, **fields: object) -> rm.Run:
    """One request, as a client that waits on the server does: the create with `?wait=`, answered at the end."""
    payload = await api.request("POST", "/api/v1/agent-runs", json=fields, params={"wait": 30}, timeout=60)
    return rm.Run.model_validate(payload["data"])


async def main() -> None:
    client = docker.from_env()
    home = Path(tempfile.mkdtemp(prefix="adb-", dir="/tmp"))
    warm_home = Path(tempfile.mkdtemp(prefix="adw-", dir="/tmp"))
    os.environ["AGENTDOCK_HOME"] = str(home)
    os.environ["AGENTDOCK_IMAGE"] = IMAGE
    os.environ["AGENTDOCK_POOL_SIZE"] = "0"  # the cold path: each ephemeral run makes its container
    settings = Settings(home=home, image=IMAGE, pool_size=0)
    daemon.start(settings)
    os.environ["AGENTDOCK_POOL_SIZE"] = str(POOL)
    warm_settings = Settings(home=warm_home, image=IMAGE, pool_size=POOL)
    daemon.start(warm_settings)
    raw = client.containers.run(IMAGE, ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
                                detach=True, init=True, network_mode="none", cap_drop=["ALL"])
    try:
        async with DaemonClient(settings) as api:
            sandbox = await api.call(areas.devices.CREATE, dm.DeviceCreate(image=IMAGE))

            def raw_exec() -> None:
                assert raw.exec_run(["sh", "-c", "echo hi"]).exit_code == 0

            async def ad_exec() -> None:
                run = await created_and_ended(api, target_id=sandbox.id, prompt="bench", command="echo hi")
                assert run.status == "succeeded", run

            def raw_run() -> None:
                out = client.containers.run(IMAGE, ["sh", "-c", "echo hi"], remove=True, init=True,
                                            network_mode="none", cap_drop=["ALL"])
                assert out == b"hi\n"

            async def ad_ephemeral() -> None:
                run = await created_and_ended(api, prompt="bench", command="echo hi")
                assert run.status == "succeeded", run

            async with DaemonClient(warm_settings) as warm_api:
                misses = 0

                async def ad_warm(n: int) -> list[float]:
                    nonlocal misses
                    out = []
                    for _ in range(n):
                        await anyio.to_thread.run_sync(pool_full, client, warm_home)
                        t = time.perf_counter()
                        run = await created_and_ended(warm_api, prompt="bench", command="echo hi")
                        elapsed = (time.perf_counter() - t) * 1000
                        assert run.status == "succeeded", run
                        events = (await warm_api.call(areas.runs.EVENTS, run_id=run.id)).data
                        if next(e for e in events if e.type == "run_started").payload.get("pooled"):
                            out.append(elapsed)
                        else:
                            misses += 1
                    return out

                # Interleave the sides so drift on a shared machine hits both alike.
                r_exec, a_exec, r_run, a_run, w_run, w_raw = [], [], [], [], [], []
                await ad_warm(1)  # warm up
                misses = 0
                for _ in range(2):
                    r_exec += timed_sync(raw_exec, N_EXEC // 2)
                    a_exec += await timed_async(ad_exec, N_EXEC // 2)
                    r_run += timed_sync(raw_run, N_EPHEMERAL // 2 + 1)
                    a_run += await timed_async(ad_ephemeral, N_EPHEMERAL // 2 + 1)
                    for _ in range(N_WARM // 2):  # one raw run, one warm run: side by side, on the same quiet machine
                        await anyio.to_thread.run_sync(pool_full, client, warm_home)
                        t = time.perf_counter()
                        raw_run()
                        w_raw.append((time.perf_counter() - t) * 1000)
                        w_run += await ad_warm(1)
            await api.call(areas.devices.DELETE, sandbox_id=sandbox.id)
    finally:
        raw.remove(force=True)
        daemon.stop(settings)
        daemon.stop(warm_settings)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(warm_home, ignore_errors=True)

    print(f"run latency, image {IMAGE}, {os.cpu_count()} cores")
    print("existing sandbox:")
    print(row("raw docker-py exec_run", r_exec))
    print(row("agentdock run (API create + wait)", a_exec))
    print(f"  ratio p50 {statistics.median(a_exec) / statistics.median(r_exec):.2f}x   "
          f"p95 {pct(a_exec, 95) / pct(r_exec, 95):.2f}x   (aim: within 1.5x)")
    print("ephemeral sandbox:")
    print(row("raw containers.run(remove=True)", r_run))
    print(row("agentdock ephemeral run (API create + wait)", a_run))
    print(f"  ratio p50 {statistics.median(a_run) / statistics.median(r_run):.2f}x   "
          f"p95 {pct(a_run, 95) / pct(r_run, 95):.2f}x   (aim: within 1.2x)")
    print(f"ephemeral run with a warm pool (pool size {POOL}; raw and warm runs alternate):")
    print(row("raw containers.run(remove=True)", w_raw))
    if w_run:
        print(row("agentdock run claiming a pooled sandbox", w_run))
        print(f"  ratio p50 {statistics.median(w_run) / statistics.median(w_raw):.2f}x   "
              f"p95 {pct(w_run, 95) / pct(w_raw, 95):.2f}x   (aim: p50 under 100 ms)")
    else:
        print("  agentdock run claiming a pooled sandbox: none found one ready")
    print(f"  runs that found no ready sandbox (not in the figures): {misses}")


if __name__ == "__main__":
    anyio.run(main)
