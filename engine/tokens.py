"""Session bearer tokens. A token is derived from the session id with a key kept in the home
(owner-only), so it can be handed to the session's runs at launch without ever being stored: the
database keeps only its SHA-256. Stopping or expiring the session is what revokes it."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

PREFIX = "adt_"
PLACEHOLDER_PREFIX = "adgw_"
AGENT_SOCKET_IN_DEVICE = "/run/agentdock/agent.sock"
"""Where `agent.sock` appears inside every sandbox and computer (its directory is mounted there)."""


class Tokens:
    def __init__(self, home: Path) -> None:
        self.path = home / "session.key"
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = self._load()
        return self._key

    def _load(self) -> bytes:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return self.path.read_bytes()

    def token_for(self, session_id: str) -> str:
        return PREFIX + hmac.new(self.key, session_id.encode(), hashlib.sha256).hexdigest()

    def placeholder(self, run_id: str, provider: str) -> str:
        """The key a run holds for `provider` in place of the credential: only the model gateway takes
        it, for this run and provider, while the run is running. Derived, never stored, so it holds
        across a restart of the daemon."""
        mac = hmac.new(self.key, f"gateway:{run_id}:{provider}".encode(), hashlib.sha256).hexdigest()
        return f"{PLACEHOLDER_PREFIX}{run_id}_{mac}"

    @staticmethod
    def digest(token: str) -> str:
        """What the database keeps of a token."""
        return hashlib.sha256(token.encode()).hexdigest()

    def run_env(self, run_id: str, created_by: str, root_session_id: str) -> dict[str, str]:
        """What a run's process learns of who it is: its run, the agent socket, and, for a run of a
        spawned session, that session and its token."""
        env = {"AGENTDOCK_RUN_ID": run_id, "AGENTDOCK_SOCKET": AGENT_SOCKET_IN_DEVICE}
        if created_by != root_session_id:
            env |= {"AGENTDOCK_SESSION_ID": created_by, "AGENTDOCK_TOKEN": self.token_for(created_by)}
        return env
