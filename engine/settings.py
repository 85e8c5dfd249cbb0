"""Configuration: one settings object read from AGENTDOCK_* environment variables (and CLI flags)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import errors


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTDOCK_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".agentdock")
    """State directory: the database, sockets, artifacts, logs."""
    image: str = "agentdock-full:latest"
    """Image for devices that name none (build it with `agentdock image build`)."""
    output_cap_bytes: int = 1_048_576
    """How much of a run's output and of its stderr is kept; the rest is cut and flagged."""
    structured_stream_cap_bytes: int = 67_108_864
    """How much of a structured runtime's JSON-lines stdout is kept inside the device while it runs:
    the events and the final answer are parsed from it, so it is allowed more than `output_cap_bytes`."""
    artifact_max_bytes: int = 10_485_760
    """Largest file copied out of a device as an artifact."""
    cancel_grace_seconds: float = 5.0
    """Between TERM and KILL when a run is canceled or times out."""
    flush_interval_seconds: float = 0.1
    """Output is coalesced into events at most this often..."""
    flush_bytes: int = 16_384
    """...or whenever this much is pending."""
    mcp_max_wait_seconds: float = Field(default=45, gt=0, le=50)
    """The longest one MCP tool call waits (for a run's end): clients time tool calls out at about a minute."""
    max_active_runs: int = Field(default_factory=lambda: min(64, 8 * (os.cpu_count() or 2)), ge=1, le=10_000)
    """Daemon-wide cap on runs started and not yet settled; the rest wait `queued`, in creation order."""
    pool_size: int = Field(default=2, ge=0, le=1_000)
    """Warm starts: started sandboxes kept ready per image and resource shape, so a run without a target
    claims one instead of creating its container; 0 turns the pool off. Pooled and active runs together
    never pass `max_active_runs`."""
    pool_shape_idle_seconds: float = Field(default=600, gt=0)
    """A shape other than the default sandbox's is pooled once runs ask for it, and emptied after this
    long without one."""
    group_entry_max_attempts: int = Field(default=3, ge=1, le=100)
    """Child runs a group entry may get: a run lost with its sandbox or process is retried until then."""
    sse_heartbeat_seconds: float = Field(default=15, gt=0, le=300)
    """Between heartbeat comments on an SSE stream of group events that is waiting for the next one."""
    sandbox_workspace_mb: int = Field(default=1024, ge=16, le=1_048_576)
    """The size of a sandbox's /workspace in MiB: a filesystem of its own (a loop-mounted image file under
    the home, sparse: it takes room on the host only as it is written); a run that fills it ends `disk_full`."""
    sandbox_tmp_mb: int = Field(default=256, ge=16, le=65_536)
    """The size of a sandbox's /tmp in MiB (a tmpfs: what is in it counts against the sandbox's memory)."""
    computer_workspace_mb: int = Field(default=8192, ge=16, le=1_048_576)
    """The size of a computer's /workspace in MiB (see `sandbox_workspace_mb`)."""
    computer_tmp_mb: int = Field(default=1024, ge=16, le=65_536)
    """The size of a computer's /tmp in MiB (see `sandbox_tmp_mb`)."""
    docker_threads: int = 16
    """Bound on concurrent blocking Docker API calls."""
    docker_call_timeout_seconds: float = Field(default=30, gt=0, le=600)
    """The longest one Docker API call may take; past it the call is abandoned and its device treated as
    stuck (its runs end `sandbox_lost`, and the device is repaired)."""
    channel_quota_bytes: int = Field(default=64 * 1_048_576, ge=65_536)
    """What one tree of sessions (a child of the local user and every session below it) may write to
    channels in all, bodies and metadata. The local user has no quota."""
    channel_quota_messages: int = Field(default=100_000, ge=1)
    """Messages one tree of sessions may send in all."""
    workspace_channel_quota_bytes: int = Field(default=256 * 1_048_576, ge=65_536)
    """What the sessions of one workspace, every tree together, may write to channels in all."""
    workspace_channel_quota_messages: int = Field(default=400_000, ge=1)
    """Messages the sessions of one workspace may send in all."""
    task_quota_tasks: int = Field(default=10_000, ge=1)
    """Tasks one tree of sessions may create in all."""
    task_quota_bytes: int = Field(default=256 * 1_048_576, ge=65_536)
    """Bytes of task titles, payloads, results and errors one tree of sessions may write in all."""
    workspace_task_quota_tasks: int = Field(default=40_000, ge=1)
    """Tasks the sessions of one workspace may create in all."""
    workspace_task_quota_bytes: int = Field(default=1_024 * 1_048_576, ge=65_536)
    """Bytes of task titles, payloads, results and errors the sessions of one workspace may write in all."""
    tree_max_live_sandboxes: int = Field(default=16, ge=0, le=10_000)
    """Live sandboxes and computers (ephemeral ones of unfinished runs too) one tree of sessions may have."""
    workspace_max_live_sandboxes: int = Field(default=32, ge=0, le=10_000)
    """Live sandboxes and computers the sessions of one workspace may have, every tree together."""
    task_payload_max_bytes: int = Field(default=262_144, ge=1_024, le=4 * 1_048_576)
    """Largest task payload, as JSON (bigger data belongs in an artifact or a file in the workspace)."""
    task_result_max_bytes: int = Field(default=262_144, ge=1_024, le=4 * 1_048_576)
    """Largest task result, as JSON."""
    list_page_max_bytes: int = Field(default=1_048_576, ge=65_536, le=8 * 1_048_576)
    """The most bodies (task payloads and results, message bodies) one list answer carries; past it a list
    gives summaries (`task_list`) or stops early (`channel_recv`, whose cursor stays at the last one given)."""
    approval_ttl_seconds: float = Field(default=600, ge=1, le=7 * 86_400)
    """How long a pending approval waits for a person before it expires (expiry denies), and how long an
    approved one may wait to be used by the call it approves."""
    soul_enabled: bool = True
    """Whether souls are in effect; off, they are still read and checked but never `active`."""
    soul_agent_name: str = Field(default="agentdock", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """The local user's (the root session's) agent name: its soul is `souls/<soul_agent_name>.md`."""
    soul_max_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576)
    """Largest soul document, frontmatter and body together."""
    soul_max_body_bytes: int = Field(default=49_152, ge=0, le=1_048_576)
    """Largest soul body."""
    soul_context_projection_bytes: int = Field(default=4_096, ge=0, le=1_048_576)
    """Most of a soul (role, principles, tone) put into an agent's context bundle."""
    soul_workspace: Path | None = None
    """A project directory whose `.agentdock/souls/<agent_name>.md` is read before the home's."""
    osa_command: str | None = Field(default=None, min_length=1, max_length=16_384)
    """The `osa` runtime's command template (its invocation is not public): run with `sh -c`, the prompt on
    stdin and in AGENTDOCK_PROMPT, the model as `$1`. Unset: `osa` with the prompt on stdin."""
    image_runtimes: str = ""
    """The real agent CLIs `agentdock image build` puts in the agents image when `--runtimes` is not given
    (comma-separated: claude-code,codex,pi,hermes); empty: no agents image."""

    gateway_port: int = Field(default=47180, ge=1, le=65_535)
    """The model gateway's port, on the address of its network that only this home's devices reach."""
    gateway_upstreams: str = ""
    """Where the model gateway forwards each provider's requests, overriding the real APIs:
    `anthropic=http://127.0.0.1:8080,openai=http://127.0.0.1:8081` (tests point it at a scripted server)."""

    database_url: str | None = Field(default=None, pattern=r"^postgres(ql)?://", max_length=4096)
    """A PostgreSQL database (`postgresql://user@host/db`, or `postgresql:///db?host=/socket/dir`) shared by
    several daemons, each with its own home and Docker engine. Unset: the home's SQLite file."""

    listen: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$", max_length=300)
    """`host:port` where the daemon also serves over TCP (the HTTP API and MCP at /mcp), behind the bearer
    token in `home/http.token`. Unset (the default): nothing listens on TCP. `127.0.0.1:8765` keeps it on
    this machine; another address opens it to the network."""
    allowed_origins: str = Field(default="", max_length=4096)
    """Browser origins the TCP listener accepts besides its own (`http://host:port`), comma-separated; a
    request from any other Origin is refused (403). Requests without an Origin (CLIs, agents) pass."""

    daemon_heartbeat_seconds: float = Field(default=2.0, gt=0, le=60)
    """How often a daemon records that it is alive (and the leader looks for daemons that stopped)."""
    daemon_lost_after_seconds: float = Field(default=15.0, gt=0, le=3600)
    """How long a daemon sharing the database may stay silent before the leader settles its running runs
    `process_lost` (its groups retry those entries elsewhere); also the leader's lease."""

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Settings from the environment (and flags), a bad value refused as a diagnostic naming
        its variable rather than a traceback."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            err = exc.errors()[0]
            name = "AGENTDOCK_" + str(err["loc"][0]).upper() if err["loc"] else "AGENTDOCK_*"
            raise errors.InvalidInput(name, err["msg"], suggested_command="env | grep AGENTDOCK_") from None

    @property
    def db_path(self) -> Path:
        return self.home / "agentdock.db"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def souls_dir(self) -> Path:
        return self.home / "souls"

    @property
    def http_token_path(self) -> Path:
        """The TCP listener's bearer token (mode 0600), made on first use."""
        return self.home / "http.token"

    @property
    def control_socket(self) -> Path:
        return self.home / "control.sock"

    @property
    def agent_socket(self) -> Path:
        """Served for sessions (bearer tokens only); its directory is mounted into every device."""
        return self.home / "agent" / "agent.sock"
