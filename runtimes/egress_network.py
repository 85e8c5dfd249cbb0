"""The model gateway's network: a home's internal Docker network, where devices without `network` reach
the gateway on the host's address and nothing else."""

from __future__ import annotations

import fcntl
import hashlib
import socket
import struct
from typing import Any

import docker.errors

from engine import errors
from runtimes import docker_calls


def host_address(network: dict[str, Any]) -> str:
    """The host's address on a Docker bridge network (as `inspect_network` gives it): its IPAM gateway,
    or, where Docker did not record one (the default bridge, after dockerd restarts on an existing
    docker0), the IPv4 address of its bridge interface."""
    config = ((network.get("IPAM") or {}).get("Config") or [{}])[0]
    if config.get("Gateway"):
        return str(config["Gateway"]).split("/")[0]
    iface = (network.get("Options") or {}).get("com.docker.network.bridge.name") or (
        "docker0" if network.get("Name") == "bridge" else None)
    if iface:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", iface[:15].encode()))
                return socket.inet_ntoa(packed[20:24])
            except OSError:
                pass
    raise errors.SandboxUnavailable(f"Docker network {network.get('Name')!r} shows no address of the host")


def egress_names(home: str) -> tuple[str, str]:
    """A home's internal network and its bridge interface (at most 15 characters)."""
    digest = hashlib.sha256(home.encode()).hexdigest()[:10]
    return f"agentdock-egress-{digest}", f"adgw{digest}"


class EgressNetwork(docker_calls.DockerCalls):
    """The egress network of `DockerBackend`: made, joined by the devices created after, removed."""

    _egress: str | None
    """The internal network devices without `network` join (`join_egress`); None: no network at all."""

    async def egress_network(self) -> tuple[str, str, str]:
        """This home's internal network (made if missing): no route out, no traffic between its
        containers, only the host's address on it, where the model gateway listens. Returns its name,
        its bridge interface on the host and that address. Devices join it only after `join_egress`."""
        name, iface = egress_names(self.home)

        def ensure() -> str:
            try:
                info = self.api.inspect_network(name)
            except docker.errors.NotFound:
                self.api.create_network(name, driver="bridge", internal=True, labels={"agentdock.home": self.home},
                                        options={"com.docker.network.bridge.enable_icc": "false",
                                                 "com.docker.network.bridge.name": iface})
                info = self.api.inspect_network(name)
            return host_address(info)

        return name, iface, await self._call(ensure)

    def join_egress(self, network: str) -> None:
        """Devices created from now on (without `network`) are on `network` instead of none."""
        self._egress = network

    async def remove_egress_network(self) -> bool:
        """Remove this home's internal network if no container is on it; says whether it is gone."""
        name, _ = egress_names(self.home)
        try:
            await self._call(self.api.remove_network, name)
        except errors.NotFound:
            pass
        except (errors.Conflict, errors.SandboxUnavailable):
            return False  # devices still on it (they outlive the daemon), or Docker is away
        return True
