"""The Docker sandbox backend: labelled containers with the security defaults, runs followed by a wrapper.

One object for the port, made of one part per module, each a mixin on the one below:

* `docker_calls.DockerCalls`: the home, the client, and the bounded, translated calls (every docker-py
  call goes through `anyio.to_thread.run_sync` there, Docker's errors become the engine's there);
* `egress_network.EgressNetwork`: the model gateway's internal network, which devices join;
* `devices.Devices`: containers made with the security defaults, started, repaired, listed, removed,
  and seen from the host (their cgroups);
* `run_files.RunFiles`: a run's files in its device (output, exit, artifacts);
* `run_signals.RunSignals`: signals to a run, from inside or from the host, and the sweep;
* `run_follow.RunFollow`: launching a run's wrapper and following its output to its end.

Names, labels and the users in a device are in `naming`; the wrapper's command line, environment and
trailer in `wrapper`.
"""

from __future__ import annotations

from pathlib import Path

import docker

from runtimes import devices, docker_calls, egress_network, run_files, run_follow, run_signals


class DockerBackend(run_follow.RunFollow, run_signals.RunSignals, run_files.RunFiles, devices.Devices,
                    egress_network.EgressNetwork):
    """Implements `engine.ports.SandboxBackend` on the local Docker engine."""

    def __init__(self, home: Path, *, client: docker.DockerClient | None = None, threads: int = 16,
                 call_timeout: float = docker_calls.CALL_TIMEOUT_SECONDS, workspace_mb: dict[str, int] | None = None,
                 tmp_mb: dict[str, int] | None = None) -> None:
        super().__init__(home, client=client, threads=threads, call_timeout=call_timeout)
        # The state the parts share, each declared (and said) in the part that owns it.
        self._egress = None
        self.workspace_mb = workspace_mb or {"sandbox": 1024, "computer": 8192}
        self.tmp_mb = tmp_mb or {"sandbox": 256, "computer": 1024}
        self._creating = set()
        self._image_users = {}
        self._run_users = {}
        self._cgroups = {}
        self._refusals_before = {}
        self._whole = set()
