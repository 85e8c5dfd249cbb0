"""Hermes Agent (`hermes`): one-shot mode, its session read back as JSON lines.

`hermes --oneshot=PROMPT [--model M] --usage-file F` runs the task (tools run, approvals bypassed) and
prints only the final answer; it has no streaming JSON mode. So the command line runs it, then reads
what it recorded: the session's messages from its store ($HERMES_HOME/state.db, SQLite, by the
session id the usage file names), the usage file (tokens over the run's model calls) and the
answer, printed as JSON lines this adapter parses after the run. The `=` form keeps a prompt that
starts with `-` a prompt. Without a provider key the real CLI says "No inference provider
configured" and exits 1.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, HarnessInput, Parsed
from runtimes.adapters.base import StructuredAdapter, as_dict, as_list, as_str, summarize, truncate

READ_SESSION = """
import json, os, sqlite3, sys
run = sys.argv[1]
def emit(obj):
    print(json.dumps(obj), flush=True)
try:
    usage = json.load(open(os.path.join(run, "usage.json")))
except (OSError, ValueError):
    usage = {}
home = os.environ.get("HERMES_HOME") or os.path.expanduser("~/.hermes")
if usage.get("session_id"):
    try:
        db = sqlite3.connect("file:" + os.path.join(home, "state.db") + "?mode=ro", uri=True)
        rows = db.execute("select role, content, tool_calls, tool_call_id, tool_name from messages "
                          "where session_id = ? order by id", (usage["session_id"],)).fetchall()
    except sqlite3.Error:
        rows = []
    for role, content, calls, call_id, name in rows:
        emit({"type": "hermes.message", "role": role, "content": content, "tool_calls": json.loads(calls or "[]"),
              "tool_call_id": call_id, "tool_name": name})
emit({"type": "hermes.usage", **usage})
try:
    emit({"type": "hermes.answer", "text": open(os.path.join(run, "answer")).read()})
except OSError:
    pass
"""
"""Run by the image's python3 after hermes: prints the session, the usage and the answer as JSON lines."""

SCRIPT = ('code=$1; shift; run=$(mktemp -d); hermes "$@" --usage-file "$run/usage.json" > "$run/answer"; rc=$?; '
          'python3 -c "$code" "$run"; rm -rf "$run"; exit $rc')


class HermesAdapter(StructuredAdapter):
    provider = "hermes"
    binary = "hermes"
    secrets = ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    auth_patterns = re.compile(r"No inference provider configured|API key|401|AuthenticationError|"
                               r"authentication_error", re.IGNORECASE)

    def gateway_env(self, provider: str, base_url: str, placeholder: str) -> dict[str, str]:
        """Hermes' `auto` provider ignores OPENAI_BASE_URL (its config.yaml is where endpoints live);
        its `openai-api` provider reads it, with the key from OPENAI_API_KEY."""
        env = super().gateway_env(provider, base_url, placeholder)
        return {**env, "HERMES_INFERENCE_PROVIDER": "openai-api"} if provider == "openai" else env

    def argv(self, run: HarnessInput) -> list[str]:
        argv = [f"--oneshot={run.prompt}"]
        if run.model:
            argv += ["--model", run.model]
        return ["sh", "-c", SCRIPT, "hermes", READ_SESSION, *argv]

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "hermes.message":
            return Parsed(events=self._message(obj))
        if kind == "hermes.usage":
            tokens = {k: v for k, v in obj.items() if k.endswith("tokens") and isinstance(v, int)}
            calls = obj.get("api_calls")
            return Parsed(events=[EventDraft(type="message", message=summarize(
                f"Run finished after {calls} model call{'s' if calls != 1 else ''}: "
                f"{tokens.get('input_tokens', 0)} input, {tokens.get('output_tokens', 0)} output tokens"),
                payload={"final": True, "usage": tokens, "api_calls": calls, "model": obj.get("model"),
                         "completed": obj.get("completed"), "failed": obj.get("failed")})])
        if kind == "hermes.answer":
            text = as_str(obj.get("text")).rstrip("\n")
            return Parsed(output=text) if text else Parsed()
        return Parsed()

    @staticmethod
    def _message(obj: dict[str, Any]) -> list[EventDraft]:
        """An assistant turn (its text, its tool calls) or a tool's result; the prompt is not repeated."""
        role, content = obj.get("role"), as_str(obj.get("content"))
        if role == "tool":
            name = as_str(obj.get("tool_name"))
            return [EventDraft(type="command_finished", message=summarize(f"{name}: {content or '(no output)'}"),
                               payload={"tool_use_id": obj.get("tool_call_id"), "name": name,
                                        "output": truncate(content)})]
        if role != "assistant":
            return []
        events = [EventDraft(type="message", message=summarize(content), payload={"text": content})] if content else []
        for call in map(as_dict, as_list(obj.get("tool_calls"))):
            function = as_dict(call.get("function"))
            name, raw = as_str(function.get("name")), as_str(function.get("arguments"))
            try:
                arguments: Any = json.loads(raw) if raw else {}
            except ValueError:
                arguments = raw
            events.append(EventDraft(type="tool_use", message=summarize(f"{name} {raw}"),
                                     payload={"id": call.get("id"), "name": name, "input": arguments}))
        return events
