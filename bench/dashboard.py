"""Event-to-screen latency on the dashboard: from a commit to the page showing it. Prints; never pass/fail.

An engine in this process (the shipped fake backend) serves the TCP listener's app (uvicorn on a free
loopback port); headless Chromium (Debian's, through Playwright) shows a running run's page. Events are
committed to the run's stream one at a time, 50 ms apart (an output line each, straight through the
store, as the run's supervisor commits them); each commit's time is taken once it has committed, and
the page records when each line's element appears (a MutationObserver; both clocks are this machine's).
Next to it, in the same run: the same stream read by a plain SSE client (httpx-sse) on the same
endpoint, which is the wire without the browser.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

# Run as a file (`python bench/X.py`, as `make bench` does), this folder is first on sys.path; the
# repository root goes before it, so `bench.*` and this checkout's packages are found.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from bench import sizing  # noqa: E402
from engine import models  # noqa: E402
from engine.app import Engine  # noqa: E402
from engine.callers import ROOT  # noqa: E402
from engine.runs import models as rm  # noqa: E402
from engine.settings import Settings  # noqa: E402
from mcp_server import dashboard, network  # noqa: E402
from runtimes import harness  # noqa: E402
from runtimes.fake import FakeBackend  # noqa: E402

QUICK = sizing.quick()
EVENTS = 10 if QUICK else 200
SPACING = 0.05

OBSERVER = """() => {
  window.__seen = [];
  new MutationObserver(records => {
    const now = Date.now();
    for (const r of records) for (const n of r.addedNodes)
      if (n.dataset && n.dataset.seq) window.__seen.push([Number(n.dataset.seq), now]);
  }).observe(document.querySelector('#output'), {childList: true});
}"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def commit_lines(engine: Engine, run_id: str, prefix: str) -> dict[int, float]:
    """EVENTS output events committed to the run's stream, SPACING apart: sequence -> commit time."""
    committed: dict[int, float] = {}
    for i in range(EVENTS):
        async with engine.store.write(engine.clock.now()) as tx:
            (seq,) = await tx.append_events(run_id, [("output", "", {"text": f"{prefix} {i}\n"})])
        committed[seq] = time.time()
        await anyio.sleep(SPACING)
    return committed


async def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("(Debian's chromium is not installed: scripts/setup.sh installs it)")
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adbd-") as tmp:
        settings = Settings(home=Path(tmp), image="fake:latest", listen=f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        async with Engine(settings, backend=FakeBackend(), harnesses=harness.get).running() as engine, \
                network.listener_app(engine, settings) as app, anyio.create_task_group() as tg:
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                   lifespan="off"))
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.01)
            run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
            while (await engine.runs.get(ROOT, run.id)).status is not models.RunStatus.running:
                await anyio.sleep(0.01)
            token = network.token(settings)

            # the wire: a plain SSE client on the same endpoint
            wire: dict[int, float] = {}
            async with httpx.AsyncClient(base_url=url, cookies={dashboard.COOKIE: token}, timeout=None) as client:
                last = (await engine.runs.events(ROOT, run.id, rm.EventsQuery(limit=1000))).next_after_sequence

                async def read() -> None:
                    async with aconnect_sse(client, "GET", f"/ui/runs/{run.id}/live?after={last}") as source:
                        async for sse in source.aiter_sse():
                            if sse.event == "output":
                                wire[int(sse.id)] = time.time()
                                if len(wire) == EVENTS:
                                    return

                async with anyio.create_task_group() as reading:
                    reading.start_soon(read)
                    await anyio.sleep(0.5)
                    wire_commits = await commit_lines(engine, run.id, "wire")
            wire_ms = [(wire[s] - t) * 1e3 for s, t in wire_commits.items()]

            # the screen: headless Chromium on the run's page
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                context = await browser.new_context()
                await context.add_cookies([{"name": dashboard.COOKIE, "value": token, "url": url}])
                page = await context.new_page()
                await page.goto(f"{url}/ui/runs/{run.id}")
                await page.evaluate(OBSERVER)
                await anyio.sleep(1.0)  # its event source open
                screen_commits = await commit_lines(engine, run.id, "screen")
                with anyio.fail_after(30):
                    while len(await page.evaluate("window.__seen")) < EVENTS:
                        await anyio.sleep(0.1)
                seen = {seq: at / 1e3 for seq, at in await page.evaluate("window.__seen")}
                await browser.close()
            screen_ms = [(seen[s] - t) * 1e3 for s, t in screen_commits.items()]
            await engine.runs.cancel(ROOT, run.id)
            server.should_exit = True

    print(f"{EVENTS} events committed {SPACING * 1e3:.0f} ms apart to a running run's stream:")
    print(f"  commit to the page showing it (headless Chromium, htmx SSE): p50 {pct(screen_ms, 0.5):.1f} ms "
          f"p99 {pct(screen_ms, 0.99):.1f} ms")
    print(f"  commit to a plain SSE client holding it (the wire):          p50 {pct(wire_ms, 0.5):.1f} ms "
          f"p99 {pct(wire_ms, 0.99):.1f} ms")


if __name__ == "__main__":
    anyio.run(main)
