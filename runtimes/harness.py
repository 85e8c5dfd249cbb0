"""Runtime harnesses: how each agent CLI is launched and how its stdout becomes typed events.

`claude-code` (alias `claude`) and `codex` are structured: their CLIs stream JSON lines that are
parsed one at a time, statelessly (harnesses are shared singletons). `custom` runs the user's own
command with `sh -c`. `osa`, `pi` and `hermes` are generic adapters: the CLI named after the
runtime is started without arguments, the prompt arrives on stdin, and its stdout is the answer.
"""

from __future__ import annotations

import json
from typing import Any

from engine.ports import EventDraft, Harness, HarnessInput, Parsed

SUMMARY_CHARS = 200
OUTPUT_CHARS = 4000


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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text_of(content: Any) -> str:
    """Text of a tool result's `content`: a string, or a list of `{"type": "text"}` blocks."""
    if isinstance(content, str):
        return content
    parts = [_str(_dict(block).get("text")) for block in _list(content)]
    return "\n".join(part for part in parts if part)


class StructuredHarness:
    """Shared line handling for JSON-lines runtimes: blank, non-JSON and malformed lines."""

    provider: str = ""
    binary: str | None = None
    structured: bool = True

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


class PlainHarness:
    """A runtime whose stdout is the answer: started as `[binary]` with the prompt on stdin."""

    structured = False

    def __init__(self, provider: str, binary: str | None = None) -> None:
        self.provider = provider
        self.binary: str | None = binary or provider

    def argv(self, run: HarnessInput) -> list[str]:
        return [self.binary or self.provider]

    def parse_line(self, line: str) -> Parsed:
        return raw_line(line) if line.strip() else Parsed()


class CustomHarness(PlainHarness):
    """The user's own command, run with `sh -c`; the prompt is on stdin and in AGENTDOCK_PROMPT."""

    def __init__(self) -> None:
        super().__init__("custom")
        self.binary = None

    def argv(self, run: HarnessInput) -> list[str]:
        if not run.command:
            raise ValueError("the custom provider needs a command")
        return ["sh", "-c", run.command]


class ClaudeCodeHarness(StructuredHarness):
    """Claude Code in headless print mode, streaming JSON messages; the prompt is read from stdin."""

    binary = "claude"

    def __init__(self, provider: str = "claude-code") -> None:
        self.provider = provider

    def argv(self, run: HarnessInput) -> list[str]:
        argv = ["claude", "-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
        if run.model:
            argv += ["--model", run.model]
        return argv

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "assistant":
            return Parsed(events=self._assistant(_list(_dict(obj.get("message")).get("content"))))
        if kind == "user":
            return Parsed(events=self._tool_results(_list(_dict(obj.get("message")).get("content"))))
        if kind == "result":
            return self._result(obj)
        return Parsed()

    @staticmethod
    def _assistant(blocks: list[Any]) -> list[EventDraft]:
        events: list[EventDraft] = []
        for block in map(_dict, blocks):
            if block.get("type") == "text" and _str(block.get("text")):
                text = block["text"]
                events.append(EventDraft(type="message", message=summarize(text), payload={"text": text}))
            elif block.get("type") == "tool_use":
                name, tool_input = _str(block.get("name")), _dict(block.get("input"))
                events.append(EventDraft(
                    type="tool_use", message=summarize(f"{name} {json.dumps(tool_input)}"),
                    payload={"id": block.get("id"), "name": name, "input": tool_input},
                ))
                if name == "Bash":
                    command = _str(tool_input.get("command"))
                    events.append(EventDraft(
                        type="command_started", message=summarize(command),
                        payload={"command": command, "tool_use_id": block.get("id")},
                    ))
        return events

    @staticmethod
    def _tool_results(blocks: list[Any]) -> list[EventDraft]:
        events: list[EventDraft] = []
        for block in map(_dict, blocks):
            if block.get("type") != "tool_result":
                continue
            output = _text_of(block.get("content"))
            is_error = bool(block.get("is_error"))
            events.append(EventDraft(
                type="command_finished",
                message=summarize(("error: " if is_error else "") + (output or "(no output)")),
                payload={"tool_use_id": block.get("tool_use_id"), "is_error": is_error,
                         "output": truncate(output)},
            ))
        return events

    @staticmethod
    def _result(obj: dict[str, Any]) -> Parsed:
        subtype = _str(obj.get("subtype")) or "unknown"
        is_error = bool(obj.get("is_error")) or subtype != "success"
        payload: dict[str, Any] = {
            "final": True, "subtype": subtype, "is_error": is_error,
            "num_turns": obj.get("num_turns"), "total_cost_usd": obj.get("total_cost_usd"),
        }
        errors = [e for e in _list(obj.get("errors")) if isinstance(e, str)]
        if errors:
            payload["errors"] = errors
        turns = obj.get("num_turns")
        message = f"Run failed ({subtype})" if is_error else "Run finished"
        if isinstance(turns, int):
            message += f" after {turns} turn{'s' if turns != 1 else ''}"
        if errors:
            message += ": " + "; ".join(errors)
        result = obj.get("result")
        return Parsed(
            events=[EventDraft(type="message", message=summarize(message), payload=payload)],
            output=result if isinstance(result, str) else None,
        )


class CodexHarness(StructuredHarness):
    """Codex `exec` with JSONL events; `-` as the prompt argument makes it read the prompt from stdin."""

    provider = "codex"
    binary = "codex"

    def argv(self, run: HarnessInput) -> list[str]:
        argv = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        if run.model:
            argv += ["--model", run.model]
        return argv + ["-"]

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "item.started":
            return Parsed(events=self._started(_dict(obj.get("item"))))
        if kind == "item.completed":
            return self._completed(_dict(obj.get("item")))
        if kind == "turn.failed":
            return self._error(_str(_dict(obj.get("error")).get("message")) or "turn failed", kind)
        if kind == "error":
            return self._error(_str(obj.get("message")) or "error", kind)
        return Parsed()

    @staticmethod
    def _started(item: dict[str, Any]) -> list[EventDraft]:
        kind = item.get("type")
        if kind == "command_execution":
            command = _str(item.get("command"))
            return [EventDraft(type="command_started", message=summarize(command),
                               payload={"command": command, "id": item.get("id")})]
        if kind == "mcp_tool_call":
            name = f"{_str(item.get('server'))}.{_str(item.get('tool'))}"
            arguments = item.get("arguments")
            return [EventDraft(type="tool_use", message=summarize(f"{name} {json.dumps(arguments)}"),
                               payload={"id": item.get("id"), "name": name, "input": arguments})]
        if kind == "collab_tool_call":
            name = _str(item.get("tool"))
            return [EventDraft(type="tool_use", message=summarize(name),
                               payload={"id": item.get("id"), "name": name,
                                        "input": {"prompt": item.get("prompt")}})]
        return []

    @staticmethod
    def _completed(item: dict[str, Any]) -> Parsed:
        kind = item.get("type")
        if kind == "agent_message":
            text = _str(item.get("text"))
            return Parsed(events=[EventDraft(type="message", message=summarize(text), payload={"text": text})],
                          output=text)
        if kind == "command_execution":
            command, output = _str(item.get("command")), _str(item.get("aggregated_output"))
            exit_code = item.get("exit_code")
            return Parsed(events=[EventDraft(
                type="command_finished", message=summarize(f"{command} -> exit {exit_code}"),
                payload={"command": command, "exit_code": exit_code, "status": item.get("status"),
                         "output": truncate(output), "id": item.get("id")},
            )])
        if kind == "file_change":
            changes = _list(item.get("changes"))
            paths = ", ".join(_str(_dict(c).get("path")) for c in changes)
            return Parsed(events=[EventDraft(
                type="tool_use", message=summarize(f"file_change {paths}"),
                payload={"id": item.get("id"), "name": "file_change",
                         "input": {"changes": changes}, "status": item.get("status")},
            )])
        if kind == "web_search":
            query = _str(item.get("query"))
            return Parsed(events=[EventDraft(
                type="tool_use", message=summarize(f"web_search {query}"),
                payload={"id": item.get("id"), "name": "web_search", "input": {"query": query}},
            )])
        if kind == "error":
            message = _str(item.get("message")) or "error"
            return Parsed(events=[EventDraft(type="message", message=summarize(message),
                                             payload={"error": True, "text": message})])
        return Parsed()

    @staticmethod
    def _error(message: str, source: str) -> Parsed:
        return Parsed(events=[EventDraft(type="message", message=summarize(message),
                                         payload={"error": True, "source": source, "text": message})])


HARNESSES: dict[str, Harness] = {
    "custom": CustomHarness(),
    "claude-code": ClaudeCodeHarness("claude-code"),
    "claude": ClaudeCodeHarness("claude"),
    "codex": CodexHarness(),
    "osa": PlainHarness("osa"),
    "pi": PlainHarness("pi"),
    "hermes": PlainHarness("hermes"),
}


def get(provider: str) -> Harness:
    """The harness for a provider name; raises KeyError for an unknown one."""
    return HARNESSES[str(provider)]
