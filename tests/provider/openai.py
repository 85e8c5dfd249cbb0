"""A scripted OpenAI provider for tests: the Responses API (`POST /v1/responses`) and Chat Completions
(`POST /v1/chat/completions`), streaming or not, plus `GET /v1/models`.

It plays one conversation whatever the prompt: a request offering tools and carrying no tool result
gets some text and a call of a tool that writes `Script.path` (a file-writing tool when one is
offered, else a shell tool); a request carrying a tool result gets the final answer. A request
offering no tools (a CLI's side request: a title, a summary) gets a short text. Every request is
logged (`requests`) for the test's assertions. Each response reports `USAGE`, so a run's token
figures are known: requests × USAGE.

    provider = ScriptedOpenAI()
    with serve(provider.app) as port:
        ...  # a CLI pointed at http://<host>:<port>/v1
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

USAGE = {"input": 100, "output": 20}


@dataclass(frozen=True)
class Script:
    """What the scripted model says and which file its tool call writes (relative to the CLI's cwd)."""

    path: str = "agentdock-proof.txt"
    content: str = "written through a scripted tool call\n"
    first: str = "I will write the file now."
    final: str = "Done: agentdock-proof.txt holds the scripted line."
    side: str = "Scripted side answer"


@dataclass
class Logged:
    """One request as the provider saw it."""

    api: str
    """`responses` or `chat`."""
    key: str
    """The bearer token (or `api-key` header) it came with."""
    model: str
    stream: bool
    tools: list[str]
    stage: str
    """`act` (text and a tool call), `final` (after a tool result) or `side` (no tools offered)."""
    call: str | None = None
    """The tool it was asked to call, for `act`."""
    body: dict[str, Any] = field(default_factory=dict, repr=False)


def plan_call(tools: list[dict[str, Any]], script: Script) -> tuple[str, dict[str, Any]]:
    """The tool to call and its arguments, found by its parameters' schema: a file writer (it requires
    only a path and the content), else a shell tool (a command string in `cmd` or `command`, or an
    argv `command`)."""
    shell = f"printf '%s' '{script.content}' > {script.path}"
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for tool in tools:
        name, props, required = tool["name"], tool["properties"], set(tool["required"])
        path_key = next((k for k in ("path", "file_path") if k in props), None)
        if path_key and "content" in props and required <= {path_key, "content"}:
            found.setdefault("write", (name, {path_key: script.path, "content": script.content}))
        elif props.get("cmd", {}).get("type") == "string":
            found.setdefault("string", (name, {"cmd": shell}))
        elif props.get("command", {}).get("type") == "string":
            found.setdefault("string", (name, {"command": shell}))
        elif props.get("command", {}).get("type") == "array":
            found.setdefault("argv", (name, {"command": ["bash", "-lc", shell]}))
    for kind in ("write", "string", "argv"):
        if kind in found:
            return found[kind]
    raise LookupError(f"no file-writing or shell tool among {[t['name'] for t in tools]}")


def _function_tools(raw: list[Any], chat: bool) -> list[dict[str, Any]]:
    """The offered function tools as {name, properties}; Chat nests them under `function`."""
    out = []
    for tool in raw:
        spec = tool.get("function", {}) if chat else tool
        if tool.get("type") == "function" and spec.get("name"):
            params = spec.get("parameters") or {}
            out.append({"name": spec["name"], "properties": params.get("properties") or {},
                        "required": params.get("required") or []})
    return out


def _names(raw: list[Any], chat: bool) -> list[str]:
    return [str((t.get("function", {}) if chat else t).get("name") or t.get("type")) for t in raw]


def _key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth else request.headers.get("api-key", "")


def _sse(event: dict[str, Any], named: bool) -> str:
    head = f"event: {event['type']}\n" if named else ""
    return f"{head}data: {json.dumps(event)}\n\n"


class ScriptedOpenAI:
    """The provider: a Starlette app and the log of what it was asked."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[Logged] = []
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ])

    def _log(self, request: Request, body: dict[str, Any], api: str, tools: list[dict[str, Any]],
             finished: bool) -> Logged:
        chat = api == "chat"
        stage = "side" if not tools else "final" if finished else "act"
        entry = Logged(api=api, key=_key(request), model=str(body.get("model", "")), stream=bool(body.get("stream")),
                       tools=_names(body.get("tools") or [], chat), stage=stage, body=body)
        self.requests.append(entry)
        return entry

    def _turn(self, entry: Logged, tools: list[dict[str, Any]]) -> tuple[str, tuple[str, dict[str, Any]] | None]:
        """The text and the tool call (if any) this request is answered with."""
        if entry.stage == "act":
            name, args = plan_call(tools, self.script)
            entry.call = name
            return self.script.first, (name, args)
        return (self.script.final if entry.stage == "final" else self.script.side), None

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "agentdock-tests"}
            for m in ("scripted-model", "gpt-5")]})

    # -- Responses API ---------------------------------------------------------------------------

    async def _responses(self, request: Request) -> Response:
        body = await request.json()
        items = body.get("input") if isinstance(body.get("input"), list) else []
        finished = any(isinstance(i, dict) and str(i.get("type", "")).endswith("call_output") for i in items)
        tools = _function_tools(body.get("tools") or [], chat=False)
        entry = self._log(request, body, "responses", tools, finished)
        text, call = self._turn(entry, tools)
        n = next(self._ids)
        output = [{"id": f"msg_{n}", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}]
        if call:
            output.append({"id": f"fc_{n}", "type": "function_call", "status": "completed", "call_id": f"call_{n}",
                           "name": call[0], "arguments": json.dumps(call[1])})
        response = {"id": f"resp_{n}", "object": "response", "created_at": int(time.time()), "status": "completed",
                    "model": entry.model, "output": output, "usage": {
                        "input_tokens": USAGE["input"], "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": USAGE["output"], "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": USAGE["input"] + USAGE["output"]}}
        if not entry.stream:
            return JSONResponse(response)
        return StreamingResponse(self._response_events(response), media_type="text/event-stream")

    @staticmethod
    async def _response_events(response: dict[str, Any]) -> AsyncIterator[str]:
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> str:
            return _sse({"type": kind, "sequence_number": next(seq), **fields}, named=True)

        started = {**response, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        for index, item in enumerate(response["output"]):
            at = {"output_index": index, "item_id": item["id"]}
            if item["type"] == "message":
                text = item["content"][0]["text"]
                yield event("response.output_item.added", output_index=index, item={**item, "status": "in_progress",
                                                                                   "content": []})
                part = {"type": "output_text", "text": "", "annotations": []}
                yield event("response.content_part.added", **at, content_index=0, part=part)
                for piece in _pieces(text):
                    yield event("response.output_text.delta", **at, content_index=0, delta=piece)
                yield event("response.output_text.done", **at, content_index=0, text=text)
                yield event("response.content_part.done", **at, content_index=0, part={**part, "text": text})
            else:
                args = item["arguments"]
                yield event("response.output_item.added", output_index=index,
                            item={**item, "status": "in_progress", "arguments": ""})
                for piece in _pieces(args):
                    yield event("response.function_call_arguments.delta", **at, delta=piece)
                yield event("response.function_call_arguments.done", **at, arguments=args)
            yield event("response.output_item.done", output_index=index, item=item)
        yield event("response.completed", response=response)

    # -- Chat Completions ------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages") or []
        finished = any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)
        tools = _function_tools(body.get("tools") or [], chat=True)
        entry = self._log(request, body, "chat", tools, finished)
        text, call = self._turn(entry, tools)
        n = next(self._ids)
        usage = {"prompt_tokens": USAGE["input"], "completion_tokens": USAGE["output"],
                 "total_tokens": USAGE["input"] + USAGE["output"]}
        calls = [{"id": f"call_{n}", "type": "function",
                  "function": {"name": call[0], "arguments": json.dumps(call[1])}}] if call else []
        head = {"id": f"chatcmpl-{n}", "created": int(time.time()), "model": entry.model}
        finish = "tool_calls" if calls else "stop"
        if not entry.stream:
            message = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
            return JSONResponse({**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": message, "finish_reason": finish}]})
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self._chat_chunks(head, text, calls, finish, usage if with_usage else None),
                                 media_type="text/event-stream")

    @staticmethod
    async def _chat_chunks(head: dict[str, Any], text: str, calls: list[dict[str, Any]], finish: str,
                           usage: dict[str, int] | None) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
            return _sse({**head, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}, named=False)

        yield chunk({"role": "assistant", "content": ""})
        for piece in _pieces(text):
            yield chunk({"content": piece})
        for index, call in enumerate(calls):
            yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"], "arguments": ""}}]})
            for piece in _pieces(call["function"]["arguments"]):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, finish)
        if usage is not None:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}, named=False)
        yield "data: [DONE]\n\n"


def _pieces(text: str, size: int = 12) -> list[str]:
    """`text` in small pieces, so a client meets real deltas."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@contextmanager
def serve(app: Any, host: str = "0.0.0.0") -> Iterator[int]:
    """`app` served by uvicorn on a thread, on a free port of `host` (all interfaces by default, so
    containers reach it through the Docker bridge); yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
