"""The two stores a bench compares in one run: the home's SQLite file, and PostgreSQL in a throwaway
cluster (tests/pgcluster.py: initdb + pg_ctl on a unix socket, no fsync) when it is installed. Each gives
the settings overrides for a fresh, empty store, and the engine's raw ceiling on it (one-row
transactions a second from one connection) for the ratio."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg

from tests import pgcluster


@dataclass
class BenchStore:
    name: str
    fresh: Callable[[], dict[str, Any]]
    """Settings overrides for a new empty store (PostgreSQL: a new database; SQLite: the home's own file)."""
    ceiling: Callable[[Path], float]
    """One-row write transactions a second, straight through the driver."""


def sqlite_commit_rate(path: Path, n: int = 5000) -> float:
    from bench.engine_throughput import sqlite_commit_rate as rate

    return rate(path, n)


def postgres_commit_rate(url: str, n: int = 3000) -> float:
    """PostgreSQL's ceiling for the store's writes as the store makes them: BEGIN, one insert, COMMIT,
    from one connection over the unix socket."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS ceiling (id BIGSERIAL PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(n):
            db.execute("BEGIN")
            db.execute("INSERT INTO ceiling (v) VALUES (%s)", (f"row {i}",))
            db.execute("COMMIT")
        return n / (time.perf_counter() - start)


@contextmanager
def stores() -> Iterator[list[BenchStore]]:
    found = [BenchStore("SQLite", dict, lambda tmp: sqlite_commit_rate(tmp / f"ceiling-{secrets.token_hex(4)}.db"))]
    if pgcluster.bindir() is None:
        print("(PostgreSQL is not installed: SQLite only; scripts/setup.sh installs it)")
        yield found
        return
    root = Path(tempfile.mkdtemp(prefix="ad-pgb-", dir="/tmp"))
    cluster = pgcluster.Cluster(root).start()
    try:
        def fresh() -> dict[str, Any]:
            return {"database_url": cluster.create_database(f"b_{secrets.token_hex(6)}")}

        found.append(BenchStore("PostgreSQL", fresh, lambda tmp: postgres_commit_rate(fresh()["database_url"])))
        yield found
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
