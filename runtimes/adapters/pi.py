"""Pi (`pi`, @mariozechner/pi-coding-agent): print mode with its JSON event stream.

`pi -p --mode json --no-session [--model M]`, the prompt on stdin (print mode reads piped stdin).
Each line is one of its `AgentSessionEvent`s: `message_end` carries a whole message (the assistant's
text and tool calls, or its `errorMessage`), `tool_execution_start`/`_end` a tool's call and result.
Without a key for its model's provider the real CLI prints "No API key found for the selected model."
on stderr and exits 1.

Pi does not read `ANTHROPIC_BASE_URL`: its Anthropic endpoint is the model's `baseUrl`, which only a
`models.json` in its agent directory overrides. So, when that variable is set, the command line writes
one for the run (`{"providers": {"anthropic": {"baseUrl": ...}}}`) into a directory of its own and points
`PI_CODING_AGENT_DIR` there, and pi works with the same two variables as claude (`ANTHROPIC_BASE_URL`,
`ANTHROPIC_API_KEY`). Its startup network calls (version check, tool downloads) and install telemetry
are turned off (`PI_OFFLINE`, `PI_TELEMETRY`). In `--mode json` pi exits 0 even when the model call
failed (a refused key: a `message_end` with `stopReason: "error"` and `errorMessage: "401 {...}"`), so
the command line passes its stream through `awk` and exits 1 when the last assistant message failed.
Usage: each assistant message's `usage`, summed over the run's messages in `agent_end`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, HarnessInput, Parsed
from runtimes.adapters.base import (StructuredAdapter, as_dict, as_list, as_str, summarize, text_of, tokens,
                                    truncate)

LAUNCH = r"""export PI_OFFLINE=1 PI_TELEMETRY=0
dir="$(mktemp -d)" || exit 1
if [ -n "${ANTHROPIC_BASE_URL:-}" ]; then
  mkdir "$dir/agent" && export PI_CODING_AGENT_DIR="$dir/agent"
  url="$(printf %s "$ANTHROPIC_BASE_URL" | sed 's/[\\"]/\\&/g')"
  printf '{"providers": {"anthropic": {"baseUrl": "%s"}}}\n' "$url" > "$dir/agent/models.json"
fi
{ "$@"; echo "$?" > "$dir/exit"; } | awk '{ print; fflush() }
  /^\{"type":"message_end","message":\{"role":"assistant"/ { failed = /"stopReason":"(error|aborted)"/ }
  END { exit failed }'
failed=$?
code="$(cat "$dir/exit" 2>/dev/null || echo 1)"
rm -rf "$dir"
[ "$code" = 0 ] || exit "$code"
exit "$failed"
"""
"""Pi's command line behind `sh -c`: quiet, pointed at `ANTHROPIC_BASE_URL` when that is set, and
exiting 1 when its last assistant message failed (in `--mode json` pi itself exits 0 then)."""


class PiAdapter(StructuredAdapter):
    provider = "pi"
    binary = "pi"
    secrets = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY")
    auth_patterns = re.compile(r"No API key found|401|authentication_error|invalid x-api-key|Incorrect API key|"
                               r"API key not valid", re.IGNORECASE)

    def argv(self, run: HarnessInput) -> list[str]:
        argv = ["pi", "-p", "--mode", "json", "--no-session"]
        if run.model:
            argv += ["--model", run.model]
        return ["sh", "-c", LAUNCH, argv[0], *argv]

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "message_end":
            return self._message(as_dict(obj.get("message")))
        if kind == "tool_execution_start":
            name, args = as_str(obj.get("toolName")), as_dict(obj.get("args"))
            events = [EventDraft(type="tool_use", message=summarize(f"{name} {json.dumps(args)}"),
                                 payload={"id": obj.get("toolCallId"), "name": name, "input": args})]
            if name == "bash":
                command = as_str(args.get("command"))
                events.append(EventDraft(type="command_started", message=summarize(command),
                                         payload={"command": command, "tool_use_id": obj.get("toolCallId")}))
            return Parsed(events=events)
        if kind == "tool_execution_end":
            result = obj.get("result")
            output = text_of(as_dict(result).get("content")) if isinstance(result, dict) else as_str(result)
            is_error = bool(obj.get("isError"))
            return Parsed(events=[EventDraft(
                type="command_finished", message=summarize(("error: " if is_error else "") + (output or "(no output)")),
                payload={"tool_use_id": obj.get("toolCallId"), "name": obj.get("toolName"), "is_error": is_error,
                         "output": truncate(output)})])
        if kind == "auto_retry_start":
            text = as_str(obj.get("errorMessage")) or "retrying"
            return Parsed(events=[EventDraft(type="message", message=summarize(f"retrying: {text}"),
                                             payload={"error": True, "text": text, "attempt": obj.get("attempt")})],
                          failure=self.auth_failure(text))
        if kind == "agent_end":
            messages = [as_dict(m) for m in as_list(obj.get("messages"))]
            payload: dict[str, Any] = {"final": True, "messages": len(messages)}
            used = [as_dict(m.get("usage")) for m in messages if m.get("role") == "assistant"]
            if used:
                payload["usage"] = tokens(*(sum(u.get(k) or 0 for u in used)
                                            for k in ("input", "output", "cacheRead", "cacheWrite")))
            return Parsed(events=[EventDraft(type="message", message="Run finished", payload=payload)])
        return Parsed()

    def _message(self, message: dict[str, Any]) -> Parsed:
        if message.get("role") != "assistant":
            return Parsed()
        text = "\n".join(as_str(b.get("text")) for b in map(as_dict, as_list(message.get("content")))
                         if b.get("type") == "text" and as_str(b.get("text")))
        events = []
        if text:
            usage = as_dict(message.get("usage"))
            events.append(EventDraft(type="message", message=summarize(text), payload={
                "text": text, "usage": tokens(usage.get("input"), usage.get("output"), usage.get("cacheRead"),
                                              usage.get("cacheWrite"))}))
        error = as_str(message.get("errorMessage"))
        if message.get("stopReason") == "error" or error:
            error = error or "the model call failed"
            events.append(EventDraft(type="message", message=summarize(error), payload={"error": True, "text": error}))
            return Parsed(events=events, failure=self.auth_failure(error))
        return Parsed(events=events, output=text or None)
