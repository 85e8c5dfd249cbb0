"""Hostile input at every surface: each bad request gets a structured diagnostic that is not an internal error,
and creates no run, no sandbox and no container.

The first tests pin the cases found by hand (each failed before its fix); the last two throw generated junk at
every HTTP route and every MCP tool with hypothesis, many examples against one daemon each.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.approvals import models as am
from engine.channels import models as cm
from engine.groups import models as gm
from engine import ids, lineage, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.sessions import models as sessions
from engine.souls import models as souls
from engine.profiles import models as pm
from engine.tasks import models as tm
from mcp_server import areas, http as http_app
from mcp_server import mcp_app
from mcp_server.areas import groups as group_area
from tests.conftest import Daemon, owned_containers
from tests.e2e.test_http import RUNS, SANDBOXES, diagnostic, http
from tests.e2e.test_mcp import failing_call, session

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

UNKNOWN_RUN = "run_0000000000000000dead"
UNKNOWN_SANDBOX = "sbx_0000000000000000dead"
UNKNOWN_GROUP = "grp_0000000000000000dead"
UNKNOWN_CHANNEL = "chn_0000000000000000dead"
UNKNOWN_APPROVAL = "apr_0000000000000000dead"
APPROVALS = "/api/v1/approvals"
GROUPS = "/api/v1/agent-run-groups"
PROFILES = "/api/v1/agent-runtime-profiles"
JSON = {"content-type": "application/json"}
A_VALID_RUN = {"prompt": "p", "command": "echo hi"}
"""A run in a fresh ephemeral sandbox: what a poisoned body would create if its poison went unnoticed."""
SOUL = "/api/agent/soul"
A_VALID_AGENT_FILE = {"content": "---\nname: planted\ndescription: d\n---\nprompt\n"}
"""A Claude Code agent file: what a poisoned import would write as a soul if its poison went unnoticed."""


async def nothing_created(home: Path, client: httpx.AsyncClient) -> None:
    runs = await client.get(RUNS, params={"limit": 200})
    sandboxes = await client.get(SANDBOXES)
    groups = await client.get(GROUPS)
    assert runs.status_code == 200, runs.text
    assert sandboxes.status_code == 200, sandboxes.text
    assert groups.status_code == 200, groups.text
    assert runs.json()["data"] == []
    assert sandboxes.json()["data"] == []
    sessions_ = await client.get("/api/v1/sessions")
    assert [s["id"] for s in sessions_.json()["data"]] == ["ses_root"], sessions_.text
    assert groups.json()["data"] == []
    tasks = await client.get("/api/v1/tasks")
    assert tasks.status_code == 200 and tasks.json()["data"] == [], tasks.text
    channels = await client.get("/api/agent/channels")
    assert channels.status_code == 200 and channels.json()["channels"] == [], channels.text
    profiles = await client.get(PROFILES)
    assert profiles.status_code == 200 and profiles.json()["data"] == [], profiles.text
    approvals = await client.get(APPROVALS)
    assert approvals.status_code == 200 and approvals.json()["data"] == [], approvals.text
    history = await client.get("/api/v1/approval-events")
    assert history.status_code == 200 and history.json()["data"] == [], history.text
    assert owned_containers(home) == []
    souls_dir = home / "souls"
    assert not souls_dir.exists() or list(souls_dir.iterdir()) == []


async def finished_run(client: httpx.AsyncClient) -> str:
    resp = await client.post(RUNS, params={"wait": 30}, json={"prompt": "p", "command": "true"})
    assert resp.status_code == 201 and resp.json()["data"]["status"] == "succeeded", resp.text
    return resp.json()["data"]["id"]


def nested(depth: int) -> str:
    return '{"prompt": "p", "command": "echo hi", "metadata": {"x": ' + "[" * depth + "]" * depth + "}}"


def raw_exchange(daemon: Daemon, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send `request` as is on a fresh connection to the control socket; read one response with a JSON body
    (by its Content-Length: the daemon may keep the connection open for the rest of a body never sent)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.settings.control_socket))
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            received += _recv(sock)
        head, rest = received.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(rest) < int(headers["content-length"]):
            rest += _recv(sock)
    assert headers["content-type"].startswith("application/json"), headers
    return int(lines[0].split()[1]), json.loads(rest)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the daemon closed the connection before its response was complete"
    return chunk


# ---------------------------------------------------------------- ids steer nothing


async def test_a_run_id_shaped_like_a_path_cannot_steer_a_cancel_to_the_sandbox_route(daemon):
    with anyio.fail_after(30):
        async with session(daemon) as client:
            diag = await failing_call(client, "agent_run_cancel", {"run_id": "../sandboxes?"})
        cli = daemon.cli("runs", "cancel", "../sandboxes?", "--json", check=False)
        async with http(daemon) as c:
            await nothing_created(daemon.settings.home, c)

    assert (diag["code"], diag["evidence"]["field"]) == ("invalid_input", "run_id")
    assert "run_ then 20 lowercase hex digits" in diag["message"]
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    cli_diag = json.loads(cli.stdout)["diagnostic"]
    assert (cli_diag["code"], cli_diag["evidence"]["field"]) == ("invalid_input", "run_id")


MCP_CASES = [
    # (case, tool, arguments, field the diagnostic must name)
    ("empty run id", "agent_run_get", {"run_id": ""}, "run_id"),
    ("NUL run id", "agent_run_get", {"run_id": "run_\x00"}, "run_id"),
    ("1 MB run id", "agent_run_events", {"run_id": "r" * 1_000_000}, "run_id"),
    ("run id with a query", "agent_run_artifacts", {"run_id": f"{UNKNOWN_RUN}?path=x"}, "run_id"),
    ("sandbox id climbing out", "sandbox_delete", {"sandbox_id": "../agent-runs"}, "sandbox_id"),
    ("sandbox id with a fragment", "sandbox_get", {"sandbox_id": f"{UNKNOWN_SANDBOX}#"}, "sandbox_id"),
    ("uppercase id", "agent_run_get", {"run_id": UNKNOWN_RUN.upper()}, "run_id"),
    ("id with a trailing newline", "agent_run_get", {"run_id": UNKNOWN_RUN + "\n"}, "run_id"),
    ("cursor that is a path", "agent_run_list", {"cursor": "../sandboxes"}, "cursor"),
    ("target that is not a device id", "agent_run_list", {"target_id": "%2e%2e"}, "target_id"),
    ("run target that is a run id", "agent_run", {**A_VALID_RUN, "target_id": UNKNOWN_RUN}, "target_id"),
    ("sandbox_id that is a computer id", "agent_run", {**A_VALID_RUN, "sandbox_id": "cmp_0000000000000000dead"},
     "sandbox_id"),
    ("empty sandbox_id", "agent_run", {**A_VALID_RUN, "sandbox_id": ""}, "sandbox_id"),
    ("after past SQLite's integers", "agent_run_events", {"run_id": UNKNOWN_RUN, "after": 2**63}, "after"),
    ("wait of NaN", "agent_run_events", {"run_id": UNKNOWN_RUN, "wait": math.nan}, "wait"),
    ("wait of 1e308", "agent_run_events", {"run_id": UNKNOWN_RUN, "wait": 1e308}, "wait"),
    ("1 MB artifact path", "agent_run_artifacts", {"run_id": UNKNOWN_RUN, "path": "p" * 1_000_000}, "path"),
    ("agent name climbing out", "soul_get", {"agent_name": "../agentdock"}, "agent_name"),
    ("agent name that is a path", "soul_validate", {"agent_name": "/etc/passwd"}, "agent_name"),
    ("agent name with NUL", "soul_get", {"agent_name": "a\x00"}, "agent_name"),
    ("1 MB agent name", "soul_get", {"agent_name": "a" * 1_000_000}, "agent_name"),
    ("soul content past the accepted bound", "soul_validate", {"content": "x" * (souls.MAX_SOURCE_BYTES + 1)},
     "content"),
    ("soul content that is not text", "soul_validate", {"content": ["---"]}, "content"),
    ("a snapshot id the tool does not take", "soul_get", {"snapshot_id": "snap_0000000000000000dead"}, "snapshot_id"),
]


async def test_malformed_ids_and_numbers_at_the_mcp_tools_are_invalid_input_naming_the_field(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            got = {case: await failing_call(client, tool, args) for case, tool, args, _ in MCP_CASES}
            unknown = await failing_call(client, "agent_run_get", {"run_id": UNKNOWN_RUN})
        async with http(daemon) as c:
            await nothing_created(daemon.settings.home, c)

    for case, _, _, name in MCP_CASES:
        assert (got[case]["code"], got[case]["evidence"].get("field")) == ("invalid_input", name), (case, got[case])
        assert len(got[case]["message"]) < 500, case  # a 1 MB id is not echoed back
    assert (unknown["code"], unknown["evidence"]["id"]) == ("not_found", UNKNOWN_RUN)


# ---------------------------------------------------------------- HTTP: what a request carries


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    field: str | None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: list[tuple[str, str]] = field(default_factory=list)


HTTP_CASES = [
    Case("empty run id", "GET", f"{RUNS}/", 400, "invalid_input", "run_id"),
    Case("empty run id before cancel", "POST", f"{RUNS}//cancel", 400, "invalid_input", "run_id"),
    Case("empty sandbox id", "DELETE", f"{SANDBOXES}/", 400, "invalid_input", "sandbox_id"),
    Case("NUL in a run id", "GET", f"{RUNS}/run_%00", 400, "invalid_input", "run_id"),
    Case("dot-dot run id", "GET", f"{RUNS}/%2e%2e/events", 400, "invalid_input", "run_id"),
    Case("invalid UTF-8", "POST", RUNS, 400, "invalid_input", "body", b'{"prompt": "\xff"}', JSON),
    Case("JSON nested 100000 deep", "POST", RUNS, 400, "invalid_input", "body", nested(100_000).encode(), JSON),
    Case("metadata nested 40 deep", "POST", RUNS, 400, "invalid_input", None, nested(40).encode(), JSON),
    Case("integer of 5000 digits", "POST", SANDBOXES, 400, "invalid_input", "body",
         b'{"memory_mb": ' + b"9" * 5000 + b"}", JSON),
    Case("NaN", "POST", RUNS, 400, "invalid_input", "body",
         b'{"prompt": "p", "command": "echo hi", "metadata": {"x": NaN}}', JSON),
    Case("-Infinity", "POST", SANDBOXES, 400, "invalid_input", "body", b'{"cpus": -Infinity}', JSON),
    Case("1e999", "POST", RUNS, 400, "invalid_input", "body",
         b'{"prompt": "p", "command": "echo hi", "metadata": {"x": 1e999}}', JSON),
    Case("lone surrogate in metadata", "POST", RUNS, 400, "invalid_input", "metadata.note",
         b'{"prompt": "p", "command": "echo hi", "metadata": {"note": "\\ud800"}}', JSON),
    Case("lone surrogate as a key", "POST", SANDBOXES, 400, "invalid_input", "metadata.\\udc00",
         b'{"metadata": {"\\udc00": 1}}', JSON),
    Case("a key twice", "POST", RUNS, 400, "invalid_input", "command",
         b'{"prompt": "p", "command": "echo hi", "command": "echo twice"}', JSON),
    Case("data that is not an object", "POST", SANDBOXES, 400, "invalid_input", "data", b'{"data": [1]}', JSON),
    Case("a query parameter twice", "GET", RUNS, 400, "invalid_input", "limit",
         params=[("limit", "1"), ("limit", "2")]),
    Case("a path parameter again in the query", "GET", f"{RUNS}/{UNKNOWN_RUN}", 400, "invalid_input", "run_id",
         params=[("run_id", UNKNOWN_RUN)]),
    Case("a query parameter a route does not take", "GET", SANDBOXES, 400, "invalid_input", "kind",
         params=[("kind", "computer")]),
    Case("a query string on a create", "POST", SANDBOXES, 400, "invalid_input", "/cancel", b"{}", JSON,
         params=[("/cancel", "")]),
    Case("wait of nan", "GET", f"{RUNS}/{UNKNOWN_RUN}/events", 400, "invalid_input", "wait",
         params=[("wait", "nan")]),
    Case("wait of inf on create", "POST", RUNS, 400, "invalid_input", "wait", json.dumps(A_VALID_RUN).encode(),
         JSON, [("wait", "inf")]),
    Case("after past SQLite's integers", "GET", RUNS + "/{run}/events", 400, "invalid_input", "after",
         params=[("after", str(2**63))]),
    Case("limit of 10**30", "GET", RUNS, 400, "invalid_input", "limit", params=[("limit", str(10**30))]),
    Case("an artifact path of 5000 characters", "GET", RUNS + "/{run}/artifacts/content", 400, "invalid_input",
         "path", params=[("path", "p" * 5000)]),
    Case("a text/plain body", "POST", RUNS, 415, "unsupported_media_type", "Content-Type",
         json.dumps(A_VALID_RUN).encode(), {"content-type": "text/plain"}),
    Case("a body without a Content-Type", "POST", SANDBOXES, 415, "unsupported_media_type", "Content-Type", b"{}"),
    Case("Idempotency-Key of 10 KB", "POST", RUNS, 400, "invalid_input", "idempotency_key",
         json.dumps(A_VALID_RUN).encode(), {**JSON, "idempotency-key": "k" * 10_000}),
    Case("an empty Idempotency-Key", "POST", RUNS, 400, "invalid_input", "idempotency_key",
         json.dumps(A_VALID_RUN).encode(), {**JSON, "idempotency-key": ""}),
    Case("a method override header", "POST", f"{SANDBOXES}/{UNKNOWN_SANDBOX}", 405, "method_not_allowed", "method",
         headers={"x-http-method-override": "DELETE"}),
    Case("a dot-dot agent name", "GET", SOUL, 400, "invalid_input", "agent_name", params=[("agent_name", "..")]),
    Case("an agent name with a slash", "GET", SOUL, 400, "invalid_input", "agent_name",
         params=[("agent_name", "a/b")]),
    Case("an agent name given twice", "GET", SOUL, 400, "invalid_input", "agent_name",
         params=[("agent_name", "a"), ("agent_name", "b")]),
    Case("an import naming a path", "POST", f"{SOUL}/import", 400, "invalid_input", "name",
         json.dumps({**A_VALID_AGENT_FILE, "name": "../../.bashrc"}).encode(), JSON),
    Case("an import with an unknown field", "POST", f"{SOUL}/import", 400, "invalid_input", "path",
         json.dumps({**A_VALID_AGENT_FILE, "path": "/tmp/x.md"}).encode(), JSON),
    Case("a soul to validate past the accepted bound", "POST", f"{SOUL}/validate", 400, "invalid_input", "content",
         json.dumps({"content": "x" * (souls.MAX_SOURCE_BYTES + 1)}).encode(), JSON),
    Case("a soul with a lone surrogate", "POST", f"{SOUL}/validate", 400, "invalid_input", "content",
         b'{"content": "---\\nrole: \\ud800\\n---\\n"}', JSON),
]


async def test_each_hostile_http_request_is_refused_with_a_diagnostic_naming_the_field(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            run_id = await finished_run(client)
            responses = {}
            for case in HTTP_CASES:
                responses[case.name] = await client.request(
                    case.method, case.path.format(run=run_id), content=case.content, headers=case.headers,
                    params=case.params)
            runs = await client.get(RUNS, params={"limit": 200})
            sandboxes = await client.get(SANDBOXES)
    containers = owned_containers(daemon.settings.home)

    for case in HTTP_CASES:
        diag = diagnostic(responses[case.name], case.status, case.code)
        if case.field is not None:
            assert diag["evidence"]["field"] == case.field, (case.name, diag)
        else:
            assert diag["evidence"]["field"].startswith("metadata.x"), (case.name, diag)
    assert runs.status_code == 200 and [r["id"] for r in runs.json()["data"]] == [run_id]
    assert sandboxes.json()["data"] == [] and containers == []


async def test_a_duplicate_idempotency_key_header_is_refused(daemon):
    body = json.dumps(A_VALID_RUN).encode()
    head = (b"POST /api/v1/agent-runs HTTP/1.1\r\nhost: agentdock\r\ncontent-type: application/json\r\n"
            b"idempotency-key: a\r\nidempotency-key: b\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body)
    with anyio.fail_after(30):
        status, answer = await anyio.to_thread.run_sync(raw_exchange, daemon, head)
        async with http(daemon) as client:
            await nothing_created(daemon.settings.home, client)

    assert status == 400, answer
    diag = answer["diagnostic"]
    assert (diag["code"], diag["evidence"]["field"]) == ("invalid_input", "idempotency_key")


# ---------------------------------------------------------------- HTTP: body size


async def test_a_body_over_the_limit_is_413_by_its_content_length_before_it_is_sent(daemon):
    # Only the head is sent: a daemon that waited for 300 MB of body would never answer.
    head = (b"POST /api/v1/agent-runs HTTP/1.1\r\nhost: agentdock\r\ncontent-type: application/json\r\n"
            b"content-length: 314572800\r\n\r\n{")
    with anyio.fail_after(10):
        status, answer = await anyio.to_thread.run_sync(raw_exchange, daemon, head)

    assert status == 413, answer
    diag = answer["diagnostic"]
    assert (diag["code"], diag["category"]) == ("payload_too_large", "limit")
    assert diag["evidence"]["limit_bytes"] == http_app.MAX_BODY_BYTES


async def test_a_chunked_body_over_the_limit_is_413_and_one_just_under_it_is_read(daemon):
    over = b'{"prompt": "' + b"x" * http_app.MAX_BODY_BYTES + b'"}'
    under = b'{"prompt": "' + b"x" * (http_app.MAX_BODY_BYTES - 100) + b'"}'

    async def chunks(payload: bytes) -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    with anyio.fail_after(60):
        async with http(daemon) as client:
            chunked = await client.post(RUNS, content=chunks(over), headers=JSON)
            sized = await client.post(RUNS, content=over, headers=JSON)
            read = await client.post(RUNS, content=under, headers=JSON)
            await nothing_created(daemon.settings.home, client)

    assert "content-length" not in chunked.request.headers
    assert diagnostic(chunked, 413, "payload_too_large")["category"] == "limit"
    diagnostic(sized, 413, "payload_too_large")
    assert diagnostic(read, 400, "invalid_input")["evidence"]["field"] == "prompt"  # parsed, then judged


async def test_an_empty_post_to_a_route_that_takes_no_body_is_still_fine(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            run_id = await finished_run(client)
            bare = await client.post(f"{RUNS}/{run_id}/cancel")
            typed = await client.post(f"{RUNS}/{run_id}/cancel", headers={"content-type": "text/plain"})

    assert bare.request.headers.get("content-length") in (None, "0")
    diagnostic(bare, 409, "invalid_transition")
    diagnostic(typed, 409, "invalid_transition")


# ---------------------------------------------------------------- generated junk: strategies

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
"""Any text a JSON encoder can send (lone surrogates cannot go through an MCP client; HTTP sends them raw)."""
PATH_LIKE = st.sampled_from([
    "", " ", "..", "../", "../sandboxes", "../sandboxes?", "../../v1/sandboxes", "?", "#", "%2e%2e", "%2F", "/",
    "\x00", "run_\x00", "a b", "run_ ", "run_0123456789abcdef012", "run_0123456789abcdef01234",
    "RUN_0123456789ABCDEF0123", f"{UNKNOWN_RUN}\n", f"{UNKNOWN_RUN}/cancel", f"{UNKNOWN_SANDBOX}?x=1",
    f"{UNKNOWN_RUN}#", f" {UNKNOWN_RUN}", "run_g123456789abcdef0123", "sbx_０１２３４５６７８９abcdef0123",
])
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
"""Header values as a client can send them (h11 refuses leading or trailing spaces on the sending side)."""
HUGE_TEXT = st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "\x00", "é", "😀", "../", "%"]),
                      st.sampled_from([300, 5_000, 100_000]))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([2**63, -(2**63) - 1, 10**100]),
    st.floats(allow_nan=True, allow_infinity=True), TEXT, PATH_LIKE,
)
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def not_an_id(shape: ids.Shape) -> st.SearchStrategy[Any]:
    strings = st.one_of(PATH_LIKE, TEXT, HUGE_TEXT).filter(lambda s: not shape.matches(s))
    return st.one_of(strings, st.integers(), st.lists(st.just(UNKNOWN_RUN), max_size=2),
                     st.just({"id": UNKNOWN_RUN}), st.booleans())


WAIT_JUNK = st.sampled_from([-1, -0.5, math.nan, math.inf, -math.inf, "soon", [1], {}])
"""A wait that is wrong whatever the bound: a wait past the bound is no error over MCP (it is cut to the
bound, 45 s, and the caller waits again), so the generated junk never asks for a long wait."""


def numbers_outside(low: float, high: float, *, integer: bool) -> st.SearchStrategy[Any]:
    outside = st.one_of(
        st.integers(max_value=math.ceil(low) - 1), st.integers(min_value=math.floor(high) + 1), st.sampled_from([2**63, 2**64, 10**40]),
        st.floats(min_value=high, exclude_min=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308]),
        st.just("soon"),
    )
    if integer:
        outside = st.one_of(outside, st.floats(min_value=low, max_value=high).filter(lambda f: not f.is_integer()))
    return outside


def poisons(model: type[models.Input]) -> dict[str, st.SearchStrategy[Any]]:
    """For each field of `model` whose bad values are easy to name, a strategy of such values."""
    out: dict[str, st.SearchStrategy[Any]] = {}
    by_name = {"run_id": ids.RUN, "cursor": ids.RUN, "sandbox_id": ids.SANDBOX, "computer_id": ids.COMPUTER,
               "target_id": ids.DEVICE, "profile_id": ids.PROFILE, "agent_runtime_profile_id": ids.PROFILE,
               "agent_profile_id": ids.PROFILE}
    for name in model.model_fields:
        if name in by_name:
            shape = ids.DEVICE if (model is mcp_app.SandboxRef and name == "sandbox_id") else by_name[name]
            out[name] = not_an_id(shape)
    for name in ("wait", "wait_seconds"):
        if name in model.model_fields:
            out[name] = WAIT_JUNK
    numbers = {"after_sequence": (0, models.MAX_SEQUENCE, True), "limit": (1, 1000, True),
               "timeout": (1, models.MAX_TIMEOUT_SECONDS, True), "cpus": (0.001, 16, False),
               "memory_mb": (32, 65_536, True), "pids_limit": (16, 32_768, True)}
    for name, (low, high, integer) in numbers.items():
        if name in model.model_fields:
            out[name] = numbers_outside(low, high, integer=integer)
    if "prompt" in model.model_fields:
        out["prompt"] = st.one_of(st.just(""), st.just(" \n\t"), st.just("x" * 100_001), st.integers(),
                                  st.lists(TEXT, max_size=2), st.none())
    if "kind" in model.model_fields or "provider" in model.model_fields:
        enum = "kind" if "kind" in model.model_fields else "provider"
        out[enum] = st.one_of(TEXT, PATH_LIKE).filter(lambda s: s not in {"sandbox", "computer", "osa", "codex",
                                                                         "claude", "claude-code", "pi", "hermes",
                                                                         "custom"})
    if "metadata" in model.model_fields:
        out["metadata"] = st.one_of(st.integers(min_value=33, max_value=120).map(lambda d: {"x": deep(d)}),
                                    st.sampled_from([[1], "task=1", 5]))
    if "cwd" in model.model_fields:
        out["cwd"] = st.sampled_from(["/etc", "../x", "/workspace/../etc", "\x00", ""])
    for name in ("agent_name", "name"):
        if name in model.model_fields and model.__module__ == souls.__name__:
            out[name] = st.one_of(PATH_LIKE, TEXT, HUGE_TEXT).filter(lambda s: not souls.AGENT_NAME.fullmatch(s))
    if "content" in model.model_fields:
        out["content"] = st.one_of(st.integers(), st.lists(TEXT, max_size=2), st.booleans(),
                                   st.just("x" * (souls.MAX_SOURCE_BYTES + 1)))
    group_fields = {"group_id": not_an_id(ids.GROUP), "dispatch_id": not_an_id(ids.DISPATCH),
                    "concurrency_limit": numbers_outside(1, 16, integer=True),
                    "expected_runs": numbers_outside(0, gm.MAX_EXPECTED_RUNS, integer=True),
                    "after_sequence": numbers_outside(0, models.MAX_SEQUENCE, integer=True),
                    "runs": st.one_of(st.sampled_from([[], "runs", None, 5, {"prompt": "p"}, [None], [[]]]),
                                      st.just([{"prompt": "p", "command": "true"}] * 1001)),
                    "workspace_id": st.sampled_from(["a b", "", "\x00", "x" * 201, "../x", 5]),
                    "project_id": st.sampled_from(["a b", "", "\n", "x" * 201, [1]]),
                    "include_input": st.sampled_from(["maybe", 2, [1], {}]),
                    "include_output": st.sampled_from(["perhaps", -1, [True]]),
                    "status": st.one_of(TEXT, PATH_LIKE).filter(lambda v: v not in set(gm.GroupStatus))}
    if model in (gm.GroupListQuery,):
        group_fields["cursor"] = not_an_id(ids.GROUP)
    if issubclass(model, gm.GroupRunsQuery):
        group_fields["cursor"] = numbers_outside(0, models.MAX_SEQUENCE, integer=True)
    for name, strategy in group_fields.items():
        if name in model.model_fields:
            out[name] = strategy
    if model.__module__ == tm.__name__:
        task_fields = {"task_id": not_an_id(ids.TASK), "task_run_id": not_an_id(ids.TASK_RUN),
                       "priority": numbers_outside(0, 1_000_000, integer=True),
                       "max_attempts": numbers_outside(1, 100, integer=True),
                       "lease_seconds": numbers_outside(1, tm.MAX_LEASE_SECONDS, integer=False),
                       "wait_seconds": WAIT_JUNK,
                       "title": st.sampled_from(["", 5, None, ["t"], "x" * 501]),
                       "claim_token": st.sampled_from(["", 5, None, "x" * 201]),
                       "error": st.sampled_from(["", 5, None, "x" * 10_001]),
                       "status": st.one_of(TEXT, PATH_LIKE).filter(lambda v: v not in set(tm.TaskStatus)),
                       "payload": st.sampled_from([[1], "p", 5, None, {"p": "x" * 300_000}]),
                       "result": st.just({"r": "x" * 300_000}),
                       "include_payload": st.sampled_from(["maybe", 2, [1], {}])}
        out.update({name: strategy for name, strategy in task_fields.items() if name in model.model_fields})
    if model.__module__ == cm.__name__:
        channel_fields = {"channel_id": not_an_id(ids.CHANNEL), "reply_to_message_id": not_an_id(ids.MESSAGE),
                          "body": st.just("x" * (cm.MAX_BODY_BYTES + 1)),
                          "wait": st.sampled_from(["maybe", 2, [1], {}]),
                          "wait_seconds": WAIT_JUNK,
                          "after_sequence": numbers_outside(0, models.MAX_SEQUENCE, integer=True),
                          "metadata": st.sampled_from([[1], "m", 5, {"message_kind": "shout"}, {"task_id": "../x"},
                                                       {"correlation_id": ""}, {"extra": 1},
                                                       {"coordination_channel_id": "chn_x"}])}
        if model is cm.Send:  # a reply goes by channel_reply only
            channel_fields["metadata"] = st.one_of(channel_fields["metadata"], st.just({"message_kind": "reply"}))
        out.update({name: strategy for name, strategy in channel_fields.items() if name in model.model_fields})
    if model.__module__ == pm.__name__:
        profile_fields = {
            "runtime": st.one_of(TEXT, PATH_LIKE).filter(lambda v: v not in set(pm.Runtime)),
            "tools": st.sampled_from([["shell"], ["exec", "exec"], "exec", [5], ["files", "root"]]),
            "env": st.sampled_from([{"OPENAI_API_KEY": "x"}, {"GITHUB_TOKEN": "abc"}, {"X": "sk-" + "a" * 40},
                                    {"K": "q8ZrT1vX9mLp2Ws7Yb4Nc6Hd0Jf3Gk5R"}, {"PATH": "/bin"}, {"A": 5}, ["x"]]),
            "secrets": st.sampled_from([["NOT_SET_ANYWHERE"], ["bad name"], ["A", "A"], "A", [5]]),
            "policy": st.sampled_from([{"approval": "ask-always"}, {"max_child_sandboxes": -1}, {"quota": 1}, 5]),
            "resources": st.sampled_from([{"cpus": 0}, {"memory_mb": 1}, {"gpus": 1}, "big"]),
            "name": st.sampled_from(["", " ", "a\nb", "x" * 101, 5, None]),
        }
        out.update({name: strategy for name, strategy in profile_fields.items() if name in model.model_fields})
    if model.__module__ == am.__name__:
        approval_fields = {
            "approval_id": not_an_id(ids.APPROVAL), "wait_seconds": WAIT_JUNK,
            "wait": numbers_outside(0, 45, integer=False),
            "status": st.one_of(TEXT, PATH_LIKE).filter(lambda v: v not in set(am.ApprovalStatus)),
            "reason": st.sampled_from(["", 5, ["r"], {}, "x" * (am.MAX_REASON_CHARS + 1)]),
            "after_sequence": numbers_outside(0, models.MAX_SEQUENCE, integer=True),
        }
        out.update({name: strategy for name, strategy in approval_fields.items() if name in model.model_fields})
    return out


def junk_call(model: type[models.Input]) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments for `model` that are invalid by construction: random junk in its fields plus one poison."""
    table = poisons(model)
    known = {f.alias or n for n, f in model.model_fields.items()}
    unknown = "(an unknown field)"

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        args = draw(st.dictionaries(st.sampled_from(sorted(known)), JUNK, max_size=4)) if known else {}
        which = draw(st.sampled_from([unknown, *sorted(table)]))
        if which == unknown:
            key = draw(st.one_of(TEXT, PATH_LIKE, HUGE_TEXT).filter(lambda k: k not in known))
            args[key] = draw(JUNK)
        else:
            args[which] = draw(table[which])
        return args

    return build()


TOOL_INPUTS: dict[str, type[models.Input]] = {
    **{op.name: op.input for op in areas.all_ops() if op.tool and op.name not in lineage.SESSIONS_ONLY},
    "agent_run": mcp_app.AgentRunInput, "agent_run_artifacts": mcp_app.ArtifactsInput,
    "group_dispatch": group_area.DispatchInput, "group_events": group_area.EventsInput,
    "approval_review": am.Review,
}


# ---------------------------------------------------------------- generated junk: HTTP


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    content: bytes | None


def as_query(args: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters, each cut to 500 characters to keep the URL within what HTTP servers read
    (a cut junk value stays junk: the poisons are never a prefix of something valid)."""
    return [(k[:500], (v if isinstance(v, str) else json.dumps(v))[:500]) for k, v in args.items()]


def raw_poisons(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """`base` (a valid create body) as JSON text with one flaw that only a strict parser sees."""
    valid = json.dumps(base).encode()

    def with_field(text: bytes) -> bytes:
        return valid[:-1] + (b", " if base else b"") + text + b"}"

    return st.one_of(
        st.sampled_from([b'"\\ud800"', b'"a\\udfffb"', b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 65,
                         b"[" * 40 + b"]" * 40]).map(lambda v: with_field(b'"metadata": {"k": ' + v + b"}")),
        st.integers(min_value=33, max_value=5000).map(lambda d: with_field(b'"metadata": ' + b"[" * d + b"]" * d)),
        st.just(with_field(b'"metadata": {"\\ud83d": 1}')),
        st.just(with_field(b'"metadata": {}, "metadata": {}')),  # a key twice
        st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)).map(
            lambda b: with_field(b'"metadata": {"k": "' + b + b'"}')),
        st.just(b"\xef\xbb\xbf" + valid),  # a UTF-8 byte order mark
        st.sampled_from([b"[]", b"null", b'"s"', b"{", b"{}{}", b'{"data": 1}', b'{"data": null}',
                         valid + b" trailing"]),
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


ID_ROUTES = [
    ("GET", "/api/v1/sandboxes/{}", ids.DEVICE), ("DELETE", "/api/v1/sandboxes/{}", ids.DEVICE),
    ("GET", "/api/v1/agent-runs/{}", ids.RUN), ("POST", "/api/v1/agent-runs/{}/cancel", ids.RUN),
    ("GET", "/api/v1/agent-runs/{}/events", ids.RUN), ("GET", "/api/v1/agent-runs/{}/artifacts", ids.RUN),
    ("GET", "/api/v1/agent-runs/{}/artifacts/content", ids.RUN),
    ("GET", "/api/v1/sessions/{}", ids.SESSION), ("POST", "/api/v1/sessions/{}/stop", ids.SESSION),
    ("GET", GROUPS + "/{}", ids.GROUP), ("POST", GROUPS + "/{}/dispatch", ids.GROUP),
    ("GET", GROUPS + "/{}/events", ids.GROUP), ("GET", GROUPS + "/{}/runs", ids.GROUP),
    ("POST", GROUPS + "/{}/cancel", ids.GROUP),
    ("GET", GROUPS + f"/{UNKNOWN_GROUP}/dispatches/{{}}", ids.DISPATCH),
    ("GET", "/api/v1/tasks/{}", ids.TASK), ("POST", "/api/agent/tasks/{}/heartbeat", ids.TASK_RUN),
    ("POST", "/api/agent/tasks/{}/complete", ids.TASK_RUN), ("POST", "/api/agent/tasks/{}/fail", ids.TASK_RUN),
    ("POST", "/api/agent/tasks/{}/release", ids.TASK_RUN),
    ("POST", "/api/agent/channels/{}/send", ids.CHANNEL), ("GET", "/api/agent/channels/{}/recv", ids.CHANNEL),
    ("GET", PROFILES + "/{}", ids.PROFILE), ("PUT", PROFILES + "/{}", ids.PROFILE),
    ("DELETE", PROFILES + "/{}", ids.PROFILE),
    ("GET", APPROVALS + "/{}", ids.APPROVAL), ("GET", "/api/agent/approvals/{}", ids.APPROVAL),
    ("POST", APPROVALS + "/{}/approve", ids.APPROVAL), ("POST", APPROVALS + "/{}/deny", ids.APPROVAL),
]


@st.composite
def junk_http(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["id", "query", "body", "raw body", "media type", "method"]))
    if kind == "id":
        method, template, shape = draw(st.sampled_from(ID_ROUTES))
        bad = draw(st.one_of(PATH_LIKE, TEXT, st.sampled_from(["x" * 3000])).filter(lambda s: not shape.matches(s)))
        query = as_query(draw(st.dictionaries(TEXT, TEXT, max_size=2)))
        return Request(method, template.format(quote(bad, safe="")), query, {}, None)
    if kind == "query":
        method, template, model = draw(st.sampled_from([
            ("GET", RUNS, rm.RunListQuery), ("GET", SANDBOXES, models.Input), ("GET", "/api/v1/health", models.Input),
            ("GET", f"{RUNS}/{UNKNOWN_RUN}/events", rm.EventsQuery), ("POST", RUNS, http_app.WaitQuery),
            ("GET", SOUL, souls.SoulGet), ("GET", "/api/v1/tasks", tm.TaskListQuery),
            ("GET", PROFILES, pm.ProfileListQuery), ("GET", GROUPS, gm.GroupListQuery), ("GET", f"{GROUPS}/{UNKNOWN_GROUP}/events", gm.GroupEventsQuery),
            ("GET", f"{GROUPS}/{UNKNOWN_GROUP}/runs", gm.GroupRunsQuery), ("GET", f"{GROUPS}/{UNKNOWN_GROUP}",
                                                                             http_app.WaitQuery),
            ("GET", APPROVALS, am.ApprovalListQuery), ("GET", "/api/v1/approval-events", am.ApprovalEventsQuery),
            ("GET", f"/api/agent/approvals/{UNKNOWN_APPROVAL}", am.ApprovalWait),
        ]))
        args = draw(junk_call(model))
        query = as_query(args)
        if draw(st.booleans()) and query:  # the same parameter again
            query.append(query[0])
        body = json.dumps(A_VALID_RUN).encode() if method == "POST" else None
        return Request(method, template, query, JSON if body else {}, body)
    if kind == "body":
        path, model = draw(st.sampled_from([(RUNS, rm.RunCreate), (SANDBOXES, dm.DeviceCreate),
                                            ("/api/agent/spawn", sessions.SpawnRequest),
                                            (f"{SOUL}/validate", souls.SoulValidate),
                                            (f"{SOUL}/import", souls.SoulImport),
                                            (GROUPS, gm.GroupCreate),
                                            (f"{GROUPS}/{UNKNOWN_GROUP}/dispatch", gm.DispatchRequest),
                                            ("/api/v1/tasks", tm.TaskCreate),
                                            ("/api/agent/tasks/claim-next", tm.ClaimNext),
                                            (f"/api/agent/channels/{UNKNOWN_CHANNEL}/send", cm.Send),
                                            ("/api/agent/channels/reply", cm.Reply),
                                            (PROFILES, pm.ProfileCreate),
                                            (f"{APPROVALS}/{UNKNOWN_APPROVAL}/approve", am.Decision),
                                            (f"{APPROVALS}/{UNKNOWN_APPROVAL}/deny", am.Decision)]))
        args = draw(junk_call(model))
        wrap = draw(st.booleans())
        headers = dict(JSON)
        key = draw(st.one_of(st.none(), st.sampled_from(["", "k" * 201]), HEADER_TEXT))
        if key is not None and path in (RUNS, GROUPS):
            headers["idempotency-key"] = key
        content = json.dumps({"data": args} if wrap else args).encode()
        return Request("POST", path, [], headers, content)
    if kind == "raw body":
        path, base = draw(st.sampled_from([(RUNS, A_VALID_RUN), (SANDBOXES, {}),
                                           (f"{SOUL}/import", A_VALID_AGENT_FILE)]))
        return Request("POST", path, [], dict(JSON), draw(raw_poisons(base)))
    if kind == "media type":
        path, base = draw(st.sampled_from([(RUNS, A_VALID_RUN), (SANDBOXES, {"name": "x"}),
                                           (f"{SOUL}/import", A_VALID_AGENT_FILE)]))
        ctype = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                      "application/jsonx", "text/json", "", "application/json-seq"]))
        return Request("POST", path, [], {"content-type": ctype}, json.dumps(base).encode())
    method = draw(st.sampled_from(["PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]))
    path = draw(st.sampled_from([RUNS, SANDBOXES, f"{RUNS}/{UNKNOWN_RUN}", f"{SANDBOXES}/{UNKNOWN_SANDBOX}"]))
    return Request(method, path, [], dict(JSON), json.dumps(A_VALID_RUN).encode())


JUNK_SETTINGS = settings(derandomize=True, database=None, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much, HealthCheck.large_base_example])

REFUSALS = {"invalid_input", "unsupported_media_type", "payload_too_large", "method_not_allowed", "not_found"}


def run_examples(strategy: st.SearchStrategy[Any], max_examples: int, check: Callable[[Any], Any]) -> None:
    """Run hypothesis (synchronous) in this worker thread; `check` runs each example on the event loop."""

    @settings(JUNK_SETTINGS, max_examples=max_examples)
    @given(strategy)
    def one(example: Any) -> None:
        anyio.from_thread.run(check, example)

    one()


async def test_generated_junk_at_every_http_route_is_refused_with_a_diagnostic_and_creates_nothing(app_client, home):
    """In process (the app over httpx's ASGI transport): the routes' answers, not the socket's."""
    seen: dict[str, int] = {}

    async def check(req: Request) -> None:
        resp = await app_client.request(req.method, req.path, params=req.params, headers=req.headers,
                                    content=req.content)
        diag = diagnostic(resp, (400, 404, 405, 413, 415))
        assert diag["code"] in REFUSALS, (req, diag)
        if diag["code"] == "not_found":  # only a route that does not exist
            assert diag["evidence"]["kind"] == "route", (req, diag)
        seen[diag["code"]] = seen.get(diag["code"], 0) + 1
        await nothing_created(home, app_client)

    with anyio.fail_after(120):
        await anyio.to_thread.run_sync(run_examples, junk_http(), 300, check)

    assert {"invalid_input", "unsupported_media_type", "method_not_allowed"} <= set(seen), seen


# ---------------------------------------------------------------- generated junk: MCP


async def test_generated_junk_at_every_mcp_tool_is_a_tool_error_with_a_diagnostic_and_creates_nothing(daemon):
    seen: dict[str, int] = {}

    async with session(daemon) as mcp_client, http(daemon) as client:

        async def check(call: tuple[str, dict[str, Any]]) -> None:
            tool, args = call
            # JSON has no NaN or infinity: the client would send such a float as null, which an optional
            # field takes as left out. Send what a client can send instead: the word.
            args = {k: repr(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in args.items()}
            try:
                with anyio.fail_after(20):
                    diag = await failing_call(mcp_client, tool, args)
            except TimeoutError:
                raise AssertionError(f"{tool} did not answer junk at once: {args!r}"[:2000]) from None
            assert diag["code"] == "invalid_input", (tool, args, diag)
            assert isinstance(diag["evidence"].get("field"), str), (tool, diag)
            seen[tool] = seen.get(tool, 0) + 1
            await nothing_created(daemon.settings.home, client)

        with anyio.fail_after(240):
            for tool in sorted(TOOL_INPUTS):  # every tool gets its share, however many there are
                calls = junk_call(TOOL_INPUTS[tool]).map(lambda args, tool=tool: (tool, args))
                await anyio.to_thread.run_sync(run_examples, calls, 15, check)

    assert set(seen) == set(TOOL_INPUTS), seen


async def test_terminal_escapes_a_run_prints_reach_the_cli_user_as_visible_escapes(daemon: Daemon):
    async with http(daemon) as client:
        resp = await client.post(RUNS, params={"wait": 60},
                                 json={"prompt": "p", "command": r"printf '\033]0;pwned\007\033[2Jhi\n'"})
        assert resp.status_code == 201, resp.text
        run_id = resp.json()["data"]["id"]
        assert "\x1b" in resp.json()["data"]["output"]  # the record keeps what the run printed

    shown = daemon.cli("runs", "get", run_id).stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert r"\x1b]0;pwned\x07" in shown
    assert json.loads(daemon.cli("runs", "get", run_id, "--json").stdout)["output"].startswith("\x1b]0;pwned")
