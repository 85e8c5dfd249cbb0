"""Runs: the requests and records of the surfaces (a run, its events, its artifacts), and the store's rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from engine import ids, models, secrets
from engine.models import (DEFAULT_TIMEOUT_SECONDS, IDEMPOTENCY_KEY, MAX_COMMAND_BYTES, MAX_PROMPT_BYTES, MAX_SEQUENCE,
                           MAX_TIMEOUT_SECONDS, MODEL_NAME, WORKSPACE, Input, JsonObject, Provider, Record, RunStatus,
                           SecretName, TargetKind, _check_env, _check_metadata, _check_text, workspace_path)
from engine.records import EventRow, Row


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

    @classmethod
    def of(cls, row: EventRow) -> RunEvent:
        return cls(id=row.id, agent_run_id=row.run_id or "", agent_run_group_id=row.group_id, sequence=row.sequence,
                   type=row.type, message=row.message, payload=row.payload, created_at=row.created_at)


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


class RunRow(Row):
    id: str
    target_kind: models.TargetKind
    target_id: str
    provider: models.Provider
    prompt: str
    command: str | None
    model: str | None
    cwd: str
    timeout: int
    metadata: dict[str, Any]
    env: dict[str, str]
    secrets: list[str] = []
    """The names of the secrets the run asked for (values live only under the home's secrets/)."""
    status: models.RunStatus
    output: str
    """What was kept of stdout (or the structured runtime's answer), pending chunks included."""
    stderr: str
    output_truncated: bool
    stderr_truncated: bool
    stdout_offset: int
    stderr_offset: int
    exit_code: int | None
    failure_kind: str | None
    error: str | None
    pids_peak: int | None = None
    memory_peak_bytes: int | None = None
    model_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ephemeral: bool
    cancel_requested: datetime | None
    agent_run_group_id: str | None
    orchestration_role: str | None
    parent_agent_run_id: str | None
    profile_id: str | None
    profile_snapshot: dict[str, Any] | None = None
    """What the run's profile resolved to when it was created (None: no profile)."""
    workspace_id: str | None = None
    idempotency_key: str | None
    request_hash: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created_by: str
    daemon_id: str | None = None
    """The daemon that started it (None: not started, or started before daemons were recorded)."""
    output_omitted: bool = False
    """Read in a list past its byte budget: output and stderr were not read."""

    def record(self) -> Run:
        return Run(
            id=self.id, target_kind=self.target_kind, target_id=self.target_id, provider=self.provider,
            prompt=self.prompt, command=self.command, model=self.model, cwd=self.cwd, timeout=self.timeout,
            metadata=self.metadata, env_keys=sorted(self.env), secrets=list(self.secrets), status=self.status, output=self.output,
            stderr=self.stderr, output_truncated=self.output_truncated, stderr_truncated=self.stderr_truncated,
            exit_code=self.exit_code, failure_kind=self.failure_kind, error=self.error, ephemeral=self.ephemeral,
            pids_peak=self.pids_peak, memory_peak_bytes=self.memory_peak_bytes,
            model_requests=self.model_requests, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            agent_run_group_id=self.agent_run_group_id, orchestration_role=self.orchestration_role,
            parent_agent_run_id=self.parent_agent_run_id, profile_id=self.profile_id,
            profile_snapshot=self.profile_snapshot, workspace_id=self.workspace_id, idempotency_key=self.idempotency_key, started_at=self.started_at, finished_at=self.finished_at,
            created_at=self.created_at, updated_at=self.updated_at, output_omitted=self.output_omitted,
        )


class ArtifactRow(Row):
    run_id: str
    path: str
    size: int
    sha256: str
    stored_as: str
    created_at: datetime

    def record(self) -> Artifact:
        return Artifact(agent_run_id=self.run_id, path=self.path, size=self.size, sha256=self.sha256,
                               created_at=self.created_at)
