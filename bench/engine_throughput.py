"""Engine throughput: 1,000 runs created at once on the shipped fake backend, under daemon-wide caps of
10 and 100, on both stores side by side (the home's SQLite file; PostgreSQL in a throwaway cluster, also
with the runs spread over three engines sharing the database). Prints runs finished per second, event
appends per second, create-to-start latency p50/p99 and peak memory, next to the store's own commit
rate measured in the same run, so the ratio shows how much of its ceiling the engine uses. Never
pass/fail.

Aim (issue "Engine core"): at least 500 runs a second, create-to-start p99 under 50 ms when a slot
is free.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sizing  # noqa: E402
from bench.stores import stores  # noqa: E402
from engine import models, topics  # noqa: E402
from engine.runs import models as rm
from engine.app import Engine  # noqa: E402
from engine.callers import ROOT  # noqa: E402
from engine.settings import Settings  # noqa: E402
from runtimes import harness  # noqa: E402
from runtimes.fake import FakeBackend  # noqa: E402

QUICK = sizing.quick()
N_RUNS = int(os.environ.get("AGENTDOCK_BENCH_RUNS", 20 if QUICK else 1000))
CAPS = [int(c) for c in os.environ.get("AGENTDOCK_BENCH_CAPS", "4" if QUICK else "10,100").split(",")]
N_ONE_AT_A_TIME = int(os.environ.get("AGENTDOCK_BENCH_ONE_AT_A_TIME", 5 if QUICK else 100))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def sqlite_commit_rate(path: Path, n: int = 5000) -> float:
    """SQLite's own ceiling for the store's writes: small transactions a second on the store's
    pragmas (WAL, synchronous=NORMAL), on the calling thread as the store's writer does."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            db.execute("COMMIT")
        return n / (time.perf_counter() - start)
    finally:
        db.close()


async def burst(cap: int, home: Path, daemons: int = 1, **store: Any) -> dict[str, float]:
    """N_RUNS created at once through the first of `daemons` engines sharing one store, each under `cap`."""
    stalls: list[float] = []

    done = anyio.Event()

    async def loop_watch() -> None:
        """How late a 1 ms sleep wakes: the longest the event loop was held by one step."""
        while not done.is_set():
            t = time.perf_counter()
            await anyio.sleep(0.001)
            stalls.append((time.perf_counter() - t - 0.001) * 1000)

    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(Engine(
            Settings(home=home / f"d{d}", image="fake:latest", max_active_runs=cap, flush_interval_seconds=0.05,
                     **store), backend=FakeBackend(), harnesses=harness.get).running()) for d in range(daemons)]
        engine = engines[0]
        watch = await stack.enter_async_context(anyio.create_task_group())
        watch.start_soon(loop_watch)
        commits_before = sum(e.store.commits for e in engines)
        start = time.perf_counter()
        runs: list[rm.Run] = []

        async def create(i: int) -> None:
            runs.append(await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command=f"out=line{i} err=w")))

        async with anyio.create_task_group() as tg:  # all at once
            for i in range(N_RUNS):
                tg.start_soon(create, i)
        created = time.perf_counter()
        runs.sort(key=lambda r: r.created_at)
        last = runs[-1].id
        with anyio.fail_after(600):
            for run in runs:  # wait for each on its topic (no polling)
                await engine.runs.wait(ROOT, run.id, 600)
        finished = time.perf_counter()
        commits = sum(e.store.commits for e in engines) - commits_before
        done.set()
        rows = [await engine.store.runs.run(r.id) for r in runs]
        events = 0
        for r in runs:
            events += len(await engine.store.events(topics.run(r.id), 0, 10_000))
    assert all(r is not None and r.status is models.RunStatus.succeeded for r in rows), last
    waits = [(r.started_at - r.created_at).total_seconds() * 1000 for r in rows if r and r.started_at]
    # "when a slot is free": the first `cap` runs found a free slot when created
    free = waits[:cap]
    return {
        "runs_per_s": N_RUNS / (finished - start),
        "create_per_s": N_RUNS / (created - start),
        "events_per_s": events / (finished - start),
        "events": events,
        "commits_per_run": commits / N_RUNS,
        "stall_max": max(stalls), "stall_p99": pct(stalls, 99),
        "start_p50": pct(free, 50), "start_p99": pct(free, 99),
        "queued_p50": pct(waits, 50), "queued_p99": pct(waits, 99),
    }


async def free_slot_latency(home: Path, n: int = N_ONE_AT_A_TIME, **store: Any) -> list[float]:
    """Create-to-start of runs created one at a time while slots are free (ms, from the records)."""
    settings = Settings(home=home, image="fake:latest", max_active_runs=10, **store)
    async with Engine(settings, backend=FakeBackend(), harnesses=harness.get).running() as engine:
        out = []
        for _ in range(n):
            run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=x"))
            done = await engine.runs.wait(ROOT, run.id, 60)
            assert done.started_at is not None
            out.append((done.started_at - done.created_at).total_seconds() * 1000)
        return out


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ad-bench-") as tmp, stores() as kinds:
        print(f"engine throughput: {N_RUNS} runs created at once, fake backend")
        for kind in kinds:
            commits = kind.ceiling(Path(tmp))
            print(f"  {kind.name} alone: {commits:,.0f} commits/s (one-row transactions)")
            rows = [(cap, 1) for cap in CAPS] + ([(CAPS[-1], 3)] if kind.name == "PostgreSQL" else [])
            for cap, daemons in rows:
                r = await burst(cap, Path(tmp) / f"{kind.name}-cap{cap}-d{daemons}", daemons, **kind.fresh())
                where = "" if daemons == 1 else f" each, {daemons} engines"
                print(f"  cap {cap:>4}{where}: {r['runs_per_s']:7.0f} runs/s finished   {r['events_per_s']:7.0f} "
                      f"events/s ({r['events']} events)   creates {r['create_per_s']:6.0f}/s")
                print(f"             create-to-start in the burst: first {cap} p50 {r['start_p50']:6.1f} ms  p99 "
                      f"{r['start_p99']:6.1f} ms;  all p50 {r['queued_p50']:7.0f} ms  p99 {r['queued_p99']:7.0f} ms")
                print(f"             {r['commits_per_run']:.1f} write transactions per run; the engine commits "
                      f"{r['runs_per_s'] * r['commits_per_run']:,.0f}/s, "
                      f"{r['runs_per_s'] * r['commits_per_run'] / commits:.1%} of {kind.name}'s ceiling")
                print(f"             event loop held by one step: p99 {r['stall_p99']:.1f} ms, longest "
                      f"{r['stall_max']:.1f} ms")
            lat = await free_slot_latency(Path(tmp) / f"{kind.name}-free", **kind.fresh())
            print(f"  create-to-start, one run at a time with a slot free: p50 {pct(lat, 50):.1f} ms  "
                  f"p99 {pct(lat, 99):.1f} ms")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak memory (max RSS of this process): {peak:.0f} MiB")
        print("  aim: >= 500 runs/s; create-to-start p99 < 50 ms when a slot is free")


if __name__ == "__main__":
    anyio.run(main)
