"""Records and request bodies, with the seeds' field names. Inputs forbid unknown fields."""

from __future__ import annotations

import json
import posixpath
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema,
                      field_validator, model_validator)
from pydantic.json_schema import SkipJsonSchema

from engine import errors, ids, secrets

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


# ---------------------------------------------------------------- devices


class DeviceCreate(Input):
    """Create a sandbox (small, disposable) or a computer (larger, with a persistent home volume)."""

    kind: TargetKind = TargetKind.sandbox
    """`sandbox` or `computer`."""
    name: str | None = Field(default=None, max_length=100)
    """A label for people."""
    image: str | None = Field(default=None, max_length=200)
    """Docker image; defaults to the daemon's configured image."""
    cpus: float | None = Field(default=None, gt=0, le=16)
    """CPU limit in cores (default 1 for a sandbox, 2 for a computer)."""
    memory_mb: int | None = Field(default=None, ge=32, le=65_536)
    """Memory limit in MiB (default 512 for a sandbox, 2048 for a computer)."""
    pids_limit: int | None = Field(default=None, ge=16, le=32_768)
    """Most processes at once (default 256 for a sandbox, 1024 for a computer)."""
    workspace_mb: int | None = Field(default=None, ge=16, le=1_048_576)
    """Size of /workspace in MiB, enforced by the kernel (default: the daemon's setting for the kind, 1024 for
    a sandbox, 8192 for a computer; a session may not ask for more than that)."""
    tmp_mb: int | None = Field(default=None, ge=16, le=65_536)
    """Size of /tmp in MiB (default: the daemon's setting, 256 for a sandbox, 1024 for a computer)."""
    network: bool = False
    """Give the device a network. Off by default."""
    env: dict[str, str] | None = None
    """Environment for every run in the device."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Your own ids and labels (at most 64 KiB of JSON)."""
    agent_runtime_profile_id: ids.ProfileId | None = None
    """Take image, resources and network (those not given here) from this profile; omitted: your session's
    profile, else the workspace's default, else the tenant's."""
    skip_agent_runtime_profile: bool = False
    """Take nothing from any profile (your session's effective limits still apply)."""
    workspace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """The workspace whose default profile applies (default: yours; a session may name only its own)."""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_text(v, "name")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return _check_text(v, "image reference", IMAGE_REF)

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> dict[str, Any]:
        return _check_metadata(v)


class Device(Record):
    id: str
    kind: TargetKind
    name: str | None
    image: str
    status: DeviceStatus
    cpus: float
    memory_mb: int
    pids_limit: int
    workspace_mb: int | None
    """Size of /workspace in MiB (None: made before sizes were recorded)."""
    tmp_mb: int | None
    network: bool
    ephemeral: bool
    """Created for one run and removed after it."""
    run_id: str | None
    """For an ephemeral device, the run it serves."""
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class DeviceList(Record):
    data: list[Device]


# ---------------------------------------------------------------- runs


class RunCreate(Input):
    """Send a prompt through a runtime into a sandbox or computer (seed: Agent Runs)."""

    prompt: str = Field(min_length=1)
    """Natural-language task to run."""
    target_id: ids.DeviceId | None = None
    """Sandbox or computer id. Omit all targets for a fresh ephemeral sandbox removed after the run."""
    target_kind: TargetKind | None = None
    """Target family (sandbox or computer); inferred from the id."""
    sandbox_id: SkipJsonSchema[ids.SandboxId | None] = None
    """Seed 001's shortcut for `target_id` with a sandbox target (accepted, not advertised: one name for a target)."""
    computer_id: SkipJsonSchema[ids.ComputerId | None] = None
    """Seed 001's shortcut for `target_id` with a computer target (accepted, not advertised)."""
    provider: Provider | None = None
    """osa, codex, claude, claude-code, pi, hermes or custom (default: custom when `command` is set, else claude-code)."""
    command: str | None = None
    """Runtime command for the custom provider, run with `sh -c`; the prompt is on stdin and in AGENTDOCK_PROMPT."""
    model: str | None = Field(default=None, max_length=200)
    """Provider-specific model override."""
    cwd: str = WORKSPACE
    """Working directory inside /workspace."""
    timeout: int = DEFAULT_TIMEOUT_SECONDS
    """Run timeout in seconds (1 to 86400)."""
    metadata: JsonObject = None
    """Product ids, labels; `artifact_paths` lists files under /workspace to copy out when the run ends."""
    env: dict[str, str] | None = None
    """Extra environment for this run; overrides the device's."""
    secrets: list[SecretName] | None = None
    """Names of stored secrets (`agentdock secrets set NAME`) this run needs: each reaches the run's
    process as an environment variable of that name, and nowhere else; its value is masked in output."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """The same key with the same body returns the same run."""
    agent_runtime_profile_id: ids.ProfileId | None = None
    """Run under this agent runtime profile (arp_...) instead of the workspace's or tenant's default."""
    agent_profile_id: SkipJsonSchema[ids.ProfileId | None] = None
    """The same as agent_runtime_profile_id (the seed's other name for it; accepted, not advertised)."""
    skip_agent_runtime_profile: bool = False
    """Apply no profile at all, not even a default."""
    workspace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """The workspace the run belongs to, whose default profile applies (default: yours; the local user's
    is `default`)."""

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) > secrets.MAX_PER_RUN:
                raise ValueError(f"at most {secrets.MAX_PER_RUN} secrets")
            if len(set(v)) != len(v):
                raise ValueError("a secret is named twice")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        if len(v.encode()) > MAX_PROMPT_BYTES or "\x00" in v:
            raise ValueError(f"must be at most {MAX_PROMPT_BYTES} bytes with no NUL characters")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or len(v.encode()) > MAX_COMMAND_BYTES or "\x00" in v):
            raise ValueError(f"must be a non-empty shell command of at most {MAX_COMMAND_BYTES} bytes")
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str) -> str:
        return workspace_path(v, "cwd")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: int) -> int:
        if not 1 <= v <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"must be between 1 and {MAX_TIMEOUT_SECONDS} seconds")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: Any) -> dict[str, Any]:
        return _check_metadata(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return _check_text(v, "model name", MODEL_NAME)

    @field_validator("idempotency_key")
    @classmethod
    def _idempotency_key(cls, v: str | None) -> str | None:
        return _check_text(v, "idempotency key (printable ASCII, no spaces)", IDEMPOTENCY_KEY)

    @model_validator(mode="after")
    def _target_and_provider(self) -> RunCreate:
        given = [(k, v) for k, v in (("target_id", self.target_id), ("sandbox_id", self.sandbox_id),
                                     ("computer_id", self.computer_id)) if v]
        if len(given) > 1:
            raise ValueError("target_id: give one of target_id, sandbox_id or computer_id, not several")
        if self.target_kind and not given:
            raise ValueError("target_id: target_kind needs target_id")
        if self.provider is None:  # set without marking it given: a profile's runtime may still apply
            object.__setattr__(self, "provider", Provider.custom if self.command else Provider.claude_code)
        a, b = self.agent_runtime_profile_id, self.agent_profile_id
        if a and b and a != b:
            raise ValueError("agent_profile_id: agent_runtime_profile_id and agent_profile_id name the same thing; "
                             f"they differ here ({a} and {b}), give one")
        if self.skip_agent_runtime_profile and (a or b):
            raise ValueError("skip_agent_runtime_profile: true applies no profile, yet a profile id is given; "
                             "give one or the other")
        for i, name in enumerate(self.secrets or []):
            if name in (self.env or {}):
                raise ValueError(f"secrets: {name!r} is also given in env; a secret reaches the run as the variable "
                                 "of its name, so give it once")
        if self.provider is Provider.custom and not self.command:
            raise ValueError("command: the custom provider needs `command` (the runtime command to run)")
        return self

    @property
    def profile_asked(self) -> str | None:
        return self.agent_runtime_profile_id or self.agent_profile_id

    @property
    def provider_given(self) -> bool:
        """Whether the run names its own runtime (a provider, or a command, which means custom)."""
        return "provider" in self.model_fields_set or self.command is not None

    def target(self) -> tuple[TargetKind | None, str | None]:
        if self.sandbox_id:
            return TargetKind.sandbox, self.sandbox_id
        if self.computer_id:
            return TargetKind.computer, self.computer_id
        return self.target_kind, self.target_id

    def fingerprint(self) -> str:
        """What makes two requests 'the same body' for idempotency: the normalized request, so
        `sandbox_id: S` and `target_id: S` (with or without `target_kind`) are the same target."""
        body = self.model_dump(mode="json", exclude={"idempotency_key", "target_id", "target_kind", "sandbox_id",
                                                     "computer_id"})
        kind, target = self.target()
        if kind is None and target is not None:
            kind = KIND_OF_PREFIX.get(target.split("_", 1)[0])
        body["target"] = [kind.value if kind else None, target]
        body["env"] = self.env or {}
        body["secrets"] = self.secrets or []
        return json.dumps(body, sort_keys=True)


def _secret_name(v: str) -> str:
    try:
        return secrets.check_name(v)
    except errors.InvalidInput as exc:
        raise ValueError(exc.message.split(": ", 1)[1]) from None


RunCreateT = TypeVar("RunCreateT", bound=RunCreate)
"""A run request or one of its kind (a group's manifest item)."""

KIND_OF_PREFIX = {"sbx": TargetKind.sandbox, "cmp": TargetKind.computer}
"""Device ids say their kind: sbx_... is a sandbox, cmp_... a computer."""


class Run(Record):
    id: str
    target_kind: TargetKind
    target_id: str
    provider: Provider
    prompt: str
    command: str | None
    model: str | None
    cwd: str
    timeout: int
    metadata: dict[str, Any]
    env_keys: list[str]
    """Names of the run-level environment variables (values are not echoed)."""
    secrets: list[str] = Field(default_factory=list)
    """Names of the secrets the run was given (never their values)."""
    status: RunStatus
    output: str
    """Stdout for custom runtimes; the agent's final answer for structured ones."""
    stderr: str
    output_truncated: bool
    stderr_truncated: bool
    exit_code: int | None
    failure_kind: str | None
    """Why a run failed or was canceled: nonzero_exit, timeout, canceled, runtime_not_found, auth_required, secret_missing, pids_exhausted, disk_full, sandbox_lost, process_lost, backend_error."""
    error: str | None
    """Human-readable reason for failure_kind."""
    pids_peak: int | None = None
    """The most processes the run had at once (measured in a sandbox or computer it shared; null otherwise)."""
    memory_peak_bytes: int | None = None
    """The most memory the run's processes used at once, in bytes (measured as pids_peak is)."""
    model_requests: int = 0
    """Requests the run made to model providers through the model gateway."""
    input_tokens: int = 0
    """Input tokens those requests used, as the providers' answers reported them."""
    output_tokens: int = 0
    """Output tokens those requests used, as the providers' answers reported them."""
    ephemeral: bool
    agent_run_group_id: str | None = None
    orchestration_role: str | None = None
    parent_agent_run_id: str | None = None
    profile_id: str | None = None
    """The agent runtime profile the run resolved to (None: none applied)."""
    profile_snapshot: dict[str, Any] | None = None
    """That profile as it was when the run was created: source (explicit, workspace_default, tenant_default),
    runtime, model, image, resources, network, env, tools, policy and secret names."""
    workspace_id: str | None = None
    """The workspace whose default profile the run looked for."""
    idempotency_key: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    output_omitted: bool = False
    """In a list past its byte budget (1 MiB): `output` and `stderr` left out (empty); agent_run_get has them."""


class RunList(Record):
    data: list[Run]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null at the end."""


class RunListQuery(Input):
    target_id: ids.DeviceId | None = None
    """Only runs in this sandbox or computer."""
    status: RunStatus | None = None
    """Only runs in this status."""
    limit: int = Field(default=20, ge=1, le=200)
    """At most this many, newest first."""
    cursor: ids.RunId | None = None
    """The `next_cursor` of the previous page."""


class RunEvent(Record):
    id: str
    agent_run_id: str
    agent_run_group_id: str | None
    sequence: int
    """1..n per run, without gaps."""
    type: str
    message: str
    payload: dict[str, Any]
    created_at: datetime


class RunEventList(Record):
    data: list[RunEvent]
    run_status: RunStatus
    """The run's status when this page was read; stop polling once it is terminal and `data` is empty."""
    next_after_sequence: int
    """Pass as `after` to get the events that follow."""


class EventsQuery(Input):
    after_sequence: int = Field(default=0, ge=0, le=MAX_SEQUENCE,
                                validation_alias=AliasChoices("after_sequence", "after"))
    """Only events with a sequence greater than this (a cursor: the last sequence you saw)."""
    limit: int = Field(default=500, ge=1, le=1000)
    """At most this many events."""
    wait_seconds: float = Field(default=0, ge=0, le=50, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Seconds to wait for a new event when there is none (long-poll, at most 45 s over MCP)."""


class Artifact(Record):
    agent_run_id: str
    path: str
    """Path inside the device, under /workspace."""
    size: int
    sha256: str
    created_at: datetime


class ArtifactList(Record):
    data: list[Artifact]


class ArtifactMissing(Record):
    path: str
    reason: str


RunEventType = Literal[
    "run_queued", "run_started", "output", "stderr", "command_started", "command_finished",
    "message", "tool_use", "artifact_exported", "run_finished",
]
