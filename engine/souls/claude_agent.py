"""A Claude Code agent file as a soul (`agentdock soul import FILE`). Pure: text in, a soul document out.

A Claude Code agent file is Markdown with YAML frontmatter: `name`, `description` (when to use the agent),
`tools` (a comma-separated string or a list), `model`, sometimes `color`; its body is the system prompt.
The soul keeps the body as it is and takes its role from the description; the tools and the model, which
a soul has no field for, are kept as tags (`tool:Read`, `model:sonnet`) next to `claude-code`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import yaml

from engine import errors
from engine.souls import models as souls
from engine.souls import parser as soul_parser

MAPPED = ("name", "description", "tools", "model")
ROLE_SENTENCE = re.compile(r"(.+?[.!?])(?:\s|$)", re.S)
WHEN_TO_USE = "## When to use this agent"


class Converted(NamedTuple):
    name: str
    document: str
    dropped_keys: list[str]


def convert(text: str, name: str | None, max_bytes: int) -> Converted:
    """The soul document for a Claude Code agent file; `InvalidInput` naming the field (and the line and
    column in the agent file) when the file is not one."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise errors.InvalidInput("content", f"the agent file is {size} bytes; a soul is at most {max_bytes} "
                                  "(AGENTDOCK_SOUL_MAX_BYTES)", evidence={"limit_bytes": max_bytes})
    fm, body = _split(text)
    name = name or _name(fm)
    description = fm.get("description")
    if not isinstance(description, str) or not description.strip():
        raise errors.InvalidInput("description", "the agent file needs a description (when to use the agent): it "
                                  "becomes the soul's role")
    role, rest = _role(description.strip())
    if rest:
        body = body.rstrip("\n") + f"\n\n{WHEN_TO_USE}\n\n{rest}\n"
    tags = ["claude-code"]
    model = fm.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise errors.InvalidInput("model", "must be a model name such as sonnet")
        tags.append(f"model:{model.strip()}")
    tags += [f"tool:{t}" for t in _tools(fm.get("tools"))]
    dropped = sorted(str(k) for k in fm if k not in MAPPED)
    document = soul_parser.as_document({"role": role, "tags": tags}, body)
    return Converted(name, document, dropped)


def _split(text: str) -> tuple[dict[str, Any], str]:
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[0].rstrip() != "---":
        raise _at(1, 1, "a Claude Code agent file starts with a '---' line and YAML frontmatter (name, description, "
                  "tools, model)")
    close = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), None)
    if close is None:
        raise _at(1, 1, "the frontmatter opened on line 1 is never closed with a '---' line")
    try:
        fm = yaml.safe_load("\n".join(lines[1:close]))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 2, mark.column + 1) if mark else (2, 1)
        raise _at(line, column, f"YAML: {exc.problem or 'not valid YAML'}") from None
    except (yaml.YAMLError, RecursionError):
        raise _at(2, 1, "the frontmatter is not valid YAML") from None
    if fm is None:
        fm = {}
    if not isinstance(fm, dict):
        raise _at(2, 1, "the frontmatter must be a mapping (name: ..., description: ...)")
    return fm, "\n".join(lines[close + 1:])


def _at(line: int, column: int, message: str) -> errors.InvalidInput:
    return errors.InvalidInput("content", f"line {line}, column {column}: {message}",
                               evidence={"line": line, "column": column})


def _name(fm: dict[str, Any]) -> str:
    name = fm.get("name")
    if not isinstance(name, str) or not souls.AGENT_NAME.fullmatch(name):
        shown = f" ({str(name)[:60]!r})" if name is not None else ""
        raise errors.InvalidInput("name", f"the agent file's name{shown} is not a soul name: give --name, 1 to 64 "
                                  "lowercase letters, digits, '-' or '_'")
    return name


def _role(description: str) -> tuple[str, str]:
    """The role, and what of the description did not fit in it (kept in the body). A description of one
    paragraph that fits is the role; a longer one (Claude Code's often carry examples) gives its first
    sentence."""
    if "\n" not in description and len(description) <= soul_parser.MAX_TEXT_CHARS:
        return description, ""
    first = ROLE_SENTENCE.match(description)
    role = " ".join((first.group(1) if first else description).split())
    if len(role) > soul_parser.MAX_TEXT_CHARS:
        role = role[:soul_parser.MAX_TEXT_CHARS - 3].rstrip() + "..."
    return role, description


def _tools(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise errors.InvalidInput("tools", "must be a comma-separated list of tool names or a YAML list of them")
    return [t.strip() for t in items if t.strip()]
