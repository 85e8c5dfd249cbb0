"""The engine's error tree and the seeds' `diagnostic` shape every caller sees.

    EngineError
    ├── InvalidInput        (400) the request is malformed; nothing was changed
    ├── NotFound            (404) no such record
    ├── Conflict            (409) the request clashes with existing state (idempotency, state)
    │   └── InvalidTransition
    ├── PermissionDenied    (403)
    │   ├── Unauthenticated (401) no valid session token (missing, unknown, stopped or expired)
    │   ├── ApprovalRequired      a risky action waits for a person's approval (`evidence.approval_id`)
    │   └── ApprovalDenied        a person denied that same action
    ├── LimitExceeded       (429/413) a bound was hit
    ├── SandboxUnavailable  (503) Docker or the container cannot serve the request
    ├── Busy                (503) the database is busy; retry
    └── ImageBuildFailed    (500) a sandbox image could not be built (a step, a tool or the network failed)
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, Field


class Diagnostic(BaseModel):
    """A structured error: what went wrong and what to do next (seed 002's `diagnostic`)."""

    code: str
    """Stable machine-readable code, e.g. `invalid_input`, `not_found`."""
    category: str
    """Broad class: `input`, `state`, `permission`, `limit`, `backend`, `internal`."""
    severity: str = "error"
    title: str
    """One-line summary."""
    message: str
    """What was wrong and what to do about it."""
    suggested_command: str | None = None
    """A command or call that would help, when one exists."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """Facts behind the error: the field, the value's kind, the limit."""
    id: str = Field(default_factory=lambda: "diag_" + secrets.token_hex(6))
    """Identifies this occurrence in the daemon's log."""


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""

    code = "engine_error"
    category = "internal"
    title = "Request failed"
    http_status = 500

    def __init__(
        self,
        message: str,
        *,
        suggested_command: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.suggested_command = suggested_command
        self.evidence = evidence or {}

    def diagnostic(self) -> Diagnostic:
        return Diagnostic(
            code=self.code,
            category=self.category,
            title=self.title,
            message=self.message,
            suggested_command=self.suggested_command,
            evidence=self.evidence,
        )


class InvalidInput(EngineError):
    code = "invalid_input"
    category = "input"
    title = "Invalid request"
    http_status = 400

    def __init__(self, field: str, message: str, **kw: Any) -> None:
        field = clip(field)
        evidence = {"field": field, **kw.pop("evidence", {})}
        super().__init__(f"{field}: {message}", evidence=evidence, **kw)
        self.field = field


class NotFound(EngineError):
    code = "not_found"
    category = "state"
    title = "Not found"
    http_status = 404

    def __init__(self, kind: str, id: str, **kw: Any) -> None:
        if kind in LIST_COMMANDS:
            kw.setdefault("suggested_command", f"agentdock {LIST_COMMANDS[kind]} list")
        evidence = {"kind": kind, "id": id, **kw.pop("evidence", {})}
        super().__init__(f"no {kind} with id {id!r}", evidence=evidence, **kw)
        self.kind = kind
        self.id = id


class Conflict(EngineError):
    code = "conflict"
    category = "state"
    title = "Conflict"
    http_status = 409


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Not allowed in the record's current state"


class PermissionDenied(EngineError):
    code = "permission_denied"
    category = "permission"
    title = "Permission denied"
    http_status = 403


class Unauthenticated(PermissionDenied):
    """No valid session token: missing, unknown, or of a session that has stopped or expired."""

    code = "unauthenticated"
    title = "Session token required"
    http_status = 401


class ApprovalRequired(PermissionDenied):
    """A risky action of a session under `confirm-risky`: refused until a person approves it. The
    evidence names the pending approval to wait on; once approved, the same call goes ahead."""

    code = "approval_required"
    title = "Waiting for a person's approval"


class ApprovalDenied(PermissionDenied):
    """A person denied this session that same action (recently enough that asking again is refused)."""

    code = "approval_denied"
    title = "A person denied this action"


class LimitExceeded(EngineError):
    code = "limit_exceeded"
    category = "limit"
    title = "Limit exceeded"
    http_status = 413


class TooManyRequests(LimitExceeded):
    """Too many at once from one caller: wait for some to end, then send again."""

    code = "rate_limited"
    title = "Too many requests at once"
    http_status = 429


class SandboxUnavailable(EngineError):
    code = "sandbox_unavailable"
    category = "backend"
    title = "Sandbox backend unavailable"
    http_status = 503


class DeviceStuck(SandboxUnavailable):
    """The device stopped answering: its run is not followed again there; the device is repaired."""

    code = "device_stuck"
    title = "Device stuck"


class ImageBuildFailed(EngineError):
    code = "image_build_failed"
    category = "backend"
    title = "Image build failed"
    http_status = 500


MAX_ECHO_CHARS = 200
"""A caller's own text (an unknown field's name) is echoed in a diagnostic up to this many characters."""


def clip(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


class Busy(EngineError):
    code = "busy"
    category = "backend"
    title = "Busy"
    http_status = 503


LIST_COMMANDS = {"run": "runs", "sandbox": "sandbox", "computer": "sandbox", "group": "agent-run-groups",
                 "channel": "channels", "profile": "profiles", "approval": "approvals"}
"""Record kinds whose ids `agentdock <command> list` shows."""


def internal(exc: BaseException) -> Diagnostic:
    """The generic diagnostic for an unexpected exception: an id to find it in the log, no internals."""
    return Diagnostic(
        code="internal_error",
        category="internal",
        title="Internal error",
        message="agentdock hit an unexpected error; the daemon log has the details under this diagnostic id.",
        suggested_command="agentdock daemon status",
        evidence={"type": type(exc).__name__},
    )
