"""A canned Anthropic Messages API for the model gateway's tests and bench: one plain answer, one
streamed (SSE) answer that holds after its first event until told to go on, and what it was sent.

It runs in a thread of its own (uvicorn with its own event loop), so a test's event loop and the
engine in it are not involved in serving it."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runtimes.gateway import tcp_listener

PLAIN_USAGE = {"input_tokens": 7, "output_tokens": 3}
STREAM_INPUT, STREAM_OUTPUT = 11, 5


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class CannedUpstream:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.keys: list[str | None] = []
        """The `x-api-key` of each request to /v1/messages, in order."""
        self.bodies: list[dict[str, Any]] = []
        self.go_on = threading.Event()
        """Set by a request to /v1/go-on: the held stream sends the rest."""
        self.listener = tcp_listener(host, 0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"]),
                                Route("/v1/go-on", self.release, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)

    def __enter__(self) -> CannedUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.go_on.set()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.listener.close()

    async def release(self, request: Request) -> Response:
        self.go_on.set()
        return JSONResponse({"ok": True})

    async def messages(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.keys.append(request.headers.get("x-api-key"))
        self.bodies.append(body)
        if not body.get("stream"):
            return JSONResponse({"id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
                                 "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                                 "usage": PLAIN_USAGE})
        hold = bool(body.get("metadata", {}).get("hold"))

        async def events() -> Any:
            yield sse("message_start", {"type": "message_start", "message": {
                "id": "msg_2", "type": "message", "role": "assistant", "content": [],
                "usage": {"input_tokens": STREAM_INPUT, "output_tokens": 1}}})
            if hold:  # the client has this event before the rest exists: nothing on the way held it
                await anyio.to_thread.run_sync(self.go_on.wait, abandon_on_cancel=True)
                self.go_on.clear()
            for i, word in enumerate(["one", "two", "three"]):
                yield sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": f"{word}{i}"}})
            yield sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                        "usage": {"output_tokens": STREAM_OUTPUT}})
            yield sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")
