"""The scripted Anthropic Messages API (test equipment for the real CLIs) over its ASGI app: the script's
turns in the plain and the streamed form, a side request, token counting, and the unscripted rest."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.provider.anthropic import MAIN_USAGE, SIDE_USAGE, TOOL_USE_ID, Script, ScriptedAnthropic

pytestmark = pytest.mark.anyio
SCRIPT = Script(path="/workspace/a.txt", content="A\n", key="sk-right")
WRITE = {"name": "Write", "input_schema": {"type": "object", "properties": {"file_path": {}, "content": {}}}}
HEADERS = {"x-api-key": "sk-right", "anthropic-version": "2023-06-01"}


def client(server: ScriptedAnthropic) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://scripted")


def folded(sse: str) -> dict[str, Any]:
    """A streamed message put together again, the way a client does, checking the order of events."""
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in sse.strip().split("\n\n") if block.startswith("event:")]
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    message = events[0][1]["message"]
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_start":
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            delta, block = data["delta"], message["content"][data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    for index, text in partial.items():
        message["content"][index]["input"] = json.loads(text)
    return message


async def test_the_script_plays_text_and_a_write_then_the_answer_streamed_and_plain() -> None:
    server = ScriptedAnthropic(SCRIPT)
    first = {"model": "m", "max_tokens": 100, "tools": [WRITE], "messages": [{"role": "user", "content": "go"}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": TOOL_USE_ID, "content": "ok"}]}
    async with client(server) as http:
        streamed = await http.post("/v1/messages", json={**first, "stream": True}, headers=HEADERS)
        plain = await http.post("/v1/messages", json={**first, "messages": [*first["messages"], result]},
                                headers=HEADERS)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    call = folded(streamed.text)
    assert (call["stop_reason"], call["usage"]) == ("tool_use", MAIN_USAGE)
    assert call["content"] == [{"type": "text", "text": SCRIPT.opening},
                               {"type": "tool_use", "id": TOOL_USE_ID, "name": "Write",
                                "input": {"file_path": SCRIPT.path, "content": SCRIPT.content}}]
    answer = plain.json()
    assert (answer["stop_reason"], answer["content"]) == ("end_turn", [{"type": "text", "text": SCRIPT.answer}])
    assert [(s.answered, s.api_key, s.tools, s.stream) for s in server.seen] == [
        ("tool_use", "sk-right", ["Write"], True), ("final", "sk-right", ["Write"], False)]


async def test_side_requests_are_answered_and_recorded_and_another_key_is_refused() -> None:
    server = ScriptedAnthropic(SCRIPT)
    async with client(server) as http:
        title = await http.post("/v1/messages", json={"model": "small", "messages": []}, headers=HEADERS)
        count = await http.post("/v1/messages/count_tokens", json={"messages": []}, headers=HEADERS)
        hello = await http.head("/api/hello")
        other = await http.post("/v1/else", json={})
        refused = await http.post("/v1/messages", json={"messages": []},
                                  headers={"authorization": "Bearer sk-wrong"})
    assert (title.json()["content"][0]["text"], title.json()["usage"]) == (SCRIPT.side, SIDE_USAGE)
    assert count.json()["input_tokens"] >= 1 and hello.status_code == 200 and other.status_code == 404
    assert (refused.status_code, refused.json()["error"]["type"]) == (401, "authentication_error")
    assert [(s.method, s.path, s.answered) for s in server.seen] == [
        ("POST", "/v1/messages", "side"), ("POST", "/v1/messages/count_tokens", "count_tokens"),
        ("HEAD", "/api/hello", "ok"), ("POST", "/v1/else", "not_found"), ("POST", "/v1/messages", "refused")]
    assert server.seen[-1].api_key == "sk-wrong"
