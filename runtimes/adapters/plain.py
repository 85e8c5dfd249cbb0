"""Runtimes whose stdout is the answer: `custom` (the user's own command), `hermes` (one-shot mode) and
`osa` (its invocation is not public, so a setting gives the command template)."""

from __future__ import annotations

import re
import shlex

from engine.ports import HarnessInput
from runtimes.adapters.base import Adapter


class CustomAdapter(Adapter):
    """The user's own command, run with `sh -c`; the prompt is on stdin and in AGENTDOCK_PROMPT."""

    provider = "custom"
    binary = None

    def argv(self, run: HarnessInput) -> list[str]:
        if not run.command:
            raise ValueError("the custom provider needs a command")
        return ["sh", "-c", run.command]


class HermesAdapter(Adapter):
    """Hermes Agent in one-shot mode: `hermes --oneshot=PROMPT [-m MODEL]` prints only the final answer
    (tools run, approvals bypassed). The `=` form keeps a prompt that starts with `-` a prompt. Without
    a provider key the real CLI says "No inference provider configured" and exits 1."""

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
        argv = ["hermes", f"--oneshot={run.prompt}"]
        if run.model:
            argv += ["--model", run.model]
        return argv


class TemplateAdapter(Adapter):
    """A runtime started from a command template (a setting or, later, a profile): run with `sh -c`,
    the prompt on stdin and in AGENTDOCK_PROMPT, the model as `$1` (empty when none). Without a
    template the CLI named after the runtime is started with the prompt on stdin."""

    def __init__(self, provider: str, template: str | None = None) -> None:
        self.provider = provider
        self.template = template
        if template:
            words = shlex.split(template) if template.strip() else []
            first = words[0] if words else ""
            self.binary = first if re.fullmatch(r"[A-Za-z0-9._+-]+", first) else None
        else:
            self.binary = provider

    def argv(self, run: HarnessInput) -> list[str]:
        if not self.template:
            return [self.provider]
        return ["sh", "-c", self.template, self.provider, run.model or ""]
