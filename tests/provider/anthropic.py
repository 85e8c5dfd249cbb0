"""A scripted Anthropic Messages API: the model a real CLI talks to in tests.

The conversation is decided from each request alone, so concurrent and repeated requests get the
same answer: a request offering a file-writing tool (claude's `Write`, pi's `write`) and carrying no
tool result yet gets some text and one call of that tool; once a tool result is in the messages, the
final answer. Any other request (a title or summary with a small model, no tools) gets a short text;
`/v1/messages/count_tokens` a count; anything else is answered (GET/HEAD: 200, else 404) and recorded.
With `Script.key` set, a message request carrying another key is refused as the API does (401).
Every request is kept in `seen`, for assertions on the key and the tools a CLI sent.

Both the streaming (SSE: message_start, content_block_start/delta/stop, message_delta with the stop
reason and usage, message_stop) and the plain JSON form are spoken.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

TOOL_USE_ID = "toolu_scripted_write_1"
MAIN_USAGE = {"input_tokens": 1200, "output_tokens": 40}
"""Tokens each scripted turn of the task reports; a side request reports SIDE_USAGE."""
SIDE_USAGE = {"input_tokens": 30, "output_tokens": 5}


@dataclass(frozen=True)
class Script:
    """The task's conversation: `opening` and a write of `content` to `path`, then `answer`."""

    path: str
    content: str
    opening: str = "I will write the file now."
    answer: str = "Done: the file is written."
    side: str = "Scripted task"
    """What a request outside the task (a title, a summary) is answered."""
    key: str | None = None
    """The only API key accepted, when set: a message request with another gets the API's 401."""


@dataclass
class Seen:
    """One request as it came, and which part of the script answered it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    answered: str = ""

    @property
    def api_key(self) -> str | None:
        """The credential it carried: `x-api-key`, or a bearer token."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)

    @property
    def tools(self) -> list[str]:
        return [t.get("name", "") for t in self._body.get("tools") or [] if isinstance(t, dict)]

    @property
    def model(self) -> str | None:
        return self._body.get("model")

    @property
    def stream(self) -> bool:
        return bool(self._body.get("stream"))

    @property
    def _body(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


def write_tool(tools: Any) -> tuple[str, str, str] | None:
    """(name, path field, content field) of the file-writing tool among a request's `tools`, if any."""
    for tool in tools or []:
        if not isinstance(tool, dict) or str(tool.get("name", "")).lower() != "write":
            continue
        props = (tool.get("input_schema") or {}).get("properties") or {}
        path_key = next((k for k in ("file_path", "path") if k in props), None)
        if path_key and "content" in props:
            return tool["name"], path_key, "content"
    return None


def has_tool_result(messages: Any) -> bool:
    return any(isinstance(block, dict) and block.get("type") == "tool_result"
               for message in messages or [] if isinstance(message, dict)
               for block in (message.get("content") if isinstance(message.get("content"), list) else []))


class ScriptedAnthropic:
    """The server's app and what it has seen; `serving()` runs it on a port in a thread."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self._ids = 0
        self.app = Starlette(routes=[
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            Route("/{rest:path}", self._other, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ])

    def task_requests(self) -> list[Seen]:
        """The requests the scripted task answered (tool call, then final), in order."""
        return [s for s in self.seen if s.answered in ("tool_use", "final")]

    async def _record(self, request: Request) -> Seen:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        seen = Seen(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.seen.append(seen)
        return seen

    async def _messages(self, request: Request) -> Response:
        seen = await self._record(request)
        if self.script.key is not None and seen.api_key != self.script.key:
            seen.answered = "refused"
            return JSONResponse({"type": "error", "error": {"type": "authentication_error",
                                                            "message": "invalid x-api-key"}}, status_code=401)
        body = seen.body if isinstance(seen.body, dict) else {}
        tool = write_tool(body.get("tools"))
        blocks: list[dict[str, Any]]
        if tool is None:
            seen.answered, stop, usage = "side", "end_turn", SIDE_USAGE
            blocks = [{"type": "text", "text": self.script.side}]
        elif has_tool_result(body.get("messages")):
            seen.answered, stop, usage = "final", "end_turn", MAIN_USAGE
            blocks = [{"type": "text", "text": self.script.answer}]
        else:
            name, path_key, content_key = tool
            seen.answered, stop, usage = "tool_use", "tool_use", MAIN_USAGE
            blocks = [{"type": "text", "text": self.script.opening},
                      {"type": "tool_use", "id": TOOL_USE_ID, "name": name,
                       "input": {path_key: self.script.path, content_key: self.script.content}}]
        log.info("scripted anthropic: %s %s model=%s stream=%s tools=%s -> %s", request.method, request.url.path,
                 seen.model, seen.stream, seen.tools, seen.answered)
        self._ids += 1
        message = {"id": f"msg_scripted_{self._ids}", "type": "message", "role": "assistant",
                   "model": body.get("model") or "scripted", "content": blocks, "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}
        if not seen.stream:
            return JSONResponse(message)
        return EventSourceResponse(_events(message), sep="\n")

    async def _count_tokens(self, request: Request) -> Response:
        seen = await self._record(request)
        seen.answered = "count_tokens"
        return JSONResponse({"input_tokens": len(json.dumps(seen.body)) // 4})

    async def _other(self, request: Request) -> Response:
        seen = await self._record(request)
        log.info("scripted anthropic: unscripted %s %s", request.method, request.url.path)
        if request.method in ("GET", "HEAD"):
            seen.answered = "ok"
            return JSONResponse({})
        seen.answered = "not_found"
        return JSONResponse({"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"no such endpoint: {request.url.path}"}},
                            status_code=404)

    @contextmanager
    def serving(self, host: str = "127.0.0.1") -> Iterator[int]:
        """Serve on a free port of `host` in a thread; yields the port."""
        server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=0, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, name="scripted-anthropic", daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the scripted Anthropic server did not start")
                time.sleep(0.02)
            yield server.servers[0].sockets[0].getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(10)


async def _events(message: dict[str, Any]) -> Any:
    """`message` as the Messages API streams it: text in two deltas, a tool's input as JSON pieces."""
    def event(kind: str, **data: Any) -> dict[str, str]:
        return {"event": kind, "data": json.dumps({"type": kind, **data})}

    usage = message["usage"]
    yield event("message_start", message={**message, "content": [], "stop_reason": None,
                                          "usage": {**usage, "output_tokens": 1}})
    yield event("ping")
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
            half = len(block["text"]) // 2
            for piece in (block["text"][:half], block["text"][half:]):
                yield event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
        else:
            yield event("content_block_start", index=index, content_block={**block, "input": {}})
            whole = json.dumps(block["input"])
            for start in range(0, len(whole), 24):
                yield event("content_block_delta", index=index,
                            delta={"type": "input_json_delta", "partial_json": whole[start:start + 24]})
        yield event("content_block_stop", index=index)
    yield event("message_delta", delta={"stop_reason": message["stop_reason"], "stop_sequence": None},
                usage={"output_tokens": usage["output_tokens"]})
    yield event("message_stop")
