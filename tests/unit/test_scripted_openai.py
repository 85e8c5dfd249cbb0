"""The scripted OpenAI provider (test equipment) speaks what the real CLIs read: the Responses API's
event sequence and Chat Completions chunks, streaming or not, with usage; it picks the file-writing
tool over a shell, and answers a request without tools plainly."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.provider.openai import USAGE, Script, ScriptedOpenAI, plan_call

pytestmark = pytest.mark.anyio
SHELL = {"type": "function", "name": "exec_command",
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}
WRITE = {"type": "function", "name": "write_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
    "required": ["path", "content"]}}


async def post(provider: ScriptedOpenAI, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=provider.app), base_url="http://p") as client:
        return await client.post(path, json=body, headers={"Authorization": "Bearer placeholder"})


def sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


async def test_a_streamed_responses_turn_is_text_then_the_shell_call_then_completed_with_usage():
    provider = ScriptedOpenAI()
    answer = await post(provider, "/v1/responses", {"model": "m", "stream": True, "tools": [SHELL],
                                                    "input": [{"type": "message", "role": "user", "content": "go"}]})
    events = sse_data(answer.text)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in done] == ["message", "function_call"]
    assert done[0]["content"][0]["text"] == Script().first
    assert done[1]["name"] == "exec_command" and "agentdock-proof.txt" in json.loads(done[1]["arguments"])["cmd"]
    assert events[-1]["response"]["usage"]["output_tokens"] == USAGE["output"]
    [logged] = provider.requests
    assert (logged.api, logged.key, logged.stage, logged.call, logged.tools) == (
        "responses", "placeholder", "act", "exec_command", ["exec_command"])


async def test_a_chat_turn_after_a_tool_result_is_the_final_answer_with_usage_only_when_asked():
    provider = ScriptedOpenAI()
    messages = [{"role": "user", "content": "go"}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    chat_tools = [{"type": "function", "function": {k: v for k, v in WRITE.items() if k != "type"}}]
    streamed = sse_data((await post(provider, "/v1/chat/completions", {
        "model": "m", "stream": True, "stream_options": {"include_usage": True}, "tools": chat_tools,
        "messages": messages})).text)
    assert streamed[-1] == "[DONE]" and streamed[-2]["usage"]["prompt_tokens"] == USAGE["input"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-2]) == Script().final
    quiet = sse_data((await post(provider, "/v1/chat/completions", {
        "model": "m", "stream": True, "tools": chat_tools, "messages": messages})).text)
    assert not any("usage" in c for c in quiet[:-1])
    plain = (await post(provider, "/v1/chat/completions", {"model": "m", "messages": messages[:1],
                                                           "tools": chat_tools})).json()
    call = plain["choices"][0]["message"]["tool_calls"][0]["function"]
    assert (call["name"], json.loads(call["arguments"])) == ("write_file", {"path": "agentdock-proof.txt",
                                                                           "content": Script().content})
    assert [r.stage for r in provider.requests] == ["final", "final", "act"]


async def test_a_request_without_tools_is_a_side_request_answered_with_text():
    provider = ScriptedOpenAI()
    answer = (await post(provider, "/v1/responses", {"model": "m", "input": "title this"})).json()
    assert answer["output"][0]["content"][0]["text"] == Script().side and len(answer["output"]) == 1
    assert provider.requests[0].stage == "side"


def test_a_file_writer_is_preferred_to_a_shell_and_a_writer_needing_more_is_not_one():
    fewer = {"name": "skill_manage", "properties": {"path": {}, "content": {}, "action": {}},
             "required": ["action"]}
    shell = {"name": "terminal", "properties": {"command": {"type": "string"}}, "required": ["command"]}
    writer = {"name": "write_file", "properties": {"path": {}, "content": {}}, "required": ["path", "content"]}
    assert plan_call([fewer, shell, writer], Script())[0] == "write_file"
    assert plan_call([fewer, shell], Script())[0] == "terminal"
    with pytest.raises(LookupError):
        plan_call([fewer], Script())
