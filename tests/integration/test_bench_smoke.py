"""`make bench` runs: each benchmark, started as the Makefile starts it (`python bench/X.py` from the
repository root), exits 0 at its tiny size (`--quick`) and prints its figures as numbers. What the
numbers are is never checked: a benchmark is not pass/fail on its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PY = str(ROOT / ".venv" / "bin" / "python")
NUM = r"(\d[\d,]*(?:\.\d+)?)"
FIGURES = {
    "bench/run_latency.py": [
        rf"raw docker-py exec_run +p50 +{NUM} ms +p95 +{NUM} ms",
        rf"agentdock run \(API create \+ wait\) +p50 +{NUM} ms +p95 +{NUM} ms",
        rf"agentdock ephemeral run \(API create \+ wait\) +p50 +{NUM} ms +p95 +{NUM} ms",
        rf"agentdock run claiming a pooled sandbox +p50 +{NUM} ms +p95 +{NUM} ms",
        rf"ratio p50 {NUM}x +p95 {NUM}x",
    ],
    "bench/engine_throughput.py": [
        rf"SQLite alone: {NUM} commits/s",
        rf"PostgreSQL alone: {NUM} commits/s",
        rf"cap +\d+ each, 3 engines: +{NUM} runs/s finished",
        rf"cap +\d+: +{NUM} runs/s finished +{NUM} events/s",
        rf"one run at a time with a slot free: p50 {NUM} ms +p99 {NUM} ms",
        rf"peak memory \(max RSS of this process\): {NUM} MiB",
    ],
    "bench/agent_socket.py": [
        rf"control\.sock from the host \(root session\) +p50 +{NUM} ms +p99 +{NUM} ms",
        rf"agent\.sock from inside a sandbox \(session token\) +p50 +{NUM} ms +p99 +{NUM} ms",
        rf"ratio agent\.sock / control\.sock: p50 {NUM}x +p99 {NUM}x",
    ],
    "bench/group_fanout.py": [
        rf"one raw containers\.run\(remove=True\): median {NUM} ms",
        rf"agentdock group \(dispatch to end\) +{NUM} s +\({NUM}x ideal, {NUM}x raw",
        rf"event delivery, written to reader woken: p50 {NUM} ms +p99 {NUM} ms",
        rf"event delivery with one child at a time \(host mostly idle\): p50 {NUM} ms +p99 {NUM} ms",
    ],
    "bench/task_queue.py": [
        rf"SQLite: its own commit rate \(one-row transactions, this run\): {NUM} commits/s",
        rf"PostgreSQL: its own commit rate \(one-row transactions, this run\): {NUM} commits/s",
        rf"workers: {NUM} claim\+complete pairs/s",
        rf"workers over 3 engines: {NUM} claim\+complete pairs/s",
        rf"raw PostgreSQL, {NUM} connections, .*: {NUM} pairs/s",
        rf"workers over 1 daemon process: {NUM} claim\+complete pairs/s \({NUM}% of raw\)",
        rf"workers over 3 daemon processes: {NUM} claim\+complete pairs/s \({NUM}% of raw\)",
        rf"receivers: p50 {NUM} ms, p99 {NUM} ms",
    ],
    "bench/dashboard.py": [
        rf"commit to the page showing it \(headless Chromium, htmx SSE\): p50 {NUM} ms p99 {NUM} ms",
        rf"commit to a plain SSE client holding it \(the wire\): +p50 {NUM} ms p99 {NUM} ms",
    ],
    "bench/gateway.py": [
        rf"direct to the upstream +p50 {NUM} ms +p99 {NUM} ms",
        rf"through the gateway +p50 {NUM} ms +p99 {NUM} ms",
        rf"added latency +p50 -?{NUM} ms +p99 -?{NUM} ms",
    ],
}
"""Per benchmark, lines it must print, each with its figures (a nan or inf is not a figure)."""


def make_bench() -> list[str]:
    """The scripts the Makefile's `bench` target runs, in order."""
    target = re.search(r"^bench:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert target, "no bench target in the Makefile"
    return re.findall(r"^\t\$\(PY\) (bench/\w+\.py) \$\(BENCH_FLAGS\)$", target.group(1), re.MULTILINE)


def test_make_bench_runs_every_benchmark_and_none_shadows_the_standard_library() -> None:
    scripts = {str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py")
               if 'if __name__ == "__main__":' in p.read_text()}
    assert sorted(make_bench()) == sorted(scripts) == sorted(FIGURES)
    # run as a file, bench/ is first on sys.path: a bench/queue.py once hid `queue` from aiosqlite
    assert not {p.stem for p in (ROOT / "bench").glob("*.py")} & sys.stdlib_module_names


@pytest.mark.docker
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_each_benchmark_runs_as_make_bench_runs_it_and_prints_its_figures(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDOCK_")}  # no size or home overrides
    done = subprocess.run([PY, script, "--quick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for pattern in FIGURES[script]:
        assert re.search(pattern, done.stdout), f"{script} printed no line matching {pattern!r}:\n{done.stdout}"
