"""The runtime adapters: one per runtime the seeds name (`claude-code`/`claude`, `codex`, `pi`, `hermes`,
`osa`, `custom`), each building its CLI's non-interactive command line, turning its stream into typed
events and the final answer, and classifying its failures (`runtime_not_found`, `auth_required`).

`resolver(settings)` is what the composition root hands the engine; `get` is the same without
settings (no `osa` command template)."""

from __future__ import annotations

from collections.abc import Callable

from engine.ports import Harness
from engine.settings import Settings
from runtimes.adapters.claude import ClaudeCodeAdapter
from runtimes.adapters.codex import CodexAdapter
from runtimes.adapters.hermes import HermesAdapter
from runtimes.adapters.pi import PiAdapter
from runtimes.adapters.plain import CustomAdapter, TemplateAdapter


def adapters(osa_command: str | None = None) -> dict[str, Harness]:
    return {
        "custom": CustomAdapter(),
        "claude-code": ClaudeCodeAdapter("claude-code"),
        "claude": ClaudeCodeAdapter("claude"),
        "codex": CodexAdapter(),
        "pi": PiAdapter(),
        "hermes": HermesAdapter(),
        "osa": TemplateAdapter("osa", osa_command),
    }


DEFAULT = adapters()


def get(provider: str) -> Harness:
    """The adapter for a provider name; raises KeyError for an unknown one."""
    return DEFAULT[str(provider)]


def resolver(settings: Settings) -> Callable[[str], Harness]:
    """Provider name -> adapter, with the runtimes' command templates from `settings`."""
    table = adapters(settings.osa_command) if settings.osa_command else DEFAULT
    return lambda provider: table[str(provider)]
