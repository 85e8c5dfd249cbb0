"""Parsing a soul document: `parse()` is pure, bytes or text in, a `Soul` out, with a diagnostic for every
problem it finds (bad YAML, unknown keys, wrong types, oversize, bytes that are not text), each pointing at
the line and column of the ORIGINAL document (1-based; columns count characters). The frontmatter is
composed, never constructed, so every key and value keeps its position and nothing in it can build
objects or expand aliases. The records it returns are in `engine.souls.models`."""

from __future__ import annotations

import bisect
import difflib
import re
from datetime import datetime
from typing import Any

import yaml

from engine.souls.models import (OWNER, Frontmatter, Limits, Section, Severity, Soul, SoulDiagnostic,
                                 Source, Status, config_provenance, digest_of, revision_of)

LIST_FIELDS = ("tone", "principles", "constraints", "collaboration", "memory_policy", "tags")

KNOWN_KEYS = ("role", "tone", "principles", "constraints", "collaboration", "memory_policy", "tags", "version")

CLAUDE_CODE_KEYS = frozenset({"name", "description", "tools", "model", "color"})
"""Keys of a Claude Code agent file: a sign the file wants `agentdock soul import`, not a soul's place."""

MAX_TEXT_CHARS = 1_000
"""Longest `role` and longest list item."""

MAX_VERSION_CHARS = 64

MAX_ITEMS = 64
"""Most items in one list field."""

MAX_DIAGNOSTICS = 100
"""A document with more problems reports the first ones and says how many more there were."""

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")
"""Characters a soul may not hold: C0 and C1 controls but tab and line breaks (terminal escapes, NUL),
and the two noncharacters YAML refuses too."""

MAX_FLOW_DEPTH = 32
"""Deepest `[`/`{` nesting in a frontmatter (a soul's deepest legitimate one is 1)."""

_BRACKETS = re.compile(r"[\[\]{}]")

_KEPT_WHILE_PARSING = 1_000
"""Diagnostics collected at most while parsing; the first `MAX_DIAGNOSTICS` by place are reported."""

_YAML_BREAKS = re.compile("[\r\x85\u2028\u2029]")
"""What YAML counts as a line break beside LF: blanked in the frontmatter YAML reads, so its lines are the file's."""

_FENCE_CLOSERS = ("---", "...")

def missing(agent_name: str, source_path: str | None, *, limits: Limits, enabled: bool, source: Source,
            snapshot_id: str | None = None, created_at: datetime | None = None) -> Soul:
    """The answer when there is no soul: not an error, `present: false` and one info diagnostic."""
    where = f" at {source_path}" if source_path else ""
    diag = SoulDiagnostic(code="soul_missing", severity=Severity.info, line=None, column=None, field=None, section=None,
                      owner_surface=OWNER[source], source_path=source_path,
                      message=f"no soul for {agent_name}{where}; write one (YAML frontmatter with role, then "
                              "Markdown) or convert a Claude Code agent file with `agentdock soul import FILE`")
    return _soul(agent_name, source_path, limits=limits, enabled=enabled, source=source, present=False,
                 frontmatter=Frontmatter(), body="", truncated=False, digest=None, diagnostics=[diag],
                 snapshot_id=snapshot_id, created_at=created_at)

def unreadable(agent_name: str, source_path: str, reason: str, *, limits: Limits, enabled: bool,
               source: Source) -> Soul:
    """The answer when a soul's file is there but may not be read (a symbolic link, not a regular file)."""
    diag = SoulDiagnostic(code="soul_unreadable", severity=Severity.error, line=None, column=None, field=None,
                      section=None, owner_surface=OWNER[source], source_path=source_path,
                      message=f"{source_path}: {reason}")
    return _soul(agent_name, source_path, limits=limits, enabled=enabled, source=source, present=True,
                 frontmatter=Frontmatter(), body="", truncated=False, digest=None, diagnostics=[diag],
                 snapshot_id=None, created_at=None)

def parse(text: str | bytes, source_path: str | None = None, *, agent_name: str = "", limits: Limits | None = None,
          enabled: bool = True, source: Source = Source.request, snapshot_id: str | None = None,
          created_at: datetime | None = None) -> Soul:
    """Validate one soul document. Pure: no I/O, bounded work (the frontmatter is parsed only when it lies
    within `max_bytes`)."""
    limits = limits or Limits()
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    p = _Parser(data, source_path, limits, OWNER[source])
    p.run()
    return _soul(agent_name, source_path, limits=limits, enabled=enabled, source=source, present=True,
                 frontmatter=Frontmatter(**p.fields), body=p.body, truncated=p.truncated, digest=digest_of(data),
                 diagnostics=p.finished(), snapshot_id=snapshot_id, created_at=created_at)

def _soul(agent_name: str, source_path: str | None, *, limits: Limits, enabled: bool, source: Source, present: bool,
          frontmatter: Frontmatter, body: str, truncated: bool, digest: str | None, diagnostics: list[SoulDiagnostic],
          snapshot_id: str | None, created_at: datetime | None) -> Soul:
    if not enabled:
        diagnostics = [*diagnostics, SoulDiagnostic(
            code="soul_disabled", severity=Severity.info, line=None, column=None, field=None, section=None,
            owner_surface="settings", source_path=None,
            message="souls are switched off (AGENTDOCK_SOUL_ENABLED=false): this soul is checked but not in effect")]
    errors = any(d.severity is Severity.error for d in diagnostics)
    status = Status.missing if not present else Status.invalid if errors else Status.valid
    valid = status is Status.valid
    return Soul(agent_name=agent_name, present=present, enabled=enabled, active=enabled and valid, valid=valid,
                validation_status=status, frontmatter=frontmatter, body=body, truncated=truncated, digest=digest,
                revision_id=revision_of(digest), snapshot_id=snapshot_id, source_path=source_path,
                created_at=created_at, limits=limits, config_provenance=config_provenance(limits, enabled, source),
                diagnostics=diagnostics)

class _Lines:
    """Character offsets in a text as 1-based lines and columns."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        return line + 1, offset - self.starts[line] + 1

_SCALAR_KINDS = {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
                 "tag:yaml.org,2002:bool": "true/false", "tag:yaml.org,2002:null": "nothing",
                 "tag:yaml.org,2002:timestamp": "a date", "tag:yaml.org,2002:binary": "binary data"}

STR = "tag:yaml.org,2002:str"

def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _SCALAR_KINDS.get(node.tag, "text" if node.tag == STR else f"a value tagged {node.tag}")

class _Parser:
    """One document's walk: split, sizes, characters, YAML, fields; diagnostics collected as it goes."""

    def __init__(self, data: bytes, source_path: str | None, limits: Limits, owner: str) -> None:
        self.data = data
        self.source_path = source_path
        self.limits = limits
        self.owner = owner
        self.diagnostics: list[SoulDiagnostic] = []
        self.fields: dict[str, Any] = {}
        self.body = ""
        self.truncated = False
        self.seen: dict[str, int] = {}
        """Each frontmatter key given, and its line."""
        self.omitted = 0
        """Problems found past `_KEPT_WHILE_PARSING` (a megabyte of control characters is not a million objects)."""

    def add(self, code: str, severity: Severity, message: str, line: int | None, column: int | None,
            field: str | None, section: Section | None) -> None:
        if len(self.diagnostics) >= _KEPT_WHILE_PARSING:
            self.omitted += 1
            return
        self.diagnostics.append(SoulDiagnostic(code=code, severity=severity, message=message, line=line, column=column,
                                           field=field, section=section, owner_surface=self.owner,
                                           source_path=self.source_path))

    def finished(self) -> list[SoulDiagnostic]:
        found = sorted(self.diagnostics, key=lambda d: (d.line or 0, d.column or 0))
        if len(found) <= MAX_DIAGNOSTICS:
            return found
        kept = found[:MAX_DIAGNOSTICS - 1]
        last = kept[-1]
        more = len(found) - len(kept) + self.omitted
        kept.append(SoulDiagnostic(code="too_many_diagnostics", severity=Severity.error, line=last.line,
                               column=last.column, field=None, section=None, owner_surface=self.owner,
                               source_path=self.source_path,
                               message=f"{more} more problems after this line; fix these first"))
        return kept

    def run(self) -> None:
        try:
            text = self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = self.data.decode("utf-8", "replace")
            line, column = self._byte_position(exc.start)
            self.add("not_utf8", Severity.error, f"byte 0x{self.data[exc.start]:02x} is not UTF-8 text (or a lone "
                     "surrogate); save the soul as UTF-8", line, column, None, Section.document)
        self.bom = 1 if text.startswith("\ufeff") else 0
        self.text = text[self.bom:]
        self.lines = _Lines(self.text)
        for m in _CONTROL.finditer(self.text):
            if len(self.diagnostics) >= _KEPT_WHILE_PARSING:
                self.omitted += 1 + len(_CONTROL.findall(self.text, m.end()))
                break
            line, column = self.lines.at(m.start())
            self.add("control_character", Severity.error, f"control character U+{ord(m.group()):04X} is not "
                     "allowed (only tabs and line breaks); remove it", line, column, None, None)
        # Control characters are reported above, once (YAML would refuse them again); other line breaks
        # would make YAML's line numbers differ from the file's.
        yaml_text = _YAML_BREAKS.sub(" ", _CONTROL.sub(" ", self.text))
        lines = yaml_text.split("\n")
        if lines[0].rstrip() != "---":
            self.add("frontmatter_missing", Severity.error, "a soul starts with a '---' line, then YAML frontmatter "
                     "(role, tone, principles, ...), a closing '---' line, then the Markdown body", 1, 1, None,
                     Section.frontmatter)
            self._body(0)
            self._too_large(None)
            return
        close = next((i for i in range(1, len(lines)) if lines[i].rstrip() in _FENCE_CLOSERS), None)
        if close is None:
            self.add("frontmatter_unclosed", Severity.error, "the frontmatter opened on line 1 is never closed; "
                     "end it with a '---' line before the body", 1, 1, None, Section.frontmatter)
            self._too_large(None)
            return
        body_start = self.lines.starts[close + 1] if close + 1 < len(self.lines.starts) else len(self.text)
        self._body(body_start)
        fits = self._too_large(body_start)
        if fits:
            self._frontmatter("\n".join(lines[1:close]))
        # the frontmatter's end lies past max_bytes: it is not parsed (the size diagnostic says why)

    def _byte_position(self, pos: int) -> tuple[int, int]:
        before = self.data[:pos].decode("utf-8", "replace").removeprefix("\ufeff")
        line = before.count("\n") + 1
        return line, len(before) - (before.rfind("\n") + 1) + 1

    def _char_offset(self, byte_pos: int) -> int:
        """The character (of `self.text`) holding byte `byte_pos` of the document."""
        while 0 < byte_pos < len(self.data) and self.data[byte_pos] & 0xC0 == 0x80:
            byte_pos -= 1  # the start of the character the limit falls in
        return max(len(self.data[:byte_pos].decode("utf-8", "replace")) - self.bom, 0)

    def _too_large(self, body_start: int | None) -> bool:
        """Report a document over `max_bytes` at the character where it crosses the limit; say whether the
        frontmatter (up to the body) lies within the limit."""
        limit = self.limits.max_bytes
        if len(self.data) <= limit:
            return True
        line, column = self.lines.at(self._char_offset(limit))
        self.add("soul_too_large", Severity.error, f"the soul is {len(self.data)} bytes; at most {limit} are "
                 "allowed (AGENTDOCK_SOUL_MAX_BYTES) and the limit is crossed here; shorten it", line, column,
                 "document", Section.document)
        if body_start is None:
            return False
        return len(self.text[:body_start].encode("utf-8", "surrogatepass")) + 3 * self.bom <= limit

    def _body(self, start: int) -> None:
        body = self.text[start:]
        encoded = body.encode("utf-8", "surrogatepass")
        limit = self.limits.max_body_bytes
        if len(encoded) > limit:
            self.truncated = True
            body = encoded[:limit].decode("utf-8", "ignore")
            line, column = self.lines.at(start + len(body))
            self.add("body_too_large", Severity.error, f"the body is {len(encoded)} bytes; at most {limit} are allowed "
                     "(AGENTDOCK_SOUL_MAX_BODY_BYTES) and the limit is crossed here; shorten it", line, column, "body",
                     Section.body)
        self.body = body

    def _frontmatter(self, text: str) -> None:
        depth = 0
        for m in _BRACKETS.finditer(text):  # refused before YAML, which would recurse once per level
            depth += 1 if m.group() in "[{" else -1
            if depth > MAX_FLOW_DEPTH:
                line = text.count("\n", 0, m.start())
                column = m.start() - (text.rfind("\n", 0, m.start()) + 1)
                self.add("yaml_error", Severity.error, f"YAML: lists and mappings nested more than {MAX_FLOW_DEPTH} "
                         "levels deep", line + 2, column + 1, None, Section.frontmatter)
                return
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 2, mark.column + 1) if mark else (2, 1)
            problem = exc.problem or "not valid YAML"
            context = ""
            if exc.context and exc.context_mark:
                context = (f" ({exc.context} that starts at line {exc.context_mark.line + 2}, column "
                           f"{exc.context_mark.column + 1})")
            self.add("yaml_error", Severity.error, f"YAML: {problem}{context}", line, column, None, Section.frontmatter)
            return
        except yaml.YAMLError as exc:
            self.add("yaml_error", Severity.error, f"YAML: {exc}", 2, 1, None, Section.frontmatter)
            return
        except RecursionError:
            self.add("yaml_error", Severity.error, "YAML: nested too deeply", 2, 1, None, Section.frontmatter)
            return
        if root is None:
            self._required()
            return
        if not isinstance(root, yaml.MappingNode):
            line, column = self._mark(root)
            self.add("frontmatter_not_mapping", Severity.error, f"the frontmatter must be a mapping of fields "
                     f"(role: ..., tone: [...]); got {_kind(root)}", line, column, None, Section.frontmatter)
            return
        for key, value in root.value:
            self._field(key, value, self.seen)
        self._required()

    def _mark(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 2, node.start_mark.column + 1

    def _error(self, code: str, node: yaml.Node, message: str, field: str | None,
               severity: Severity = Severity.error) -> None:
        line, column = self._mark(node)
        self.add(code, severity, message, line, column, field, Section.frontmatter)

    def _field(self, key: yaml.Node, value: yaml.Node, seen: dict[str, int]) -> None:
        if not isinstance(key, yaml.ScalarNode) or key.tag != STR:
            self._error("wrong_type", key, f"a frontmatter key must be a field name; got {_kind(key)}", None)
            return
        name = key.value
        if name in seen:
            self._error("duplicate_key", key, f"{name} is given twice (first on line {seen[name]}); keep one", name)
            return
        seen[name] = key.start_mark.line + 2
        if name not in KNOWN_KEYS:
            hint = ""
            if close := difflib.get_close_matches(name, KNOWN_KEYS, n=1):
                hint = f"; did you mean {close[0]}?"
            elif name in CLAUDE_CODE_KEYS:
                hint = "; this looks like a Claude Code agent file: convert it with `agentdock soul import FILE`"
            self._error("unknown_key", key, f"unknown field {_short(name)!r}{hint} (known: {', '.join(KNOWN_KEYS)})",
                        _short(name))
            return
        if value.tag == "tag:yaml.org,2002:null" and name == "role":
            self._error("empty_value", value, "role is empty; say in a sentence or two what this agent is for",
                        name)
            self.fields[name] = None
            return
        if value.tag == "tag:yaml.org,2002:null":
            self._error("empty_value", value, f"{name} is empty; give it a value or remove the line", name,
                        Severity.warning)
            return
        if name in LIST_FIELDS:
            self._list(name, value)
        else:
            self._text(name, value)

    def _text(self, name: str, node: yaml.Node) -> None:
        limit = MAX_VERSION_CHARS if name == "version" else MAX_TEXT_CHARS
        if isinstance(node, yaml.ScalarNode) and name == "version" and node.tag in (
                "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            self._error("coerced", node, f"version {node.value} is read as the text {node.value!r}; quote it to say "
                        "so", name, Severity.info)
        elif not isinstance(node, yaml.ScalarNode) or node.tag != STR:
            self._error("wrong_type", node, f"{name} must be text; got {_kind(node)}"
                        + ("; quote it" if isinstance(node, yaml.ScalarNode) else ""), name)
            return
        value = node.value
        if not value.strip():
            self._error("empty_value", node, f"{name} must not be blank", name)
            self.fields[name] = None
            return
        if len(value) > limit:
            self._error("value_too_long", node, f"{name} is {len(value)} characters; at most {limit}", name)
            return
        self.fields[name] = value

    def _list(self, name: str, node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            self._error("coerced", node, f"{name} is one text, read as a list of one item; write it as a list "
                        f"({name}: [...]) to say so", name, Severity.info)
            items = [node]
        elif isinstance(node, yaml.SequenceNode):
            items = node.value
        else:
            self._error("wrong_type", node, f"{name} must be a list of texts; got {_kind(node)}", name)
            return
        kept: list[str] = []
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            if i == MAX_ITEMS:
                self._error("too_many_items", item, f"{name} has {len(items)} items; at most {MAX_ITEMS}", where)
                break
            if not isinstance(item, yaml.ScalarNode) or item.tag != STR:
                self._error("wrong_type", item, f"each item of {name} must be text; got {_kind(item)}"
                            + ("; quote it" if isinstance(item, yaml.ScalarNode) else ""), where)
            elif not item.value.strip():
                self._error("empty_value", item, f"{where} is blank; remove it", where, Severity.warning)
            elif len(item.value) > MAX_TEXT_CHARS:
                self._error("value_too_long", item, f"{where} is {len(item.value)} characters; at most "
                            f"{MAX_TEXT_CHARS}", where)
            else:
                kept.append(item.value)
        self.fields[name] = kept

    def _required(self) -> None:
        if "role" not in self.seen:
            self.add("missing_field", Severity.error, "role is required: say in a sentence or two what this agent "
                     "is for (role: ...)", 1, 1, "role", Section.frontmatter)

def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:60] + "..."

def as_document(frontmatter: dict[str, Any], body: str) -> str:
    """A soul document from its fields and body (what `soul import` writes)."""
    fm = yaml.safe_dump({k: v for k, v in frontmatter.items() if v not in (None, [], "")}, sort_keys=False,
                        allow_unicode=True, width=100)
    return f"---\n{fm}---\n{body}"
