"""What every runtime adapter shares: line helpers, the structured (JSON lines) and plain bases, and
reading a missing or rejected credential out of what a runtime printed.

An adapter builds its CLI's non-interactive command line, turns its stdout into typed events and the
final answer, and classifies its failures. Adapters are stateless singletons: a line is parsed on
its own, and a failure is read from one line (`Parsed.failure`) or from the end of stderr.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, Failure, HarnessInput, Parsed

SUMMARY_CHARS = 200
OUTPUT_CHARS = 4000
AUTH_REQUIRED = "auth_required"


def summarize(text: str, limit: int = SUMMARY_CHARS) -> str:
    """One line of at most `limit` characters, for an event's `message`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def truncate(text: str, limit: int = OUTPUT_CHARS) -> str:
    """`text` cut to `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit} more characters]"


def raw_line(line: str) -> Parsed:
    """A line that is not a JSON object: kept verbatim as an `output` event."""
    return Parsed(events=[EventDraft(type="output", message=summarize(line), payload={"line": line})])


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def text_of(content: Any) -> str:
    """Text of a tool result's `content`: a string, or a list of `{"type": "text"}` blocks."""
    if isinstance(content, str):
        return content
    parts = [as_str(as_dict(block).get("text")) for block in as_list(content)]
    return "\n".join(part for part in parts if part)


def tokens(input_tokens: Any, output_tokens: Any, cache_read: Any = None, cache_write: Any = None) -> dict[str, int]:
    """A model's token usage in one shape for every adapter (the integer figures it gave; others left out)."""
    figures = {"input_tokens": input_tokens, "output_tokens": output_tokens,
               "cache_read_tokens": cache_read, "cache_write_tokens": cache_write}
    return {k: v for k, v in figures.items() if isinstance(v, int) and not isinstance(v, bool)}


def with_env(env: dict[str, str], argv: list[str]) -> list[str]:
    """`argv` started by `env` with `env` added: a runtime's own settings (no telemetry, say), which win
    over a device's or a run's environment."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


def auth_required(provider: str, secrets: tuple[str, ...], said: str) -> Failure:
    """The failure of a run whose runtime had no credential, or had one refused: which secret to set."""
    first = secrets[0] if secrets else "API_KEY"
    names = " or ".join(secrets) if secrets else "its API key"
    return Failure(kind=AUTH_REQUIRED, message=(
        f"{provider} needs a credential: it said {summarize(said, 160)!r}. Store the key once with "
        f"`agentdock secrets set {first}` (value on stdin) and name it in the run: secrets: [{first}] "
        f"(this runtime reads {names})"))


class Adapter:
    """Defaults shared by every adapter."""

    provider: str = ""
    binary: str | None = None
    structured: bool = False
    secrets: tuple[str, ...] = ()
    """The environment variables (secret names) this runtime takes its credential from, best first."""
    auth_patterns: re.Pattern[str] | None = None
    """Text on stderr or in an error line that means the credential is missing or was refused."""

    def argv(self, run: HarnessInput) -> list[str]:
        raise NotImplementedError

    def parse_line(self, line: str) -> Parsed:
        return raw_line(line) if line.strip() else Parsed()

    def classify(self, exit_code: int | None, stderr_tail: str, hint: Failure | None) -> Failure | None:
        if hint is not None:
            return hint
        if self.auth_patterns is not None:
            for line in reversed(stderr_tail.splitlines()):
                if self.auth_patterns.search(line):
                    return auth_required(self.provider, self.secrets, line.strip())
        return None

    def gateway_env(self, provider: str, base_url: str, placeholder: str) -> dict[str, str]:
        """`<PROVIDER>_BASE_URL` and `<PROVIDER>_API_KEY`, what the Anthropic and OpenAI SDKs (and most CLIs
        built on them) read: an adapter whose CLI reads others overrides this."""
        return {f"{provider.upper()}_BASE_URL": base_url, f"{provider.upper()}_API_KEY": placeholder}

    def auth_failure(self, text: str) -> Failure | None:
        """`text` (an error the runtime reported) as an `auth_required` failure, if it is one."""
        if self.auth_patterns is not None and self.auth_patterns.search(text):
            return auth_required(self.provider, self.secrets, text)
        return None


class StructuredAdapter(Adapter):
    """Shared line handling for JSON-lines runtimes: blank, non-JSON and malformed lines."""

    structured = True

    def parse_line(self, line: str) -> Parsed:
        if not line.strip():
            return Parsed()
        try:
            obj = json.loads(line)
        except ValueError:
            return raw_line(line)
        if not isinstance(obj, dict):
            return raw_line(line)
        try:
            return self.parse_object(obj)
        except Exception:  # a shape we did not expect: keep the line rather than lose the run
            return raw_line(line)

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        raise NotImplementedError


def guarded(secrets: tuple[str, ...], provider: str, argv: list[str], files: tuple[str, ...] = (),
            prelude: str = "") -> list[str]:
    """`argv` behind a check that one of `secrets` (or a credentials file) is there. For a runtime that,
    without a credential, retries a network it may not have until the run times out: the check ends
    it at once with exit 78 and a line `classify` reads as `auth_required`. `prelude` is shell run
    first, with `argv` as "$@" (to add arguments known only in the device)."""
    have = " || ".join([*(f'[ -n "${{{s}:-}}" ]' for s in secrets), *(f'[ -s "{f}" ]' for f in files)])
    script = (f'{prelude}if {have}; then exec "$@"; fi; '
              f'echo "agentdock: {provider}: no credential: set one of {", ".join(secrets)}" >&2; exit 78')
    return ["sh", "-c", script, argv[0], *argv]
