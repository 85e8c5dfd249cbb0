"""Claude Code (`claude-code`, alias `claude`): headless print mode streaming JSON messages.

`claude -p --output-format stream-json --verbose --dangerously-skip-permissions [--model M]`, the prompt
on stdin. Without a credential the real CLI answers with an assistant message carrying
`"error": "authentication_failed"` ("Not logged in · Please run /login") and a `result` with
`is_error: true`, and exits 1; an API key it rejects gives `authentication_failed` too.

Against another endpoint it needs only `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY` (it checks the
endpoint with `HEAD /api/hello`, then streams `POST /v1/messages`; each retry of a failed call is a
`system` line with subtype `api_retry`). Each assistant line holds one content block (text, or one tool
use) with a partial usage; the token usage of the whole run is the `result`'s. Its telemetry, error
reports, update checks and other side traffic are turned off (`QUIET`): without the internet they cost
a run about 14 s (measured on a Docker network with no route out).
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, HarnessInput, Parsed
from runtimes.adapters.base import (StructuredAdapter, as_dict, as_list, as_str, summarize, text_of, tokens,
                                    truncate, with_env)

QUIET = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
         "DISABLE_AUTOUPDATER": "1", "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}


class ClaudeCodeAdapter(StructuredAdapter):
    binary = "claude"
    secrets = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
    auth_patterns = re.compile(r"authentication_failed|Not logged in|Invalid API key|invalid x-api-key|"
                               r"OAuth token has expired|/login", re.IGNORECASE)

    def __init__(self, provider: str = "claude-code") -> None:
        self.provider = provider

    def argv(self, run: HarnessInput) -> list[str]:
        argv = ["claude", "-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
        if run.model:
            argv += ["--model", run.model]
        return with_env(QUIET, argv)

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "assistant":
            message = as_dict(obj.get("message"))
            events = self._assistant(as_list(message.get("content")))
            error = as_str(obj.get("error"))
            failure = None
            if error:
                said = text_of(message.get("content")) or error
                failure = self.auth_failure(f"{error}: {said}") if error == "authentication_failed" else None
            return Parsed(events=events, failure=failure)
        if kind == "user":
            return Parsed(events=self._tool_results(as_list(as_dict(obj.get("message")).get("content"))))
        if kind == "result":
            return self._result(obj)
        if kind == "system" and obj.get("subtype") == "api_retry":
            return self._retry(obj)
        return Parsed()

    def _retry(self, obj: dict[str, Any]) -> Parsed:
        """A model call that failed and is tried again (a refused key too: claude retries a 401 ten times,
        minutes in all, before its `result`)."""
        error, status = as_str(obj.get("error")) or "error", obj.get("error_status")
        text = f"API error {status} ({error}), attempt {obj.get('attempt')} of {obj.get('max_retries')}"
        return Parsed(events=[EventDraft(type="message", message=summarize(f"retrying: {text}"),
                                         payload={"error": True, "text": text, "status": status,
                                                  "attempt": obj.get("attempt")})],
                      failure=self.auth_failure(error) if error == "authentication_failed" else None)

    @staticmethod
    def _assistant(blocks: list[Any]) -> list[EventDraft]:
        events: list[EventDraft] = []
        for block in map(as_dict, blocks):
            if block.get("type") == "text" and as_str(block.get("text")):
                text = block["text"]
                events.append(EventDraft(type="message", message=summarize(text), payload={"text": text}))
            elif block.get("type") == "tool_use":
                name, tool_input = as_str(block.get("name")), as_dict(block.get("input"))
                events.append(EventDraft(
                    type="tool_use", message=summarize(f"{name} {json.dumps(tool_input)}"),
                    payload={"id": block.get("id"), "name": name, "input": tool_input},
                ))
                if name == "Bash":
                    command = as_str(tool_input.get("command"))
                    events.append(EventDraft(
                        type="command_started", message=summarize(command),
                        payload={"command": command, "tool_use_id": block.get("id")},
                    ))
        return events

    @staticmethod
    def _tool_results(blocks: list[Any]) -> list[EventDraft]:
        events: list[EventDraft] = []
        for block in map(as_dict, blocks):
            if block.get("type") != "tool_result":
                continue
            output = text_of(block.get("content"))
            is_error = bool(block.get("is_error"))
            events.append(EventDraft(
                type="command_finished",
                message=summarize(("error: " if is_error else "") + (output or "(no output)")),
                payload={"tool_use_id": block.get("tool_use_id"), "is_error": is_error,
                         "output": truncate(output)},
            ))
        return events

    def _result(self, obj: dict[str, Any]) -> Parsed:
        subtype = as_str(obj.get("subtype")) or "unknown"
        is_error = bool(obj.get("is_error")) or subtype != "success"
        payload: dict[str, Any] = {
            "final": True, "subtype": subtype, "is_error": is_error,
            "num_turns": obj.get("num_turns"), "total_cost_usd": obj.get("total_cost_usd"),
        }
        errors = [e for e in as_list(obj.get("errors")) if isinstance(e, str)]
        if errors:
            payload["errors"] = errors
        usage = as_dict(obj.get("usage"))
        used = tokens(usage.get("input_tokens"), usage.get("output_tokens"), usage.get("cache_read_input_tokens"),
                      usage.get("cache_creation_input_tokens"))
        if used:
            payload["usage"] = used
        turns = obj.get("num_turns")
        message = f"Run failed ({subtype})" if is_error else "Run finished"
        if isinstance(turns, int):
            message += f" after {turns} turn{'s' if turns != 1 else ''}"
        if errors:
            message += ": " + "; ".join(errors)
        result = obj.get("result")
        failure = None
        if is_error:
            failure = self.auth_failure(as_str(result) or "; ".join(errors))
        return Parsed(
            events=[EventDraft(type="message", message=summarize(message), payload=payload)],
            output=result if isinstance(result, str) else None, failure=failure,
        )
