"""A throwaway PostgreSQL cluster for tests and benches: initdb and pg_ctl from Debian's `postgresql`,
listening on a unix socket only (no TCP), without fsync (nothing in it needs to survive the machine).

    python -m tests.pgcluster start DIR   # prints the URL of a fresh database
    python -m tests.pgcluster stop DIR
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from glob import glob
from pathlib import Path

import psycopg


def bindir() -> Path | None:
    """Where the newest installed PostgreSQL's programs are (None when it is not installed)."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.bin = bindir()

    def _as_owner(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user."""
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> Cluster:
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        options = (f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB")
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                       "-o", options, "start")
        return self

    def stop(self) -> None:
        if self.bin is not None and (self.data / "postmaster.pid").exists():
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Homes:
    """A schema per home in one database, made on first use: what each home's own SQLite file is to the
    suite on SQLite (a test that reopens a home finds its state; two homes share nothing). Schemas, not
    databases: a CREATE DATABASE costs a quarter of a second, a schema nothing."""

    def __init__(self, cluster: Cluster, database: str = "homes") -> None:
        self.cluster = cluster
        self.base = cluster.url(database)
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                conn.execute(f'CREATE DATABASE "{database}"')
        self.made: dict[str, str] = {}

    def url(self, home: Path) -> str:
        name = "h_" + hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:24]
        if name not in self.made:
            with psycopg.connect(self.base, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
                conn.execute(f"CREATE SCHEMA {name}")
            self.made[name] = f"{self.base}&options=-csearch_path%3D{name}"
        return self.made[name]

    def drop_all(self) -> None:
        if self.made:
            with psycopg.connect(self.base, autocommit=True) as conn:
                for name in self.made:
                    conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.made.clear()


HOMES: Homes | None = None
"""Set while the suite runs on PostgreSQL (tests/conftest.py)."""


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = Cluster(Path(argv[1]).resolve())
    if argv[0] == "start":
        cluster.start()
        print(cluster.create_database("agentdock"))
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
