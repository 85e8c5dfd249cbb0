"""The model gateway's side in the engine: which runs reach which provider, what a run's device is
given instead of the credential, who a request is from, and what a run's requests cost.

A run given a provider's credential (`engine.providers`) holds a placeholder and the gateway's base
URL in its environment; the gateway (`runtimes.gateway`, served by the daemon on a network only its
devices reach) takes a request with that placeholder, checks it here, puts the real credential on it
and forwards it to the provider. The credential never enters the device.
"""

from __future__ import annotations

import hmac
import logging
from typing import NamedTuple, Protocol

import anyio.abc

from engine import errors, models, providers
from engine.ports import Clock, Harness
from engine.secrets import SecretStore
from engine.store import Store
from engine.tokens import PLACEHOLDER_PREFIX, Tokens

log = logging.getLogger("agentdock.gateway")


class Egress(Protocol):
    """Serves the gateway where devices reach it (`runtimes.gateway.Egress` on Docker)."""

    async def serve(self, gateway: Gateway, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Set `gateway.address` once it answers (left None if it cannot serve), report ready, then serve
        until cancelled."""
        ...


class Grant(NamedTuple):
    """A request the gateway may forward: whose it is, and the credential to put on it."""

    run_id: str
    provider: providers.Provider
    credential: str
    group_id: str | None


class Usage(NamedTuple):
    status: int
    input_tokens: int | None
    output_tokens: int | None


class Gateway:
    def __init__(self, store: Store, secrets: SecretStore, tokens: Tokens, clock: Clock, *,
                 enabled: bool) -> None:
        self.store = store
        self.secrets = secrets
        self.tokens = tokens
        self.clock = clock
        self.enabled = enabled
        """Without an egress (a fake backend), credentials reach runs as plain secrets, as any other does."""
        self.address: str | None = None
        """`http://host:port` where devices reach the gateway, once it serves."""

    def require(self, secret_names: list[str]) -> None:
        """Refuse a run given a provider's credential while the gateway cannot serve it."""
        granted = providers.granted(secret_names)
        if self.enabled and granted and self.address is None:
            raise GatewayUnavailable("the model gateway is not serving (see the daemon's log), so a run cannot be "
                                     f"given {', '.join(p.secret for p in granted)}",
                                     evidence={"secrets": [p.secret for p in granted]})

    def launch_env(self, run_id: str, secret_env: dict[str, str], harness: Harness) -> tuple[dict[str, str], dict[str, str]]:
        """Split a run's secrets into those its process gets (every one but a provider's credential) and
        the environment that points its runtime at the gateway instead (the adapter's `gateway_env`)."""
        granted = providers.granted(list(secret_env))
        if not self.enabled or not granted:
            return secret_env, {}
        self.require(list(secret_env))
        kept = {k: v for k, v in secret_env.items() if k not in providers.BY_SECRET}
        env: dict[str, str] = {}
        for p in granted:
            base = f"{self.address}/{p.name}{p.base_path}"
            env |= harness.gateway_env(p.name, base, self.tokens.placeholder(run_id, p.name))
        return kept, env

    async def admit(self, provider: str, key: str | None) -> Grant:
        """The run a request is from, if `key` is its placeholder for `provider` and it is running:
        `Unauthenticated` for a missing or forged key, `PermissionDenied` for a run that has ended or
        was not given this provider."""
        p = providers.CATALOG.get(provider)
        if p is None:
            raise errors.NotFound("provider", provider, evidence={"providers": sorted(providers.CATALOG)})
        run_id, _, mac = (key or "").removeprefix(PLACEHOLDER_PREFIX).rpartition("_")
        if not key or not key.startswith(PLACEHOLDER_PREFIX) or not run_id or not hmac.compare_digest(
                key, self.tokens.placeholder(run_id, provider)):
            raise errors.Unauthenticated(f"the model gateway needs the run's {p.name} key, the placeholder in its "
                                         "environment; this request has none, or another")
        found = await self.store.runs.run_grant(run_id)
        if found is None:
            raise errors.Unauthenticated(f"no run {run_id}")
        status, secret_names, group_id = found
        if status is not models.RunStatus.running:
            raise errors.PermissionDenied(f"run {run_id} is {status.value}; its key no longer works",
                                          evidence={"run_id": run_id, "status": status.value})
        if p.secret not in secret_names:
            raise errors.PermissionDenied(f"run {run_id} was not given {p.secret}", evidence={"run_id": run_id})
        credential = self.secrets.environment([p.secret], missing_ok=True).get(p.secret)
        if credential is None:
            raise errors.PermissionDenied(f"the secret {p.secret} was removed since run {run_id} started",
                                          suggested_command=f"agentdock secrets set {p.secret}")
        return Grant(run_id, p, credential, group_id)

    async def account(self, grant: Grant, usage: Usage) -> None:
        """Count one forwarded request on its run's record, with an event saying what it cost."""
        async with self.store.write(self.clock.now()) as tx:
            await tx.runs.add_model_usage(grant.run_id, usage.input_tokens or 0, usage.output_tokens or 0)
            await tx.append_events(grant.run_id, [("model_request", f"{grant.provider.name} answered {usage.status}", {
                "provider": grant.provider.name, "status": usage.status, "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens})], group_id=grant.group_id)


class GatewayUnavailable(errors.EngineError):
    code = "gateway_unavailable"
    category = "backend"
    title = "Model gateway unavailable"
    http_status = 503
