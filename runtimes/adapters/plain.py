"""Runtimes whose stdout is the answer: `custom` (the user's own command) and `osa` (its invocation is
not public, so a setting gives the command template)."""

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
