"""The dashboard (issue 20): server-rendered pages on the TCP listener for the person at the screen.

Every page is whole HTML that reads without JavaScript (filters are GET forms, so a page's URL is the
link to share). htmx and its SSE extension (vendored in `static/`, no CDN, no build step) keep the live
parts current from the engine's own event streams: a group's entries, a run's output, each resuming
after the last event it saw (`Last-Event-ID`). The pages act as the local user, whom the listener's
token stands for; the browser holds that token in an HttpOnly, SameSite=Strict cookie set by
`/ui/login`. Approving or denying a pending approval is a form POST on the overview.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import anyio
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from engine import errors, models
from engine.app import Engine
from engine.approvals import models as am
from engine.callers import ROOT
from engine.groups import models as gm
from engine.runs import models as rm
from engine.tasks import models as tm
from mcp_server import http, sse

log = logging.getLogger("agentdock.dashboard")

COOKIE = "agentdock_token"
"""The cookie that carries the listener's token for a browser (HttpOnly, SameSite=Strict)."""
PUBLIC = ("/ui/login", "/static/")
"""Paths served without the token: the login form and the vendored files."""
STATIC = {"htmx.min.js": "text/javascript", "sse.min.js": "text/javascript", "dashboard.css": "text/css"}
FORM_MAX_BYTES = 8_192
"""The largest form body (a login, an approval's reason)."""
ENTRIES_SHOWN = 500
"""Entries a group's page lists (its counts cover them all)."""
LIVE_EVERY = 0.2
"""At most this often a group's live table is sent again (a burst of events is one update)."""
STATUS_FILTERS = [s.value for s in gm.GroupStatus]
SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}

templates = Environment(loader=PackageLoader("mcp_server.dashboard"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = max(0.0, (datetime.now(UTC) - value).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


templates.filters["when"] = _when
templates.filters["ago"] = _ago


def page(name: str, http_status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=http_status)


def fragment(name: str, **values: Any) -> str:
    return templates.get_template(name).render(**values)


def routes(engine: Engine) -> list[Route]:
    """The dashboard's routes, to be served behind the listener's gate (`mcp_server.network.Gate`)."""

    def guarded(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except errors.EngineError as exc:
                return page("error.html", exc.http_status, diagnostic=exc.diagnostic())
            except ValidationError as exc:
                bad = errors.InvalidInput(".".join(str(p) for p in exc.errors()[0]["loc"]) or "query",
                                          exc.errors()[0]["msg"])
                return page("error.html", 400, diagnostic=bad.diagnostic())
            except Exception as exc:  # a page shows a diagnostic, never a traceback
                diagnostic = errors.internal(exc)
                log.error("dashboard: unexpected error (diagnostic %s)", diagnostic.id, exc_info=exc)
                return page("error.html", 500, diagnostic=diagnostic)
        return handler

    # ------------------------------------------------------------ overview

    async def overview(request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        workspace = q.get("workspace") or None
        since = q.get("since") or None
        if status is not None and status not in STATUS_FILTERS:
            raise errors.InvalidInput("status", f"one of {', '.join(STATUS_FILTERS)}")
        if since is not None and since not in SINCE:
            raise errors.InvalidInput("since", f"one of {', '.join(SINCE)}")
        groups = (await engine.groups.list(ROOT, gm.GroupListQuery(
            status=status, workspace_id=workspace, limit=200))).data
        if since is not None:
            cut = datetime.now(UTC) - SINCE[since]
            groups = [g for g in groups if g.created_at >= cut]
        pending = (await engine.approvals.list(ROOT, am.ApprovalListQuery(status=am.ApprovalStatus.pending))).data
        return page("overview.html", health=await health(engine), groups=groups, approvals=pending,
                    filters={"status": status or "", "workspace": workspace or "", "since": since or ""},
                    statuses=STATUS_FILTERS, sinces=list(SINCE), decided=q.get("decided"))

    # ------------------------------------------------------------ a group

    async def group(request: Request) -> Response:
        group_id = request.path_params["group_id"]
        status = request.query_params.get("status") or None
        values = await group_values(engine, group_id, status)
        return page("group.html", **values, live=f"/ui/groups/{group_id}/live"
                    + (f"?{urlencode({'status': status})}" if status else ""))

    async def group_live(request: Request) -> Response:
        group_id = request.path_params["group_id"]
        status = request.query_params.get("status") or None
        await engine.groups.get(ROOT, group_id)  # a diagnostic for an unknown id, before the stream starts
        after = sse.resume_from(request, 0)
        return EventSourceResponse(_group_updates(engine, group_id, status, after), ping=15)

    # ------------------------------------------------------------ a run

    async def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record = await engine.runs.get(ROOT, run_id)
        # the output as its events carried it, so the live stream goes on exactly after the last one shown
        pieces, after, ended = [], 0, False
        while True:
            got = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after_sequence=after, limit=1000))
            pieces += [("out" if ev.type == "output" else "err", ev.payload["text"]) for ev in got.data
                       if ev.type in ("output", "stderr") and ev.payload.get("text")]
            after, ended = got.next_after_sequence, got.run_status.value in TERMINAL
            if not got.data:
                break
        if ended:  # the record has the last word: its output as folded (a runtime's answer), its stderr
            record = await engine.runs.get(ROOT, run_id)
            pieces = [(css, text) for css, text in (("out", record.output), ("err", record.stderr)) if text]
        return page("run.html", run=record, pieces=pieces, ended=ended, live=f"/ui/runs/{run_id}/live", after=after)

    async def run_live(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await engine.runs.get(ROOT, run_id)
        given = request.query_params.get("after", "0")
        if not given.isdigit() or len(given) > 16 or int(given) > models.MAX_SEQUENCE:
            raise errors.InvalidInput("after", "an event sequence number (digits) of this run's stream")
        after = sse.resume_from(request, int(given))
        return EventSourceResponse(_run_updates(engine, run_id, after), ping=15)

    # ------------------------------------------------------------ sessions

    async def sessions(request: Request) -> Response:
        workspace = request.query_params.get("workspace") or None
        everyone = (await engine.sessions.list(ROOT)).data
        if workspace:
            everyone = [s for s in everyone if s.workspace_id == workspace]
        tasks = (await engine.tasks.list(ROOT, tm.TaskListQuery(limit=500))).data
        children: dict[str | None, list[Any]] = {}
        for s in sorted(everyone, key=lambda s: s.created_at or datetime.min.replace(tzinfo=UTC)):
            parent = s.lineage.parent_session_id
            children.setdefault(parent if any(p.id == parent for p in everyone) else None, []).append(s)
        details = {}
        for s in everyone:
            runs = [r.record() for r in await engine.store.runs.list(rm.RunListQuery(limit=10), created_by=s.id,
                                                                     budget=0)][:10]
            details[s.id] = {
                "runs": runs,
                "tasks": [t for t in tasks if t.owner.ref == s.id],
                "channels": [c.record() for c in await engine.store.channels.list(s.id, 50)],
            }
        return page("sessions.html", roots=children.get(None, []), children=children, details=details,
                    workspace=workspace or "")

    # ------------------------------------------------------------ approvals

    async def decide(request: Request) -> Response:
        approval_id = request.path_params["approval_id"]
        outcome = request.path_params["outcome"]
        form = await _form(request)
        reason = str(form.get("reason") or "").strip() or None
        decision = am.Decision(reason=reason)
        if outcome == "approve":
            await engine.approvals.approve(ROOT, approval_id, decision)
        elif outcome == "deny":
            await engine.approvals.deny(ROOT, approval_id, decision)
        else:
            raise errors.NotFound("route", request.url.path)
        return RedirectResponse(f"/ui?{urlencode({'decided': f'{approval_id} {outcome}'})}", status_code=303)

    # ------------------------------------------------------------ login and files

    async def login(request: Request) -> Response:
        nxt = _local_path(request.query_params.get("next", "/ui"))
        if request.method == "GET":
            return page("login.html", next=nxt, refused=False)
        form = await _form(request)
        nxt = _local_path(str(form.get("next") or "/ui"))
        given = str(form.get("token") or "").strip()
        if not request.app.state.token_ok(given):
            return page("login.html", next=nxt, refused=True)  # the form again, saying so
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise errors.NotFound("file", name)
        body = resources.files("mcp_server.dashboard").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"cache-control": "max-age=3600"})

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui", status_code=303)

    return [
        Route("/", guarded(home)),
        Route("/ui", guarded(overview)),
        Route("/ui/groups/{group_id}", guarded(group)),
        Route("/ui/groups/{group_id}/live", guarded(group_live)),
        Route("/ui/runs/{run_id}", guarded(run)),
        Route("/ui/runs/{run_id}/live", guarded(run_live)),
        Route("/ui/sessions", guarded(sessions)),
        Route("/ui/approvals/{approval_id}/{outcome}", guarded(decide), methods=["POST"]),
        Route("/ui/login", guarded(login), methods=["GET", "POST"]),
        Route("/static/{name}", guarded(static)),
    ]


TERMINAL = {"succeeded", "failed", "canceled"}


def app(engine: Engine) -> Starlette:
    """The dashboard as an app of its own (an unknown page or method is a page with the diagnostic)."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return page("error.html", 404, diagnostic=errors.NotFound("page", request.url.path[:200]).diagnostic())

    async def not_allowed(request: Request, exc: Exception) -> Response:
        bad = errors.InvalidInput("method", f"{request.method} is not allowed on {request.url.path[:200]}")
        return page("error.html", 405, diagnostic=bad.diagnostic())

    return Starlette(routes=routes(engine), exception_handlers={404: not_found, 405: not_allowed})


async def _form(request: Request) -> Any:
    """A form's fields, its body refused past FORM_MAX_BYTES before it is buffered (the login form is
    served to anyone who reaches the listener)."""
    length = request.headers.get("content-length")
    if length is not None and (len(length) > 18 or int(length) > FORM_MAX_BYTES):
        raise errors.InvalidInput("body", f"a form is at most {FORM_MAX_BYTES} bytes")
    try:
        return await Request(request.scope, http.limited(request.receive, FORM_MAX_BYTES)).form()
    except errors.EngineError:
        raise errors.InvalidInput("body", f"a form is at most {FORM_MAX_BYTES} bytes") from None


def _local_path(path: str) -> str:
    """Where to go after the login: a path of this site only (no `//host` or scheme)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/ui"


async def health(engine: Engine) -> dict[str, Any]:
    """The daemon at a glance: what runs, what waits, its devices and the daemons sharing its store."""
    queued = await engine.runs.list(ROOT, rm.RunListQuery(status=models.RunStatus.queued, limit=200))
    running = await engine.runs.list(ROOT, rm.RunListQuery(status=models.RunStatus.running, limit=200))
    devices = (await engine.devices.list(ROOT)).data
    daemons = [d for d in await engine.store.daemons.list() if d.lost_at is None]
    return {"pid": os.getpid(), "supervised": engine.runs.active, "running": len(running.data),
            "queued": len(queued.data), "queued_more": queued.next_cursor is not None,
            "devices": len(devices), "daemons": len(daemons), "cap": engine.settings.max_active_runs,
            "leader": engine.leadership.held, "now": datetime.now(UTC)}


async def group_values(engine: Engine, group_id: str, status: str | None) -> dict[str, Any]:
    record = await engine.groups.get(ROOT, group_id)
    if status is not None and status not in {s.value for s in gm.EntryStatus}:
        raise errors.InvalidInput("status", f"one of {', '.join(s.value for s in gm.EntryStatus)}")
    entries = (await engine.groups.group_runs(ROOT, group_id, gm.GroupRunsQuery(
        status=status, limit=ENTRIES_SHOWN))).data
    counts = record.entry_counts
    done = counts.succeeded + counts.failed + counts.canceled
    total = max(counts.total, record.expected_runs or 0)
    return {"group": record, "entries": entries, "status": status or "", "done": done, "total": total,
            "percent": int(100 * done / total) if total else 0,
            "statuses": [s.value for s in gm.EntryStatus]}


async def _group_updates(engine: Engine, group_id: str, status: str | None,
                         after: int) -> AsyncIterator[ServerSentEvent]:
    """The group's header and entries, rendered again after new events of its stream (at most every
    LIVE_EVERY seconds), with the last event's sequence as the SSE id; `done` once it has ended and
    every event was seen (a browser that reconnects then gets `done` at once, and stops)."""
    while True:
        got = await engine.groups.events(ROOT, group_id, gm.GroupEventsQuery(after_sequence=after, limit=1000,
                                                                              wait_seconds=sse.POLL_SECONDS))
        if got.data:
            after = got.data[-1].sequence
            values = await group_values(engine, group_id, status)
            yield ServerSentEvent(fragment("group_live.html", **values, sequence=after), event="group", id=str(after))
            await anyio.sleep(LIVE_EVERY)
        elif not got.is_active:
            yield ServerSentEvent("", event="done", id=str(after))
            return


async def _run_updates(engine: Engine, run_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    """A run's output as it is committed (escaped text to append), its status, then `done`."""
    while True:
        got = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after_sequence=after, limit=1000,
                                                                     wait_seconds=sse.POLL_SECONDS))
        for ev in got.data:
            after = ev.sequence
            if ev.type in ("output", "stderr") and ev.payload.get("text"):
                css = "out" if ev.type == "output" else "err"
                yield ServerSentEvent(f'<span class="{css}" data-seq="{ev.sequence}">{html.escape(ev.payload["text"])}'
                                      "</span>", event="output", id=str(ev.sequence))
        if got.data:
            yield ServerSentEvent(f'<span class="status {got.run_status.value}">{got.run_status.value}</span>',
                                  event="status", id=str(after))
        if got.run_status.value in TERMINAL and not got.data:
            yield ServerSentEvent("", event="done", id=str(after))
            return


