"""What agentdock calls things in Docker and inside a device: a device's container name and labels (and
the `DeviceState` read back from them), the users in it (the keeper, each run's own uid) and where the
runs' files are. Pure functions: known again after a restart of the daemon from the container alone."""

from __future__ import annotations

import hashlib

from engine.ports import DeviceSpec, DeviceState

RUNS_DIR = "/agentdock/runs"
"""Where the runs' files are: a filesystem of the device's own (`disks.DeviceDisks.runs`)."""
# The main process of a long-lived device: wait for TERM, do nothing else. It runs as KEEPER, a user
# no run shares, so no run can signal it; `docker stop`/`rm -f` still end it.
KEEPALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
KEEPER = "65534:65534"
RUN_UID_BASE = 1 << 20
RUN_UID_SPAN = 1 << 30
"""Each run executes as a uid of its own, from this range (above any image's users and KEEPER), with
the group of the image's user: it shares /workspace with the runs beside it through that group, but
cannot read their /proc/PID/environ (their tokens and secrets), signal them, or enter their files."""


def container_name(device_id: str) -> str:
    return f"agentdock-{device_id}"


def run_uid(run_id: str) -> int:
    """The run's own uid, from its id: known again after a restart of the daemon without a record.
    Two runs of one device share one only by a hash collision in RUN_UID_SPAN (about 1 in 10^9 a pair)."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return RUN_UID_BASE + int.from_bytes(digest[:8], "big") % RUN_UID_SPAN


def image_ids(image_user: str) -> tuple[int, int]:
    """The uid and gid an image's USER names ('' or a name that is not a number: root's, 0)."""
    user, _, group = image_user.partition(":")
    uid = int(user) if user.isdigit() else 0
    return uid, int(group) if group.isdigit() else uid


def run_id_of(path: str) -> str:
    """The run whose directory `path` is in (RUNS_DIR/<run_id>/...)."""
    return path.removeprefix(RUNS_DIR + "/").split("/", 1)[0]


def labels(spec: DeviceSpec, home: str, run_user: str) -> dict[str, str]:
    """The labels of a device's container: what `state` and the reconciliation after a restart read back."""
    labels = {
        "agentdock.device_id": spec.device_id,
        "agentdock.kind": spec.kind,
        "agentdock.home": home,
        "agentdock.ephemeral": "1" if spec.ephemeral else "0",
        "agentdock.run_user": run_user,
    }
    if spec.run_id:
        labels["agentdock.run_id"] = spec.run_id
    if spec.pool:
        labels["agentdock.pool"] = spec.pool
    return labels


def state(cid: str, labels: dict[str, str], running: bool, *, started: bool = True,
           paused: bool = False) -> DeviceState:
    return DeviceState(
        device_id=labels.get("agentdock.device_id", ""), container_id=cid, kind=labels.get("agentdock.kind", ""),
        running=running, ephemeral=labels.get("agentdock.ephemeral") == "1",
        run_id=labels.get("agentdock.run_id"), labels=labels, started=started, paused=paused,
        pool=labels.get("agentdock.pool"),
    )
