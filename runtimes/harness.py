"""Compatibility: the runtime adapters live in `runtimes.adapters` (one module per runtime family)."""

from __future__ import annotations

from runtimes.adapters import DEFAULT as HARNESSES
from runtimes.adapters import get
from runtimes.adapters.base import raw_line, summarize, truncate
from runtimes.adapters.claude import ClaudeCodeAdapter as ClaudeCodeHarness
from runtimes.adapters.codex import CodexAdapter as CodexHarness
from runtimes.adapters.plain import CustomAdapter as CustomHarness

__all__ = ["HARNESSES", "get", "raw_line", "summarize", "truncate", "ClaudeCodeHarness", "CodexHarness",
           "CustomHarness"]
