"""Codex (`codex`): `codex exec --json` JSONL events.

`codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox [--model M] - -c ...`,
where `-` makes it read the prompt from stdin; the device is the sandbox (no landlock/seccomp there).
Codex takes its key from CODEX_API_KEY (or OPENAI_API_KEY, or a `codex login` in
$CODEX_HOME/auth.json). Without one the real CLI does not fail: it retries the network until the run
times out, so the command line checks for a credential first and fails at once (`auth_required`); a
key the API refuses shows up as a 401 in its `error` events.

Codex ignores OPENAI_BASE_URL: its built-in provider always goes to api.openai.com (WebSocket first).
So when OPENAI_BASE_URL is set (a model gateway, a test's provider), the command line declares a
provider of its own there, speaking the Responses API over HTTPS with the key from OPENAI_API_KEY.
Analytics are off, so a device without internet is not slowed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.ports import EventDraft, HarnessInput, Parsed
from runtimes.adapters.base import StructuredAdapter, as_dict, as_list, as_str, guarded, summarize, truncate


BASE_URL_PROVIDER = (
    'if [ -n "${OPENAI_BASE_URL:-}" ]; then set -- "$@" -c model_provider=agentdock -c '
    '"model_providers.agentdock={name=\\"agentdock\\", base_url=\\"$OPENAI_BASE_URL\\", '
    'env_key=\\"OPENAI_API_KEY\\", wire_api=\\"responses\\"}"; fi; ')
"""Shell that adds, when OPENAI_BASE_URL is set, a provider at that URL to codex's arguments."""


class CodexAdapter(StructuredAdapter):
    provider = "codex"
    binary = "codex"
    secrets = ("CODEX_API_KEY", "OPENAI_API_KEY")
    auth_patterns = re.compile(r"401 Unauthorized|invalid_api_key|Incorrect API key|no credential|"
                               r"requires ChatGPT authentication or API key", re.IGNORECASE)

    def argv(self, run: HarnessInput) -> list[str]:
        argv = ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        if run.model:
            argv += ["--model", run.model]
        argv += ["-", "-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"]
        return guarded(self.secrets, self.provider, argv, files=("${CODEX_HOME:-$HOME/.codex}/auth.json",),
                       prelude=BASE_URL_PROVIDER)

    def gateway_env(self, provider: str, base_url: str, placeholder: str) -> dict[str, str]:
        """A CODEX_API_KEY reaches codex as the OpenAI side of the gateway: the provider the command line
        declares at OPENAI_BASE_URL takes its key from OPENAI_API_KEY."""
        if provider == "codex":
            return {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": placeholder}
        return super().gateway_env(provider, base_url, placeholder)

    def parse_object(self, obj: dict[str, Any]) -> Parsed:
        kind = obj.get("type")
        if kind == "item.started":
            return Parsed(events=self._started(as_dict(obj.get("item"))))
        if kind == "item.completed":
            return self._completed(as_dict(obj.get("item")))
        if kind == "turn.completed":
            return Parsed(events=[self._usage(as_dict(obj.get("usage")))])
        if kind == "turn.failed":
            return self._error(as_str(as_dict(obj.get("error")).get("message")) or "turn failed", kind)
        if kind == "error":
            return self._error(as_str(obj.get("message")) or "error", kind)
        return Parsed()

    @staticmethod
    def _started(item: dict[str, Any]) -> list[EventDraft]:
        kind = item.get("type")
        if kind == "command_execution":
            command = as_str(item.get("command"))
            return [EventDraft(type="command_started", message=summarize(command),
                               payload={"command": command, "id": item.get("id")})]
        if kind == "mcp_tool_call":
            name = f"{as_str(item.get('server'))}.{as_str(item.get('tool'))}"
            arguments = item.get("arguments")
            return [EventDraft(type="tool_use", message=summarize(f"{name} {json.dumps(arguments)}"),
                               payload={"id": item.get("id"), "name": name, "input": arguments})]
        if kind == "collab_tool_call":
            name = as_str(item.get("tool"))
            return [EventDraft(type="tool_use", message=summarize(name),
                               payload={"id": item.get("id"), "name": name,
                                        "input": {"prompt": item.get("prompt")}})]
        return []

    def _completed(self, item: dict[str, Any]) -> Parsed:
        kind = item.get("type")
        if kind == "agent_message":
            text = as_str(item.get("text"))
            return Parsed(events=[EventDraft(type="message", message=summarize(text), payload={"text": text})],
                          output=text)
        if kind == "command_execution":
            command, output = as_str(item.get("command")), as_str(item.get("aggregated_output"))
            exit_code = item.get("exit_code")
            return Parsed(events=[EventDraft(
                type="command_finished", message=summarize(f"{command} -> exit {exit_code}"),
                payload={"command": command, "exit_code": exit_code, "status": item.get("status"),
                         "output": truncate(output), "id": item.get("id")},
            )])
        if kind == "file_change":
            changes = as_list(item.get("changes"))
            paths = ", ".join(as_str(as_dict(c).get("path")) for c in changes)
            return Parsed(events=[EventDraft(
                type="tool_use", message=summarize(f"file_change {paths}"),
                payload={"id": item.get("id"), "name": "file_change",
                         "input": {"changes": changes}, "status": item.get("status")},
            )])
        if kind == "web_search":
            query = as_str(item.get("query"))
            return Parsed(events=[EventDraft(
                type="tool_use", message=summarize(f"web_search {query}"),
                payload={"id": item.get("id"), "name": "web_search", "input": {"query": query}},
            )])
        if kind == "error":
            message = as_str(item.get("message")) or "error"
            return Parsed(events=[EventDraft(type="message", message=summarize(message),
                                             payload={"error": True, "text": message})],
                          failure=self.auth_failure(message))
        return Parsed()

    @staticmethod
    def _usage(usage: dict[str, Any]) -> EventDraft:
        """The turn's end with its token counts (codex totals them over the turn's requests)."""
        tokens = {k: v for k, v in usage.items() if isinstance(v, int)}
        return EventDraft(type="message", message=summarize(
            f"Turn finished: {tokens.get('input_tokens', 0)} input, {tokens.get('output_tokens', 0)} output tokens"),
            payload={"final": True, "usage": tokens})

    def _error(self, message: str, source: str) -> Parsed:
        return Parsed(events=[EventDraft(type="message", message=summarize(message),
                                         payload={"error": True, "source": source, "text": message})],
                      failure=self.auth_failure(message))
