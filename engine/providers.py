"""Model providers the gateway speaks for: where each one's API is, which stored secret is its
credential and how that credential goes on a request, and reading token usage from its answers.

A run given one of these credentials never receives it: its device gets a placeholder and the
gateway's base URL (`engine.gateway`), and the gateway puts the real credential on each request it
forwards to the provider's upstream. Adding a provider is a row in `CATALOG`.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from engine import errors


class Provider(NamedTuple):
    name: str
    """Also the gateway's path prefix: `http://<gateway>/<name>/...`."""
    upstream: str
    """Where requests go (scheme and host, no trailing slash); `gateway_upstreams` overrides it."""
    secret: str
    """The stored secret that is this provider's credential."""
    header: str
    """The request header the credential goes in."""
    scheme: str
    """Put before the credential in that header (`"Bearer "`), or nothing."""
    base_path: str
    """What the CLIs' base URL adds after the prefix (OpenAI's SDKs expect `/v1` in it)."""


CATALOG: dict[str, Provider] = {p.name: p for p in (
    Provider("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", "x-api-key", "", ""),
    Provider("openai", "https://api.openai.com", "OPENAI_API_KEY", "authorization", "Bearer ", "/v1"),
    # An OpenAI key stored under the name codex reads first (its adapter points codex's OpenAI side here).
    Provider("codex", "https://api.openai.com", "CODEX_API_KEY", "authorization", "Bearer ", "/v1"),
)}
BY_SECRET = {p.secret: p for p in CATALOG.values()}


def granted(secret_names: list[str]) -> list[Provider]:
    """The providers whose credential is among a run's secrets: it reaches them through the gateway."""
    return [BY_SECRET[name] for name in secret_names if name in BY_SECRET]


def upstreams(setting: str) -> dict[str, str]:
    """Each provider's upstream, with the overrides of the `gateway_upstreams` setting
    (`"anthropic=http://127.0.0.1:8080,openai=..."`)."""
    out = {name: p.upstream for name, p in CATALOG.items()}
    for item in filter(None, (part.strip() for part in setting.split(","))):
        name, sep, url = item.partition("=")
        if not sep or name.strip() not in CATALOG or not url.strip().startswith(("http://", "https://")):
            raise errors.InvalidInput("AGENTDOCK_GATEWAY_UPSTREAMS", f"{item!r} is not PROVIDER=http(s)://HOST[:PORT] "
                                      f"with PROVIDER one of {', '.join(CATALOG)}")
        out[name.strip()] = url.strip().rstrip("/")
    return out


MAX_BODY_BYTES = 8 * 1_048_576
"""The most of a plain (not streamed) answer kept to read its usage; a bigger one is passed on unread."""


class Meter:
    """Reads the tokens of one answer as it passes, chunk by chunk, without holding it up.

    Every provider here names usage the same few ways: `usage` at the top (Anthropic's and OpenAI's
    plain answers, OpenAI Chat's last stream chunk, Anthropic's `message_delta`), inside `message`
    (Anthropic's `message_start`) or inside `response` (OpenAI Responses' `response.completed`), as
    `input_tokens`/`output_tokens` or `prompt_tokens`/`completion_tokens`. Counts in a stream are
    running totals, so the last one seen of each is the answer's."""

    def __init__(self, content_type: str) -> None:
        self.stream = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self._buf = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._buf += chunk
        if self.stream:
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            for line in lines:
                self._line(bytes(line))
        if len(self._buf) > MAX_BODY_BYTES:
            self._overflow, self._buf = True, bytearray()

    def end(self) -> None:
        if self._overflow:
            return
        if self.stream:
            self._line(bytes(self._buf))
        else:
            self._take(_json(bytes(self._buf)))
        self._buf = bytearray()

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            self._take(_json(line[5:]))

    def _take(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        for holder in (obj, obj.get("message"), obj.get("response")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if not isinstance(usage, dict):
                continue
            given = _count(usage, "input_tokens", "prompt_tokens")
            if given is not None:
                self.input_tokens = given
            given = _count(usage, "output_tokens", "completion_tokens")
            if given is not None:
                self.output_tokens = given


def _count(usage: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
