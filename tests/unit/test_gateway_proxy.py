"""The gateway's HTTP app with its upstream answered in process (httpx's mock transport): what it
forwards, to where, with which key; and what it refuses. Who may is `engine.gateway`'s (tested on
real Docker in tests/integration/test_gateway.py)."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from starlette.requests import ClientDisconnect

from engine import errors, providers
from engine.gateway import Grant, Usage
from runtimes import gateway as gateway_app
from runtimes.gateway import create_app

pytestmark = pytest.mark.anyio
REAL, GOOD = "sk-real-credential-1234", "adgw_run_1_good"


class Admits:
    """Admits one placeholder, as `engine.gateway.Gateway` would for a running run, and keeps the accounts."""

    def __init__(self) -> None:
        self.usage: list[Usage] = []

    async def admit(self, provider: str, key: str | None) -> Grant:
        if key != GOOD:
            raise errors.Unauthenticated("no placeholder")
        return Grant("run_1", providers.CATALOG[provider], REAL, None)

    async def account(self, grant: Grant, usage: Usage) -> None:
        self.usage.append(usage)


@pytest.fixture
def seen() -> list[httpx.Request]:
    return []


@pytest.fixture
async def client(seen):
    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=httpx.ByteStream(body))

    gateway = Admits()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as out:
        app = create_app(gateway, {"anthropic": "https://anthropic.test", "openai": "https://openai.test"}, out)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            c.gateway = gateway  # type: ignore[attr-defined]
            yield c


async def test_openai_requests_go_to_its_upstream_with_the_real_key_as_bearer_and_the_placeholder_gone(client, seen):
    answer = await client.post("/openai/v1/chat/completions?x=1%2F2", json={"m": 1},
                               headers={"authorization": f"Bearer {GOOD}", "openai-beta": "b"})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    [req] = seen
    assert str(req.url) == "https://openai.test/v1/chat/completions?x=1%2F2"
    assert req.headers["authorization"] == f"Bearer {REAL}" and req.headers["openai-beta"] == "b"
    assert GOOD not in json.dumps(dict(req.headers)) and json.loads(req.content) == {"m": 1}
    assert client.gateway.usage == [Usage(200, 3, 4)]


async def test_anthropic_requests_carry_the_real_key_in_x_api_key(client, seen):
    answer = await client.post("/anthropic/v1/messages", content=b"{}", headers={"x-api-key": GOOD})
    assert answer.status_code == 200
    assert seen[0].headers["x-api-key"] == REAL and "authorization" not in seen[0].headers
    assert str(seen[0].url) == "https://anthropic.test/v1/messages"


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("POST", "/anthropic/v1/messages", {}, 401),
    ("POST", "/anthropic/v1/messages", {"x-api-key": REAL}, 401),
    ("POST", "/openai/v1/responses", {"authorization": "Basic " + GOOD}, 401),
    ("GET", "/gemini/v1/models", {"x-api-key": GOOD}, 404),
    ("GET", "/", {"x-api-key": GOOD}, 404),
    ("CONNECT", "/anthropic/x", {"x-api-key": GOOD}, 405),
])
async def test_what_the_gateway_refuses_is_never_forwarded(client, seen, method, path, headers, status):
    answer = await client.request(method, path, headers=headers)
    assert answer.status_code == status
    if status != 405:
        assert answer.json()["diagnostic"]["code"] in ("unauthenticated", "not_found")
    assert seen == [] and client.gateway.usage == []


async def test_a_body_past_the_limit_is_refused_as_it_arrives_and_never_forwarded(client, seen, monkeypatch):
    monkeypatch.setattr(gateway_app, "MAX_REQUEST_BYTES", 1000)
    declared = await client.post("/openai/v1/responses", content=b"x" * 1001, headers={"authorization": f"Bearer {GOOD}"})

    async def chunks():  # no content-length: the gateway counts what arrives
        for _ in range(50):
            yield b"y" * 100

    streamed = await client.post("/openai/v1/responses", content=chunks(), headers={"authorization": f"Bearer {GOOD}"})
    for answer in (declared, streamed):
        assert answer.status_code == 413 and answer.json()["diagnostic"]["code"] == "limit_exceeded", answer.text
    assert seen == [] and client.gateway.usage == []
    fits = await client.post("/openai/v1/responses", content=b"z" * 1000, headers={"authorization": f"Bearer {GOOD}"})
    assert fits.status_code == 200


async def test_one_run_has_at_most_its_share_of_requests_open_and_each_ended_one_frees_a_place():
    release, arrived = anyio.Event(), []

    async def upstream(request: httpx.Request) -> httpx.Response:
        arrived.append(request)
        await release.wait()
        body = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=httpx.ByteStream(body))

    gateway, limit = Admits(), gateway_app.MAX_IN_FLIGHT_PER_RUN
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as out:
        app = create_app(gateway, {"openai": "https://openai.test"}, out)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            answers: list[httpx.Response] = []

            async def call() -> None:
                answers.append(await c.post("/openai/v1/responses", content=b"{}",
                                            headers={"authorization": f"Bearer {GOOD}"}))

            async with anyio.create_task_group() as tg:
                for _ in range(limit):
                    tg.start_soon(call)
                while len(arrived) < limit:
                    await anyio.sleep(0.01)
                await call()  # one more while all are open
                assert [a.status_code for a in answers] == [429], answers[0].text
                assert answers[0].json()["diagnostic"]["code"] == "rate_limited"
                release.set()
            assert sorted(a.status_code for a in answers) == [200] * limit + [429]
            await call()  # every place was given back
            assert answers[-1].status_code == 200 and len(arrived) == limit + 1
            assert len(gateway.usage) == limit + 1


async def test_an_answer_whose_client_is_gone_before_its_first_byte_still_ends_and_counts():
    ended: list[bool] = []

    async def content():
        yield b"never sent"

    async def on_end() -> None:
        ended.append(True)

    async def send(message: dict) -> None:
        raise OSError("the client hung up")

    async def receive() -> dict:
        await anyio.sleep_forever()
        return {}

    with pytest.raises(ClientDisconnect):
        await gateway_app.Relay(content(), on_end)({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert ended == [True]
