"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real
daemon's TCP listener: a group's entries advance on the page while it runs, a run's output appears as
it is written, the spawn tree nests children under their parents, a pending approval is approved with
its button; every page reads without JavaScript, and no page logs a console error. Screenshots go to
test-artifacts/dashboard/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
import httpx
import pytest
from playwright.async_api import Page, async_playwright

from mcp_server import dashboard
from tests.conftest import Listening
from tests.e2e.test_agent_socket import agent, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
LIVE = 60_000
"""Milliseconds a page is given to show what a commit changed."""


@asynccontextmanager
async def browser_page(listening: Listening, *, signed_in: bool = True) -> AsyncIterator[Page]:
    """A fresh Chromium page (the dashboard's cookie set unless told not to); once the test is over, no
    console error and no uncaught exception may have been seen on it."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (scripts/setup.sh installs it)"
    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            if signed_in:
                await context.add_cookies([{"name": dashboard.COOKIE, "value": listening.token,
                                            "url": listening.url, "httpOnly": True, "sameSite": "Strict"}])
            page = await context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            yield page
        finally:
            await browser.close()
    assert problems == []


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api(listening: Listening) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=listening.url, headers=listening.auth, timeout=90)


async def test_a_groups_entries_advance_on_the_page_while_it_runs(listening: Listening) -> None:
    async with api(listening) as root:
        group = (await root.post("/api/v1/agent-run-groups", json={"name": "live", "concurrency_limit": 1,
                                                                  "expected_runs": 3})).json()["data"]
        async with browser_page(listening) as page:
            await page.goto(f"{listening.url}/ui/groups/{group['id']}")
            await page.wait_for_selector("#group[sse-connect]")
            assert await page.text_content(".done") == "0"
            await shot(page, "group-before")
            loaded = await page.evaluate("performance.timeOrigin")
            dispatched = await root.post(f"/api/v1/agent-run-groups/{group['id']}/dispatch", json={
                "async": True, "runs": [{"prompt": "p", "command": f"sleep 1; echo entry {i}"} for i in range(3)]})
            assert dispatched.status_code in (200, 201, 202), dispatched.text
            await page.wait_for_function("document.querySelector('.done').textContent === '1'", timeout=LIVE)
            await shot(page, "group-advancing")
            await page.wait_for_function("document.querySelector('.done').textContent === '3'", timeout=LIVE)
            assert await page.evaluate("performance.timeOrigin") == loaded  # the same page, not a reload
            statuses = await page.eval_on_selector_all(".entry", "rows => rows.map(r => r.dataset.status)")
            assert statuses == ["succeeded"] * 3
            await page.wait_for_selector("h1 .status.succeeded", timeout=LIVE)
            await shot(page, "group-done")
            # its entries link to their runs, and the overview lists it with its progress
            await page.click(".entry a")
            await page.wait_for_selector("#output")
            assert "entry" in (await page.text_content("#output") or "")
            await page.goto(f"{listening.url}/ui?status=succeeded")
            assert "3/3" in (await page.text_content("table.groups") or "")


async def test_a_runs_output_appears_on_the_page_as_it_is_written(listening: Listening) -> None:
    async with api(listening) as root:
        run = (await root.post("/api/v1/agent-runs", json={
            "prompt": "p", "command": "for i in 1 2 3 4; do echo \"<i>line $i</i>\"; sleep 1; done"})).json()["data"]
        async with browser_page(listening) as page:
            await page.goto(f"{listening.url}/ui/runs/{run['id']}")
            loaded = await page.evaluate("performance.timeOrigin")
            await page.wait_for_function("document.querySelector('#output').textContent.includes('line 1')",
                                         timeout=LIVE)
            await shot(page, "run-while-running")
            await page.wait_for_selector("#status .status.succeeded", timeout=LIVE)
            text = await page.text_content("#output")
            assert text == "".join(f"<i>line {i}</i>\n" for i in range(1, 5))  # once each, in order, as text
            assert await page.evaluate("performance.timeOrigin") == loaded
            await shot(page, "run-done")
        for junk in ("abc", "-1", "9" * 17):
            got = await root.get(f"/ui/runs/{run['id']}/live", params={"after": junk})
            assert got.status_code == 400 and 'class="diagnostic"' in got.text, junk


async def test_the_spawn_tree_nests_children_under_their_parents(listening: Listening) -> None:
    async with api(listening) as root:
        lead = (await root.post("/api/agent/spawn", json={"agent_name": "lead"})).json()["spawn"]
        async with agent(listening.daemon, lead["token"]) as as_lead:
            worker = await spawn(as_lead, agent_name="worker")
        task = (await root.post("/api/v1/tasks", json={"title": "review PR 42"})).json()["data"]
    async with browser_page(listening) as page:
        await page.goto(f"{listening.url}/ui/sessions")
        nested = f"li#ses_root li#{lead['session']['id']} li#{worker['session']['id']}"
        assert await page.locator(nested).count() == 1
        assert "review PR 42" in (await page.text_content("li#ses_root > .owned") or "")
        assert task["status"] == "queued"
        await shot(page, "sessions-tree")


async def test_a_pending_approval_is_approved_from_the_page(listening: Listening) -> None:
    async with api(listening) as root:
        profile = (await root.post("/api/v1/agent-runtime-profiles", json={
            "name": "careful", "runtime": "custom", "policy": {"approval": "confirm-risky"}})).json()["data"]
        child = (await root.post("/api/agent/spawn", json={
            "agent_name": "careful", "agent_runtime_profile_id": profile["id"],
            "permissions": {"tools": ["groups"], "sandbox_profiles": ["*"]}})).json()["spawn"]
        async with agent(listening.daemon, child["token"]) as as_child:
            group = (await as_child.post("/api/v1/agent-run-groups", json={"name": "g"})).json()["data"]
            refused = await as_child.post(f"/api/v1/agent-run-groups/{group['id']}/cancel")
            assert refused.status_code == 403, refused.text
            approval = refused.json()["diagnostic"]["evidence"]["approval_id"]
            async with browser_page(listening) as page:
                await page.goto(f"{listening.url}/ui")
                row = page.locator(f"tr#{approval}")
                assert "cancel" in (await row.text_content() or "")
                await shot(page, "approval-pending")
                await row.locator("form[action$='/approve'] input[name=reason]").fill("looks fine")
                await row.locator("button.approve").click()
                await page.wait_for_selector(".note")
                assert await page.locator(f"tr#{approval}").count() == 0
                await shot(page, "approval-decided")
            decided = (await root.get(f"/api/v1/approvals/{approval}")).json()["data"]
            assert (decided["status"], decided["reason"]) == ("approved", "looks fine")
            again = await as_child.post(f"/api/v1/agent-run-groups/{group['id']}/cancel")
            assert again.status_code == 200, again.text


async def test_the_login_form_sets_the_cookie_and_pages_read_without_javascript(listening: Listening) -> None:
    async with browser_page(listening, signed_in=False) as page:
        await page.goto(f"{listening.url}/ui/sessions?workspace=default")
        assert page.url.startswith(f"{listening.url}/ui/login")
        await page.fill("input[name=token]", "not the token")
        await page.click("button[type=submit]")
        assert await page.locator(".refused").count() == 1
        await page.fill("input[name=token]", listening.token)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{listening.url}/ui/sessions?workspace=default")
        assert await page.locator("li#ses_root").count() == 1
    # no JavaScript at all: every page is whole HTML (what a screen reader or curl gets)
    async with httpx.AsyncClient(base_url=listening.url, cookies={dashboard.COOKIE: listening.token}) as plain:
        for path, shows in (("/ui", "daemon health"), ("/ui/sessions", 'id="ses_root"'),
                            ("/ui?status=failed&since=24h", "No group matches")):
            got = await plain.get(path)
            assert got.status_code == 200 and shows in got.text, (path, got.status_code)
        for path, status in (("/ui/groups/grp_nope", 400), ("/ui/runs/run_0123456789abcdef0123", 404),
                             ("/ui?status=junk", 400), ("/ui?since=forever", 400)):
            got = await plain.get(path)
            assert got.status_code == status and 'class="diagnostic"' in got.text, (path, got.status_code)
        forged = await plain.post("/ui/approvals/apr_0123456789abcdef0123/approve",
                                  headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
