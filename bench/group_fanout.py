"""Group fan-out: N short runs, each in a fresh ephemeral sandbox, at concurrency 10 and 25, through
agentdock (one group, one async dispatch, through the daemon) against a raw docker-py thread pool doing
the same work (`containers.run(..., remove=True)` of the same command on the same image), in one run.
Prints figures; never pass/fail.

- wall time of each side against the ideal (ceil(N / c) times one raw run's median latency, measured
  here first), and agentdock's ratio to raw (aim: within 1.15x);
- event delivery latency while agentdock fans out: a reader long-polls the group's events through the
  daemon's HTTP API; for each page it is woken with, now minus the `created_at` of the newest event
  (event written to reader woken), p50 and p99 (aim: p99 under 50 ms).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import anyio
import docker

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sizing  # noqa: E402
from engine.groups import models as gm  # noqa: E402
from engine.settings import Settings  # noqa: E402
from mcp_server import areas, daemon  # noqa: E402
from mcp_server.client import DaemonClient  # noqa: E402

QUICK = sizing.quick()
IMAGE = os.environ.get("AGENTDOCK_BENCH_IMAGE", "agentdock-small:latest")
N = int(os.environ.get("AGENTDOCK_BENCH_N_GROUP", 3 if QUICK else 200))
CONCURRENCY = [int(c) for c in os.environ.get("AGENTDOCK_BENCH_CONCURRENCY", "2" if QUICK else "10,25").split(",")]
N_SINGLE = 2 if QUICK else 10
"""Raw runs one at a time, for the median that sets the ideal."""
N_QUIET = 2 if QUICK else 20
"""Children of the group run one at a time with the host mostly idle."""
COMMAND = "echo hi"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def raw_run(client: docker.DockerClient) -> None:
    out = client.containers.run(IMAGE, ["sh", "-c", COMMAND], remove=True, init=True, network_mode="none",
                                cap_drop=["ALL"])
    assert out == b"hi\n", out


def raw_fanout(client: docker.DockerClient, c: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:
        for f in [pool.submit(raw_run, client) for _ in range(N)]:
            f.result()
    return time.perf_counter() - t


async def agentdock_fanout(api: DaemonClient, c: int, n: int = N,
                           ) -> tuple[float, list[float], list[float], int, dict[str, float]]:
    """Wall time from dispatch to the group's end; wake latencies, per-event latencies; peak concurrency;
    where each child's time went (medians, ms)."""
    group = await api.call(areas.groups.CREATE, gm.GroupCreate(name=f"bench-{c}", concurrency_limit=c, expected_runs=n))
    req = areas.groups.DispatchInput.model_validate({"group_id": group.id, "async": True, "runs": [{"prompt": "bench", "command": COMMAND}] * n})
    woken: list[float] = []
    every: list[float] = []

    async def reader() -> None:
        after = 0
        while True:
            page = await api.call(areas.groups.EVENTS, areas.groups.EventsInput(group_id=group.id, after_sequence=after, wait_seconds=30, limit=1000))
            now = datetime.now(UTC)
            if page.data:
                woken.append((now - max(e.created_at for e in page.data)).total_seconds() * 1000)
                every.extend((now - e.created_at).total_seconds() * 1000 for e in page.data)
            elif not page.is_active:
                return
            after = page.next_after_sequence

    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await api.call(areas.groups.DISPATCH, req)
        final = await api.call(areas.groups.GET, group_id=group.id, wait_seconds=50)
        while final.is_active:
            final = await api.call(areas.groups.GET, group_id=group.id, wait_seconds=50)
        wall = time.perf_counter() - t
    assert final.status == "succeeded" and final.entry_counts.succeeded == n, final.status_message
    runs = [await api.call(areas.runs.GET, run_id=r.run_id) for r in (await api.call(areas.groups.RUNS, areas.groups.RunsInput(group_id=group.id, limit=1000))).data]
    spans = [(r.started_at, r.finished_at) for r in runs]
    peak = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)  # type: ignore[operator]
    phases = {  # created (claimed) -> started (admitted) -> result recorded -> end published (sandbox removed)
        "claimed to started": statistics.median((r.started_at - r.created_at).total_seconds() for r in runs),
        "started to result": statistics.median((r.finished_at - r.started_at).total_seconds() for r in runs),
        "result to end published": statistics.median((r.updated_at - r.finished_at).total_seconds() for r in runs),
    }
    return wall, woken, every, peak, {k: v * 1000 for k, v in phases.items()}


async def main() -> None:
    client = docker.from_env()
    home = Path(tempfile.mkdtemp(prefix="adg-", dir="/tmp"))
    os.environ.update(AGENTDOCK_HOME=str(home), AGENTDOCK_IMAGE=IMAGE, AGENTDOCK_MAX_ACTIVE_RUNS="64")
    settings = Settings(home=home, image=IMAGE)
    daemon.start(settings)
    results = []
    try:
        raw_run(client)  # warm up
        single = []
        for _ in range(N_SINGLE):
            t = time.perf_counter()
            raw_run(client)
            single.append(time.perf_counter() - t)
        one = statistics.median(single)
        async with DaemonClient(settings, timeout=900) as api:
            for c in CONCURRENCY:
                raw = await anyio.to_thread.run_sync(raw_fanout, client, c)
                ad, woken, every, peak, phases = await agentdock_fanout(api, c)
                results.append((c, raw, ad, woken, every, peak, phases))
            _, quiet, _, _, _ = await agentdock_fanout(api, 1, N_QUIET)  # the same path with the host mostly idle
    finally:
        daemon.stop(settings)
        shutil.rmtree(home, ignore_errors=True)

    print(f"group fan-out: {N} runs, each in a fresh sandbox ({COMMAND!r}), image {IMAGE}, {os.cpu_count()} cores")
    print(f"one raw containers.run(remove=True): median {one * 1000:.0f} ms")
    for c, raw, ad, woken, every, peak, phases in results:
        ideal = math.ceil(N / c) * one
        print(f"concurrency {c}:")
        print(f"  ideal (ceil(N/c) x one run)          {ideal:6.1f} s")
        print(f"  raw docker-py thread pool            {raw:6.1f} s   ({raw / ideal:.2f}x ideal)")
        print(f"  agentdock group (dispatch to end)    {ad:6.1f} s   ({ad / ideal:.2f}x ideal, {ad / raw:.2f}x raw;"
              f" aim within 1.15x)   peak concurrency {peak}")
        print(f"  event delivery, written to reader woken: p50 {statistics.median(woken):.1f} ms  "
              f"p99 {pct(woken, 99):.1f} ms  (n={len(woken)} wakes; aim p99 < 50 ms)")
        print(f"  every event, written to read:          p50 {statistics.median(every):.1f} ms  "
              f"p99 {pct(every, 99):.1f} ms  (n={len(every)})")
        print("  a child's time, medians: " + ", ".join(f"{k} {v:.0f} ms" for k, v in phases.items()))
    print(f"event delivery with one child at a time (host mostly idle): p50 {statistics.median(quiet):.1f} ms  "
          f"p99 {pct(quiet, 99):.1f} ms  (n={len(quiet)} wakes)")


if __name__ == "__main__":
    anyio.run(main)
