"""Task queue throughput: claim+complete pairs a second with 1, 4 and 16 concurrent workers (each a
spawned session) on the embedded store (engine in-process, the shipped fake backend, real SQLite),
next to SQLite's own commit rate measured in the same run. Tasks are queued beforehand; each worker
claims the next one and completes it until the queue is empty. Prints; never pass/fail.

Aim (issue 9): at least 2,000 pairs a second.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this `queue.py` would shadow the
# standard library's `queue` (aiosqlite imports it): the repository root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

from bench.engine_throughput import sqlite_commit_rate  # noqa: E402
from engine import task_models as tm  # noqa: E402
from engine.app import Engine  # noqa: E402
from engine.callers import ROOT  # noqa: E402
from engine.lineage import SpawnBudget  # noqa: E402
from engine.sessions import SpawnRequest  # noqa: E402
from engine.settings import Settings  # noqa: E402
from runtimes import harness  # noqa: E402
from runtimes.fake import FakeBackend  # noqa: E402

N_TASKS = int(os.environ.get("AGENTDOCK_BENCH_TASKS", "3000"))
WORKERS = [int(w) for w in os.environ.get("AGENTDOCK_BENCH_WORKERS", "1,4,16").split(",")]


async def pairs_per_second(workers: int, home: Path) -> dict[str, float]:
    settings = Settings(home=home, image="fake:latest")
    async with Engine(settings, backend=FakeBackend(), harnesses=harness.get).running() as engine:
        engine.sessions.root_budget = SpawnBudget(max_children=max(WORKERS))
        callers = []
        for _ in range(workers):
            spawned = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="worker"))
            callers.append(await engine.sessions.authenticate(spawned.token))
        for i in range(N_TASKS):
            await engine.tasks.create(ROOT, tm.TaskCreate(title=f"t{i}", priority=i % 3))
        commits_before = engine.store.commits
        done = 0

        async def work(caller) -> None:  # type: ignore[no-untyped-def]
            nonlocal done
            while True:
                claim = (await engine.tasks.claim_next(caller, tm.ClaimNext())).claim
                if claim is None:
                    return
                await engine.tasks.complete(caller, tm.Complete(run_id=claim.run.id, claim_token=claim.claim_token))
                done += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for caller in callers:
                tg.start_soon(work, caller)
        elapsed = time.perf_counter() - start
        commits = engine.store.commits - commits_before
        left = await engine.store.tasks(None, "queued", 10)
    assert done == N_TASKS and not left
    return {"pairs_per_s": done / elapsed, "commits_per_s": commits / elapsed}


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="adbq-") as tmp:
        ceiling = sqlite_commit_rate(Path(tmp) / "ceiling.db")
        print(f"SQLite commit rate (WAL, synchronous=NORMAL, this run): {ceiling:,.0f} commits/s")
        print(f"{N_TASKS} tasks per round; each pair is two write transactions (claim, complete)")
        for n in WORKERS:
            got = await pairs_per_second(n, Path(tmp) / f"w{n}")
            print(f"{n:>3} workers: {got['pairs_per_s']:,.0f} claim+complete pairs/s "
                  f"({got['commits_per_s']:,.0f} commits/s, {got['commits_per_s'] / ceiling:.0%} of SQLite's)")


if __name__ == "__main__":
    anyio.run(main)
