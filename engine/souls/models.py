"""Souls: an agent's identity document, Markdown with YAML frontmatter (seed 002): the records a soul
is read into, the requests about souls, and its projection into an agent's context. Parsing is
`engine.souls.parser`; reading files and snapshots, `engine.souls.service`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StringConstraints

from engine import ids
from engine.models import Input, Record
from engine.records import Row

AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""An agent's name is also its soul's file name (`<agent_name>.md`): lowercase letters, digits, `-` and
`_`, so it can never be a path (no `/`, no `.`) nor differ only by case on a case-insensitive disk."""
MAX_SOURCE_BYTES = 1_048_576
"""Most of a document read or accepted at all (a file is read to here; `content` may be this long):
past `max_bytes` the document is invalid anyway, and this bounds the work of saying where."""
SNAPSHOT = ids.Shape("soul snapshot", ("snap",))


def _agent_name(value: Any) -> Any:
    if isinstance(value, str) and not AGENT_NAME.fullmatch(value):
        raise ValueError("must be 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit "
                         "(it names the file <agent_name>.md), e.g. code-reviewer")
    return value


AgentName = Annotated[str, StringConstraints(pattern=f"^{AGENT_NAME.pattern}$"), BeforeValidator(_agent_name)]


class Status(StrEnum):
    missing = "missing"
    valid = "valid"
    invalid = "invalid"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    error = "error"


class Source(StrEnum):
    """Where a soul's document came from."""

    home = "home"
    """`$AGENTDOCK_HOME/souls/<agent_name>.md`."""
    workspace = "workspace"
    """`$AGENTDOCK_SOUL_WORKSPACE/.agentdock/souls/<agent_name>.md`, read before the home's."""
    snapshot = "snapshot"
    """The copy a spawned session took at spawn."""
    request = "request"
    """The `content` of a validate request."""


class Section(StrEnum):
    frontmatter = "frontmatter"
    body = "body"
    document = "document"


OWNER = {Source.home: "soul_file", Source.workspace: "soul_file", Source.snapshot: "snapshot",
         Source.request: "request"}
"""A diagnostic's `owner_surface`: what to change to fix it (the file, the content sent, or the spawn)."""


class SoulDiagnostic(Record):
    """One problem in a soul, placed in the original document."""

    code: str
    """Stable: yaml_error, unknown_key, duplicate_key, wrong_type, empty_value, missing_field, value_too_long,
    too_many_items, coerced, soul_too_large, body_too_large, frontmatter_missing, frontmatter_unclosed,
    frontmatter_not_mapping, control_character, not_utf8, soul_unreadable, soul_missing, soul_disabled,
    too_many_diagnostics."""
    severity: Severity
    message: str
    """What is wrong and how to fix it."""
    line: int | None
    """1-based line in the document; null for a problem that has no place in it (a missing file)."""
    column: int | None
    """1-based column, in characters."""
    field: str | None
    """The frontmatter field concerned (`tone`, `tags[2]`), `document` or `body` for a size."""
    section: Section | None
    owner_surface: str
    """What to change to fix it: `soul_file`, `request`, `snapshot` or `settings`."""
    source_path: str | None
    """The file the line and column are in; null for a request's content."""


class Frontmatter(Record):
    role: str | None = None
    """What the agent is for, in a sentence or two."""
    tone: list[str] = []
    principles: list[str] = []
    constraints: list[str] = []
    collaboration: list[str] = []
    """How it works with other agents and people."""
    memory_policy: list[str] = []
    """What it keeps and forgets."""
    tags: list[str] = []
    version: str | None = None


class Limits(Record):
    max_bytes: int = 65_536
    """Largest document, frontmatter and body together."""
    max_body_bytes: int = 49_152
    """Largest body."""
    context_projection_bytes: int = 4_096
    """Most of a soul (role, principles, tone) put into an agent's context bundle."""


class ConfigProvenance(Record):
    """The configuration this answer was made under, and where the document came from."""

    enabled: bool
    max_body_bytes: int
    context_projection_bytes: int
    digest: str
    """sha256 of the soul configuration (enabled and limits): two answers with the same digest were judged alike."""
    source: Source


class Soul(Record):
    """An agent's soul as read and validated (seed 002's `GET /api/agent/soul`)."""

    agent_name: str
    present: bool
    """Whether a document was found (false: `validation_status` is `missing`)."""
    enabled: bool
    """Whether souls are switched on (AGENTDOCK_SOUL_ENABLED)."""
    active: bool
    """Whether this soul is in effect: enabled, present and valid."""
    valid: bool
    validation_status: Status
    frontmatter: Frontmatter
    body: str
    """The Markdown after the frontmatter (cut at `limits.max_body_bytes`, then `truncated` is true)."""
    truncated: bool
    digest: str | None
    """`sha256:<hex>` of the document's bytes; null when there is none."""
    revision_id: str | None
    """`rev_` and the digest's first 20 hex digits: the same document is the same revision anywhere."""
    snapshot_id: str | None
    """The snapshot this was read from (a spawned session's soul), else null."""
    source_path: str | None
    created_at: datetime | None
    """When the document was written (a file's modification time), snapshotted or sent."""
    limits: Limits
    config_provenance: ConfigProvenance
    diagnostics: list[SoulDiagnostic]


class SoulContext(Record):
    """The soul as an agent's context bundle carries it (seed 002's context `soul`), at most
    `context_projection_bytes` of role, principles and tone."""

    active: bool
    config_digest: str
    digest: str | None
    enabled: bool
    max_body_bytes: int
    max_bytes: int
    present: bool
    principles: list[str]
    role: str | None
    snapshot_id: str | None
    source_path: str | None
    tone: list[str]
    truncated: bool
    valid: bool
    validation_status: Status


# ---------------------------------------------------------------- requests


class SoulGet(Input):
    agent_name: AgentName | None = None
    """Whose soul; default: the caller's own (the local user's is AGENTDOCK_SOUL_AGENT_NAME, `agentdock`)."""


class SoulValidate(Input):
    content: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    """A soul document to check (not stored). Omit to check the stored soul of `agent_name`."""
    agent_name: AgentName | None = None
    """Whose soul: the file to check when `content` is omitted, the name to report otherwise."""


class SoulImport(Input):
    content: str = Field(max_length=MAX_SOURCE_BYTES)
    """A Claude Code agent file: YAML frontmatter (name, description, tools, model) and a system prompt."""
    name: AgentName | None = None
    """The soul's agent name; default: the file's `name`."""
    force: bool = False
    """Replace an existing soul of that name."""


class SoulImported(Record):
    soul: Soul
    """The soul written (or that would have been: see `written`), validated."""
    path: str
    written: bool
    """False when the converted soul is invalid: nothing was written."""
    replaced: bool
    """An existing soul was replaced (`force`)."""
    dropped_keys: list[str]
    """Keys of the agent file a soul has no place for."""




def config_provenance(limits: Limits, enabled: bool, source: Source) -> ConfigProvenance:
    config = {"enabled": enabled, **limits.model_dump()}
    digest = "sha256:" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return ConfigProvenance(enabled=enabled, max_body_bytes=limits.max_body_bytes,
                            context_projection_bytes=limits.context_projection_bytes, digest=digest, source=source)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def revision_of(digest: str | None) -> str | None:
    return "rev_" + digest.removeprefix("sha256:")[:ids.HEX_DIGITS] if digest else None


def projection(soul: Soul) -> SoulContext:
    """The soul for an agent's context bundle: role, principles and tone within `context_projection_bytes`
    (as JSON), items kept whole in order while they fit, the role cut last; `truncated` says when anything
    was left out."""
    budget = soul.limits.context_projection_bytes
    fm = soul.frontmatter if soul.active else Frontmatter()
    role = fm.role
    used = _json_size(role)
    cut = False
    if used > budget:
        role = _cut_json(role or "", budget)
        used, cut = _json_size(role), True
    lists: dict[str, list[str]] = {"principles": [], "tone": []}
    for field in ("principles", "tone"):
        for item in getattr(fm, field):
            size = _json_size(item) + 1
            if used + size > budget:
                cut = True
                break
            lists[field].append(item)
            used += size
    return SoulContext(active=soul.active, config_digest=soul.config_provenance.digest, digest=soul.digest,
                       enabled=soul.enabled, max_body_bytes=soul.limits.max_body_bytes, max_bytes=soul.limits.max_bytes,
                       present=soul.present, principles=lists["principles"], role=role, snapshot_id=soul.snapshot_id,
                       source_path=soul.source_path, tone=lists["tone"], truncated=soul.truncated or cut,
                       valid=soul.valid, validation_status=soul.validation_status)


def _json_size(value: Any) -> int:
    return len(json.dumps(value).encode()) if value is not None else 0


def _cut_json(text: str, budget: int) -> str:
    while text and _json_size(text) > budget:
        text = text[:max(len(text) - max((_json_size(text) - budget) // 6, 1), 0)]
    return text


class SoulSnapshotRow(Row):
    id: str
    agent_name: str
    digest: str | None
    """None: there was no soul at spawn."""
    content: bytes | None
    source: str
    source_path: str | None
    document_modified: datetime | None
    created_at: datetime
    created_by: str
