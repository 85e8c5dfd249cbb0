"""Task queue throughput and channel wake-up latency (engine in-process, the shipped fake backend) on
both stores side by side: the home's SQLite file and PostgreSQL (a throwaway cluster). Prints; never
pass/fail.

- claim+complete pairs a second with 1, 4 and 16 concurrent workers (each a spawned session), next to
  the store's own commit rate measured in the same run. Tasks are queued beforehand; each worker claims
  the next one and completes it until the queue is empty. On PostgreSQL also with the 16 workers split
  over three engines in this process, and over one and over three daemon processes sharing the database
  (the scaling from one daemon to three), next to raw PostgreSQL: the same pairs straight through
  psycopg with nothing an engine adds (the ratio).
- channel wake-up: 1 and 8 sessions wait in `channel_recv(wait=true)`; the time from the start of a
  `channel_send` to each waiting receiver holding the message (the send's commit wakes them through
  the topic notifier), next to a bare anyio.Event set-to-wake measured the same way.

Aim (issue 9): at least 2,000 pairs a second; wake-up p99 under 20 ms. Aim (issue 19): 5,000 pairs a
second on PostgreSQL with 16 workers across three daemons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio  # noqa: E402

from bench import sizing  # noqa: E402
from bench.stores import BenchStore, stores  # noqa: E402
from engine.channels import models as cm  # noqa: E402
from engine.tasks import models as tm  # noqa: E402
from engine.app import Engine  # noqa: E402
from engine.callers import ROOT, Caller  # noqa: E402
from engine.lineage import SpawnBudget  # noqa: E402
from engine.sessions.models import SpawnRequest  # noqa: E402
from engine.settings import Settings  # noqa: E402
from runtimes import harness  # noqa: E402
from runtimes.fake import FakeBackend  # noqa: E402

QUICK = sizing.quick()
N_TASKS = int(os.environ.get("AGENTDOCK_BENCH_TASKS", 20 if QUICK else 3000))
WORKERS = [int(w) for w in os.environ.get("AGENTDOCK_BENCH_WORKERS", "1,2" if QUICK else "1,4,16").split(",")]
ROUNDS = int(os.environ.get("AGENTDOCK_BENCH_ROUNDS", 5 if QUICK else 300))
RECEIVERS = [1, 2] if QUICK else [1, 8]


@asynccontextmanager
async def engine_with_sessions(home: Path, n: int, **store: Any) -> AsyncIterator[tuple[Engine, list[Caller]]]:
    """A running engine (fake backend, the store `store` names: SQLite by default) and `n` sessions spawned
    by the local user."""
    settings = Settings(home=home, image="fake:latest", **store)
    async with Engine(settings, backend=FakeBackend(), harnesses=harness.get).running() as engine:
        engine.sessions.root_budget = SpawnBudget(max_children=64)  # the engines sharing a database count together
        callers = []
        for _ in range(n):
            spawned = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="worker"))
            callers.append(await engine.sessions.authenticate(spawned.token))
        yield engine, callers


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wakeup_latency(receivers: int, home: Path) -> list[float]:
    """Seconds from a send's start to each waiting receiver holding the message, over ROUNDS sends."""
    async with engine_with_sessions(home, receivers) as (engine, callers):
        channel = cm.channel_id(cm.family_name(ROOT.session_id))
        seen: list[float] = []
        sent_at = 0.0
        ready = [anyio.Event() for _ in callers]
        """Set by each receiver as it calls recv again: only then is the next send timed."""

        async def listen(i: int, caller: Caller) -> None:
            while True:
                ready[i].set()
                got = await engine.channels.recv(caller, cm.Recv(channel_id=channel, wait=True, wait_seconds=30))
                now = time.perf_counter()
                seen.extend(now - sent_at for m in got.messages if m.body != "stop")
                if any(m.body == "stop" for m in got.messages):
                    return

        async def all_waiting() -> None:
            for i, event in enumerate(ready):
                await event.wait()
                ready[i] = anyio.Event()
            await anyio.wait_all_tasks_blocked()  # in recv's wait, woken only by the send

        async with anyio.create_task_group() as tg:
            for i, caller in enumerate(callers):
                tg.start_soon(listen, i, caller)
            for i in range(ROUNDS):
                await all_waiting()
                sent_at = time.perf_counter()
                await engine.channels.send(ROOT, cm.Send(channel_id=channel, body=i))
            await all_waiting()
            await engine.channels.send(ROOT, cm.Send(channel_id=channel, body="stop"))
    assert len(seen) == ROUNDS * receivers, len(seen)
    return seen


async def bare_event_latency(receivers: int) -> list[float]:
    """The floor: an anyio.Event set, its waiters woken, measured as above."""
    seen: list[float] = []
    for _ in range(ROUNDS):
        event = anyio.Event()

        async def wait() -> None:
            await event.wait()
            seen.append(time.perf_counter() - start)

        async with anyio.create_task_group() as tg:
            for _ in range(receivers):
                tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            start = time.perf_counter()
            event.set()
    return seen


async def pairs_per_second(workers: int, home: Path, daemons: int = 1, **store: Any) -> dict[str, float]:
    """Claim+complete pairs a second: `workers` sessions, spread over `daemons` engines on one store."""
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(engine_with_sessions(
            home / f"d{d}", len(range(d, workers, daemons)), **store)) for d in range(daemons)]
        engine = engines[0][0]
        for i in range(N_TASKS):
            await engine.tasks.create(ROOT, tm.TaskCreate(title=f"t{i}", priority=i % 3))
        commits_before = sum(e.store.commits for e, _ in engines)
        done = 0

        async def work(on: Engine, caller) -> None:  # type: ignore[no-untyped-def]
            nonlocal done
            while True:
                claim = (await on.tasks.claim_next(caller, tm.ClaimNext())).claim
                if claim is None:
                    return
                await on.tasks.complete(caller, tm.Complete(task_run_id=claim.run.id, claim_token=claim.claim_token))
                done += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for on, callers in engines:
                for caller in callers:
                    tg.start_soon(work, on, caller)
        elapsed = time.perf_counter() - start
        commits = sum(e.store.commits for e, _ in engines) - commits_before
        left = await engine.store.tasks.list(None, "queued", 10)
    assert done == N_TASKS and not left
    return {"pairs_per_s": done / elapsed, "commits_per_s": commits / elapsed}


async def one_store(kind: BenchStore, tmp: Path) -> None:
    ceiling = kind.ceiling(tmp)
    print(f"{kind.name}: its own commit rate (one-row transactions, this run): {ceiling:,.0f} commits/s")
    rows = [(n, 1) for n in WORKERS] + ([(max(WORKERS), 3)] if kind.name == "PostgreSQL" else [])
    for n, daemons in rows:
        got = await pairs_per_second(n, tmp / f"{kind.name}-w{n}-d{daemons}", daemons, **kind.fresh())
        where = "" if daemons == 1 else f" over {daemons} engines"
        print(f"  {n:>3} workers{where}: {got['pairs_per_s']:,.0f} claim+complete pairs/s "
              f"({got['commits_per_s']:,.0f} commits/s, {got['commits_per_s'] / ceiling:.0%} of the store's own)")
    if kind.name != "PostgreSQL":
        return
    n = max(WORKERS)
    raw = await anyio.to_thread.run_sync(raw_pairs, kind.fresh()["database_url"], n)
    print(f"  raw PostgreSQL, {n} connections, the least a pair can be (a SKIP LOCKED claim, an update; no "
          f"lease, event or lock): {raw:,.0f} pairs/s")
    for daemons in (1, 3):
        got = await anyio.to_thread.run_sync(pairs_over_processes, kind.fresh()["database_url"], tmp, daemons, n)
        print(f"  {n:>3} workers over {daemons} daemon process{'es' if daemons > 1 else ''}: {got:,.0f} "
              f"claim+complete pairs/s ({got / raw:.0%} of raw)")


def raw_pairs(url: str, connections: int) -> float:
    """Claim+complete pairs a second straight through psycopg, with nothing an engine adds: the floor of
    what a pair costs on this machine's PostgreSQL."""
    import psycopg

    async def run() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
            await db.execute("CREATE TABLE rq (id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL, holder INT)")
            await db.execute("INSERT INTO rq (status) SELECT 'queued' FROM generate_series(1, %s)", (N_TASKS,))
        done = 0

        async def worker(i: int) -> None:
            nonlocal done
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
                while True:
                    row = await (await db.execute(
                        "UPDATE rq SET status = 'claimed', holder = %s WHERE id = (SELECT id FROM rq WHERE status = "
                        "'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id", (i,))).fetchone()
                    if row is None:
                        return
                    await db.execute("UPDATE rq SET status = 'done' WHERE id = %s AND holder = %s", (row[0], i))
                    done += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(connections):
                tg.start_soon(worker, i)
        return done / (time.perf_counter() - start)

    return anyio.run(run)


def pairs_over_processes(url: str, tmp: Path, daemons: int, workers: int) -> float:
    """Claim+complete pairs a second with `workers` sessions spread over `daemons` daemon processes (each
    this script in worker mode: an engine on the database at `url`), started together once all are ready."""
    anyio.run(seed_tasks, url, tmp / f"seed-{daemons}")
    procs = []
    for d in range(daemons):
        share = len(range(d, workers, daemons))
        env = {**os.environ, "AGENTDOCK_BENCH_DAEMON": json.dumps([url, str(tmp / f"p{daemons}-{d}"), share])}
        procs.append(subprocess.Popen([sys.executable, __file__], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.wait(timeout=60)
    assert sum(r["done"] for r in results) == N_TASKS
    return N_TASKS / (max(r["end"] for r in results) - min(r["start"] for r in results))


async def seed_tasks(url: str, home: Path) -> None:
    async with engine_with_sessions(home, 0, database_url=url) as (engine, _):
        for i in range(N_TASKS):
            await engine.tasks.create(ROOT, tm.TaskCreate(title=f"t{i}", priority=i % 3))


async def daemon_process(url: str, home: str, workers: int) -> None:
    """Worker mode: an engine with `workers` sessions says ready, waits for go, claims and completes until
    the queue is empty, and prints what it did and when (wall clock, comparable between processes)."""
    async with engine_with_sessions(Path(home), workers, database_url=url) as (engine, callers):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        done = 0

        async def work(caller: Caller) -> None:
            nonlocal done
            while (claim := (await engine.tasks.claim_next(caller, tm.ClaimNext())).claim) is not None:
                await engine.tasks.complete(caller, tm.Complete(task_run_id=claim.run.id,
                                                                claim_token=claim.claim_token))
                done += 1

        start = time.time()
        async with anyio.create_task_group() as tg:
            for caller in callers:
                tg.start_soon(work, caller)
        print(json.dumps({"done": done, "start": start, "end": time.time()}), flush=True)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="adbq-") as tmp, stores() as kinds:
        print(f"{N_TASKS} tasks per round; each pair is two write transactions (claim, complete)")
        for kind in kinds:
            await one_store(kind, Path(tmp))
        print(f"channel wake-up on SQLite, send start to receiver holding the message ({ROUNDS} sends):")
        for n in RECEIVERS:
            got = await wakeup_latency(n, Path(tmp) / f"r{n}")
            floor = await bare_event_latency(n)
            print(f"{n:>3} receivers: p50 {pct(got, 0.5) * 1e3:.2f} ms, p99 {pct(got, 0.99) * 1e3:.2f} ms "
                  f"(bare anyio.Event: p50 {pct(floor, 0.5) * 1e3:.3f} ms, p99 {pct(floor, 0.99) * 1e3:.3f} ms)")


if __name__ == "__main__":
    if "AGENTDOCK_BENCH_DAEMON" in os.environ:  # a daemon process of pairs_over_processes
        anyio.run(daemon_process, *json.loads(os.environ["AGENTDOCK_BENCH_DAEMON"]))
    else:
        anyio.run(main)
