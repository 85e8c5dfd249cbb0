"""Agent runtime profiles' inputs, records and store rows (seed 003: Agent Runtime Profiles), and the
pure rules about them: which env values look like secrets, which tools a bundle opens."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import Field, field_validator

from engine import errors, ids, models
from engine.records import Row

LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CONNECTOR = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
MAX_LIST = 64


class Runtime(StrEnum):
    """The seed's runtime catalog (each is a `models.Provider` of the same name)."""

    osa = "osa"
    codex = "codex"
    claude_code = "claude-code"
    pi = "pi"
    hermes = "hermes"
    custom = "custom"


class Bundle(StrEnum):
    files = "files"
    exec = "exec"
    browser = "browser"
    previews = "previews"
    artifacts = "artifacts"
    deploy = "deploy"


class Approval(StrEnum):
    none = "none"
    """Risky actions run without asking."""
    confirm_risky = "confirm-risky"
    """Creating a device with network, deleting a device, cancelling a group ask the user first (MCP
    elicitation); refused when the client cannot ask or the user declines."""


class Resource(StrEnum):
    sandbox = "sandbox"
    computer = "computer"


# What each bundle opens among the tools a bundle governs (`GOVERNED`): a session under a profile with
# `tools` sees and may call only those, besides every tool no bundle governs (who it is, its soul,
# channels, tasks, spawning, profiles). agentdock has no file-editing or browser tools of its own:
# a run's files are the sandbox's, so `files` opens reading files a run exported, as `artifacts` does.
BUNDLE_TOOLS: dict[Bundle, tuple[str, ...]] = {
    Bundle.exec: ("sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete", "agent_run", "agent_run_get",
                  "agent_run_list", "agent_run_cancel", "agent_run_events", "group_create", "group_dispatch",
                  "group_get", "group_list", "group_runs", "group_events", "group_cancel"),
    Bundle.files: ("agent_run_artifacts",),
    Bundle.artifacts: ("agent_run_artifacts",),
    Bundle.browser: (),
    Bundle.previews: (),
    Bundle.deploy: (),
}
GOVERNED = frozenset(t for tools in BUNDLE_TOOLS.values() for t in tools)


def denied_tools(bundles: list[str] | None) -> frozenset[str]:
    """The governed tools a profile's `tools` leave out (nothing when it names no bundle list)."""
    if bundles is None:
        return frozenset()
    allowed = {t for b in bundles for t in BUNDLE_TOOLS.get(Bundle(b), ())}
    return GOVERNED - allowed


# ---------------------------------------------------------------- secret-looking env

SECRET_KEY = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_?KEY|ACCESS_?KEY)", re.I)
SECRET_PREFIXES = ("sk-", "sk_live_", "sk_test_", "rk_live_", "ghp_", "gho_", "ghs_", "github_pat_", "glpat-",
                   "xoxb-", "xoxp-", "xoxa-", "AKIA", "ASIA", "AIza", "msk_live_", "-----BEGIN")
HIGH_ENTROPY_MIN_CHARS = 32
HIGH_ENTROPY_BITS = 3.7
TOKENISH = re.compile(r"[A-Za-z0-9+/=_.\-]+")


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_secret(name: str, value: str) -> str | None:
    """Why `name=value` looks like a credential (a reason to show), or None."""
    if SECRET_KEY.search(name):
        return "its name says it holds a credential"
    stripped = value.strip()
    if stripped.startswith(SECRET_PREFIXES):
        return "its value starts like an API key"
    if (len(stripped) >= HIGH_ENTROPY_MIN_CHARS and TOKENISH.fullmatch(stripped) and "://" not in stripped
            and not stripped.startswith(("/", ".")) and any(c.isdigit() for c in stripped)
            and any(c.isalpha() for c in stripped) and _entropy(stripped) >= HIGH_ENTROPY_BITS
            and sum(c in "-_." for c in stripped) < len(stripped) / 10):  # words joined by dashes are names
        return "its value is a long random-looking string, as keys are"
    return None


def check_env(env: dict[str, str], field: str = "env") -> None:
    """Refuse a profile env value that looks like a secret: secrets go in the secret store, by name."""
    for name, value in env.items():
        why = looks_secret(name, value)
        if why:
            raise errors.InvalidInput(
                f"{field}.{name}", f"looks like a secret ({why}); a profile's env is for non-secret defaults and is "
                f"stored and shown as is. Store the value with `agentdock secrets set {name}` (value on stdin) and "
                f"list it in the profile's secrets: [\"{name}\"]; it then reaches the run as ${name} and nowhere else",
                suggested_command=f"agentdock secrets set {name}", evidence={"secret_name": name})


# ---------------------------------------------------------------- inputs


class AppliesTo(models.Input):
    resources: list[Resource] = Field(default_factory=lambda: [Resource.sandbox, Resource.computer], max_length=2)
    """Device kinds this profile is meant for."""


class Resources(models.Input):
    """Limits of the devices a run under this profile creates (each omitted: the device kind's default)."""

    cpus: float | None = Field(default=None, gt=0, le=16)
    """CPUs, fractions allowed."""
    memory_mb: int | None = Field(default=None, ge=32, le=65_536)
    """Memory in MiB."""
    pids_limit: int | None = Field(default=None, ge=16, le=32_768)
    """Most processes at once."""
    workspace_mb: int | None = Field(default=None, ge=16, le=1_048_576)
    """Size of /workspace in MiB, enforced by the kernel (a run that fills it ends `disk_full`)."""
    tmp_mb: int | None = Field(default=None, ge=16, le=65_536)
    """Size of /tmp in MiB, enforced the same way."""


class Policy(models.Input):
    approval: Approval = Approval.none
    """`confirm-risky`: a risky call of a session under this profile (a device with network, deleting a device,
    cancelling a group) waits for a person's approval (`approval_required`)."""
    max_child_sandboxes: int | None = Field(default=None, ge=0, le=10_000)
    """Most live sandboxes a session under this profile (and the sessions it spawns) may have created at once."""


class _Fields(models.Input):
    description: str | None = Field(default=None, max_length=2000)
    """Operator-facing summary."""
    applies_to: AppliesTo | None = None
    """Resource selectors, e.g. {"resources": ["sandbox", "computer"]}."""
    tools: list[Bundle] | None = Field(default=None, max_length=6)
    """Tool bundles a session under this profile may use: files, exec, browser, previews, artifacts, deploy
    (omitted: no restriction; [] : none of the bundle-governed tools)."""
    connectors: list[str] | None = Field(default=None, max_length=MAX_LIST)
    """Connector ids to grant through the broker (recorded; agentdock brokers none yet)."""
    env: dict[str, str] | None = None
    """Non-secret environment defaults; run-level env overrides them. Secret-looking values are refused."""
    secrets: list[models.SecretName] | None = None
    """Names of stored secrets (`agentdock secrets set NAME`) every run under this profile receives."""
    model: str | None = Field(default=None, max_length=200)
    """Model for runs that name none."""
    image: str | None = Field(default=None, max_length=200)
    """Image of the devices a run under this profile creates."""
    resources: Resources | None = None
    """cpus, memory_mb, pids_limit, workspace_mb, tmp_mb of the devices a run under this profile creates."""
    network: bool | None = None
    """Give the devices a run under this profile creates a network (off unless true)."""
    policy: Policy | None = None
    """approval (none | confirm-risky) and max_child_sandboxes."""
    metadata: models.JsonObject = None
    """Product ids, labels, rollout data (at most 64 KiB of JSON)."""
    is_default: bool | None = None
    """Make this the default profile of its scope (the tenant, or its workspace); the old default stops being it."""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return models._check_env(v)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a secret is named twice")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[Bundle] | None) -> list[Bundle] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a bundle is named twice")
        return v

    @field_validator("connectors")
    @classmethod
    def _connectors(cls, v: list[str] | None) -> list[str] | None:
        for c in v or []:
            if not re.fullmatch(CONNECTOR, c):
                raise ValueError(f"{c[:60]!r} is not a connector id (letters, digits and ._:/@+-)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return models._check_text(v, "model name", models.MODEL_NAME)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return models._check_text(v, "image reference", models.IMAGE_REF)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("may not contain NUL characters")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        return None if v is None else models._check_metadata(v)


def _check_name(v: str | None) -> str | None:
    if v is not None and (not v.strip() or any(ord(c) < 32 or ord(c) == 127 for c in v)):
        raise ValueError("must be a non-blank name without control characters")
    return v


class ProfileCreate(_Fields):
    """Create an agent runtime profile (seed 003)."""

    name: str = Field(min_length=1, max_length=100)
    """Human-readable name, unique within its scope (the tenant, or its workspace)."""
    runtime: Runtime
    """Runtime harness: osa, codex, claude-code, pi, hermes or custom."""
    workspace_id: str | None = Field(default=None, pattern=LABEL)
    """Scope the profile to a workspace; omit for a tenant-level profile."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_name(v)


class ProfileUpdate(_Fields):
    """Change a profile: the fields given replace the stored ones; the rest stay."""

    profile_id: ids.ProfileId
    """The profile id (arp_...)."""
    name: str | None = Field(default=None, min_length=1, max_length=100)
    """A new name, unique in its scope."""
    runtime: Runtime | None = None
    """A new runtime harness."""
    workspace_id: str | None = Field(default=None, pattern=LABEL)
    """A profile's scope cannot change; given, it must be the profile's own."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_name(v)


ProfileFields = TypeVar("ProfileFields", ProfileCreate, ProfileUpdate)


class ProfileRef(models.Input):
    profile_id: ids.ProfileId
    """The profile id (arp_...)."""


class ProfileListQuery(models.Input):
    workspace_id: str | None = Field(default=None, pattern=LABEL)
    """Only the profiles of this workspace (omit: every profile you can see)."""


# ---------------------------------------------------------------- records


class Profile(models.Record):
    id: str
    workspace_id: str | None
    name: str
    runtime: Runtime
    description: str | None
    applies_to: dict[str, Any]
    tools: list[str] | None
    connectors: list[str]
    env: dict[str, str]
    secrets: list[str]
    """Names only; values stay in the secret store."""
    model: str | None
    image: str | None
    resources: dict[str, Any]
    network: bool
    policy: dict[str, Any]
    metadata: dict[str, Any]
    is_default: bool
    created_at: datetime
    updated_at: datetime


class ProfileList(models.Record):
    data: list[Profile]


class ProfileRow(Row):
    id: str
    workspace_id: str | None
    name: str
    runtime: Runtime
    description: str | None
    applies_to: dict[str, Any]
    tools: list[str] | None
    connectors: list[str]
    env: dict[str, str]
    secrets: list[str]
    model: str | None
    image: str | None
    resources: dict[str, Any]
    network: bool
    policy: dict[str, Any]
    metadata: dict[str, Any]
    is_default: bool
    created_by: str
    created_at: datetime
    updated_at: datetime

    @field_validator("applies_to", "tools", "connectors", "resources", "policy", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def record(self) -> Profile:
        return Profile(**self.model_dump(exclude={"created_by"}))

    def snapshot(self, source: str) -> dict[str, Any]:
        """What a run or session resolved this profile to, kept with it (values of secrets never)."""
        return {"id": self.id, "name": self.name, "workspace_id": self.workspace_id, "source": source,
                "runtime": str(self.runtime), "model": self.model, "image": self.image, "resources": self.resources,
                "network": self.network, "env": dict(self.env), "tools": self.tools, "policy": self.policy,
                "applies_to": self.applies_to,
                "secrets": list(self.secrets), "updated_at": self.updated_at.isoformat()}
