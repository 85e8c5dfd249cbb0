"""Reading token usage from providers' answers as they pass, in whatever chunks they arrive, and the
catalog's upstream overrides."""

from __future__ import annotations

import json

import pytest

from engine import errors, providers


def sse(*objs: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def metered(content_type: str, body: bytes, size: int) -> tuple[int | None, int | None]:
    meter = providers.Meter(content_type)
    for i in range(0, len(body), size):
        meter.feed(body[i:i + size])
    meter.end()
    return meter.input_tokens, meter.output_tokens


ANSWERS = {
    "anthropic plain": ("application/json", json.dumps(
        {"type": "message", "usage": {"input_tokens": 12, "output_tokens": 4}}).encode(), (12, 4)),
    "anthropic stream": ("text/event-stream; charset=utf-8", sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"text": "hi \"usage\""}},
        {"type": "message_delta", "usage": {"output_tokens": 9}}), (30, 9)),
    "openai chat plain": ("application/json", json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}).encode(), (5, 6)),
    "openai chat stream": ("text/event-stream", sse(
        {"choices": [{"delta": {"content": "a"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 2}}), (8, 2)),
    "openai responses stream": ("text/event-stream", sse(
        {"type": "response.created", "response": {"usage": None}},
        {"type": "response.output_text.delta", "delta": "x"},
        {"type": "response.completed", "response": {"usage": {"input_tokens": 40, "output_tokens": 17}}}), (40, 17)),
    "no usage": ("application/json", b'{"error": {"type": "overloaded"}}', (None, None)),
    "not json": ("text/html", b"<html>bad gateway</html>", (None, None)),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_usage_is_read_from_each_providers_answer_whatever_its_chunks(name, size):
    content_type, body, expected = ANSWERS[name]
    assert metered(content_type, body, size) == expected


def test_upstreams_are_the_real_apis_unless_a_setting_overrides_one():
    assert providers.upstreams("") == {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com",
                                       "codex": "https://api.openai.com"}
    assert providers.upstreams(" anthropic=http://127.0.0.1:9/ ")["anthropic"] == "http://127.0.0.1:9"
    for bad in ("anthropic", "gemini=http://x", "openai=ftp://x"):
        with pytest.raises(errors.InvalidInput) as exc:
            providers.upstreams(bad)
        assert exc.value.field == "AGENTDOCK_GATEWAY_UPSTREAMS"
