"""Pi (`pi`, @mariozechner/pi-coding-agent): print mode with its JSON event stream.

`pi -p --mode json --no-session [--model M]`, the prompt on stdin (print mode reads piped stdin).
Each line is one of its `AgentSessionEvent`s: `message_end` carries a whole message (the assistant's
text and tool calls, or its `errorMessage`), `tool_execution_start`/`_end` a tool's call and result.
Without a key for its model's provider the real CLI prints "No API key found for the selected model."
on stderr and exits 1.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, HarnessInput, Parsed
from runtimes.adapters.base import StructuredAdapter, as_dict, as_list, as_str, summarize, text_of, truncate


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
        return argv

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
            return Parsed(events=[EventDraft(type="message", message="Run finished",
                                             payload={"final": True, "messages": len(as_list(obj.get("messages")))})])
        return Parsed()

    def _message(self, message: dict[str, Any]) -> Parsed:
        if message.get("role") != "assistant":
            return Parsed()
        text = "\n".join(as_str(b.get("text")) for b in map(as_dict, as_list(message.get("content")))
                         if b.get("type") == "text" and as_str(b.get("text")))
        events = []
        if text:
            events.append(EventDraft(type="message", message=summarize(text), payload={"text": text}))
        error = as_str(message.get("errorMessage"))
        if message.get("stopReason") == "error" or error:
            error = error or "the model call failed"
            events.append(EventDraft(type="message", message=summarize(error), payload={"error": True, "text": error}))
            return Parsed(events=events, failure=self.auth_failure(error))
        return Parsed(events=events, output=text or None)
