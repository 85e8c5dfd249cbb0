"""What every area's models share: the base of inputs (which forbid unknown fields) and records, the
statuses and kinds several areas name, the checks of text, env, metadata and paths, and their limits.
Each area's requests and records, with the seeds' field names, are in its package's models.py."""

from __future__ import annotations

import json
import posixpath
import re
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from engine import errors, secrets

WORKSPACE = "/workspace"
MAX_PROMPT_BYTES = 100_000
MAX_COMMAND_BYTES = 16_384
MAX_METADATA_BYTES = 65_536
MAX_TIMEOUT_SECONDS = 86_400
DEFAULT_TIMEOUT_SECONDS = 1_800
MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 32_768
MAX_ENV_TOTAL_BYTES = 131_072
"""Each value, and all names and values together: they travel in the exec's environment."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED_ENV = frozenset({"PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH"})
"""Variables the sandbox's own machinery (the run wrapper, the shell) depends on; a run may not set them."""
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,199}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
"""Printable ASCII without spaces: the key also travels as an HTTP header."""
MAX_SEQUENCE = 2**53 - 1
"""Bound for event sequence numbers in queries (SQLite integers stop at 2**63 - 1)."""


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.canceled)


class TargetKind(StrEnum):
    sandbox = "sandbox"
    computer = "computer"


class Provider(StrEnum):
    osa = "osa"
    codex = "codex"
    claude = "claude"
    claude_code = "claude-code"
    pi = "pi"
    hermes = "hermes"
    custom = "custom"


class DeviceStatus(StrEnum):
    running = "running"
    stopped = "stopped"
    missing = "missing"
    remote = "remote"
    """Held by another daemon sharing the database: only that daemon's Docker engine has its container."""


def _secret_name(v: str) -> str:
    try:
        return secrets.check_name(v)
    except errors.InvalidInput as exc:
        raise ValueError(exc.message.split(": ", 1)[1]) from None


SecretName = Annotated[str, AfterValidator(lambda v: _secret_name(v))]
"""The name of a stored secret (`agentdock secrets set NAME`); it becomes the run's environment variable."""


JsonObject = Annotated[Any, WithJsonSchema({"type": "object"})]
"""Free-form JSON an input field takes as an object (metadata, labels): its own validator checks that it is one
and bounds its size; the schema says `object`, so a client knows what to send."""


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Validate a request body, turning the first problem into an `InvalidInput` naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.InvalidInput("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, model) from None


def invalid(exc: ValidationError, model: type[BaseModel] | None = None) -> errors.InvalidInput:
    """The first problem of a failed validation as an `InvalidInput` naming the field (`model`, when
    known, lists the fields an unknown one could have been)."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "extra_forbidden" and model is not None:
        known = ", ".join(sorted(f.alias or name for name, f in model.model_fields.items()
                                 if not any(isinstance(m, SkipJsonSchema) for m in f.metadata)))
        return errors.InvalidInput(field, f"unknown field; known fields are: {known}")
    msg = err["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if field == "body" and sep and head.isidentifier():
        field, msg = head, rest  # a model-level check that names its field
    return errors.InvalidInput(field, msg)


def _check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"at most {MAX_ENV_VARS} variables")
    total = 0
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{name[:60]!r} is not a valid variable name; use letters, digits and underscores, "
                             "not starting with a digit, at most 128 characters")
        if name.startswith("AGENTDOCK_"):
            raise ValueError(f"{name!r}: the AGENTDOCK_ prefix is reserved")
        if name in RESERVED_ENV or name.startswith("LD_"):
            raise ValueError(f"{name!r} is reserved: the sandbox's shell and run wrapper depend on it; "
                             "install tools under /usr/local/bin or call them by absolute path")
        if "\x00" in value:
            raise ValueError(f"{name}: a value may not contain NUL characters")
        size = len(value.encode())
        if size > MAX_ENV_VALUE_BYTES:
            raise ValueError(f"{name}: a value may be at most {MAX_ENV_VALUE_BYTES} bytes (got {size}); "
                             "put large inputs in a file under /workspace")
        total += len(name) + 1 + size
    if total > MAX_ENV_TOTAL_BYTES:
        raise ValueError(f"at most {MAX_ENV_TOTAL_BYTES} bytes of names and values together (got {total})")
    return env


def _check_text(value: str | None, what: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """Refuse control characters (NUL, newlines, escapes) in a short label, and anything off `pattern`."""
    if value is None:
        return None
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{value[:60]!r} is not a valid {what}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"a {what} may not contain control characters")
    return value


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError("must be a JSON object, e.g. {\"task_id\": \"t1\"}")
    try:
        size = len(json.dumps(metadata, allow_nan=False).encode())
    except (ValueError, RecursionError):
        raise ValueError("must be plain JSON (no NaN or infinity, nested less deeply)") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    paths = metadata.get("artifact_paths")
    if paths is not None:
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or len(paths) > 32:
            raise ValueError("artifact_paths must be a list of at most 32 paths")
        for p in paths:
            workspace_path(p, "artifact_paths")
            if len(p) > 1024 or any(ord(c) < 32 for c in p):
                raise ValueError("artifact_paths: each path is at most 1024 characters, without control characters")
    return metadata


def workspace_path(path: str, what: str = "path") -> str:
    """Resolve `path` against /workspace and refuse anything that escapes it."""
    if not path or "\x00" in path:
        raise ValueError(f"a path inside {WORKSPACE} is required")
    resolved = posixpath.normpath(posixpath.join(WORKSPACE, path))
    if resolved != WORKSPACE and not resolved.startswith(WORKSPACE + "/"):
        raise ValueError(f"{path!r} escapes {WORKSPACE}; use a path inside it")
    return resolved


