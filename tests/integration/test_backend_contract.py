"""The fake sandbox backend held to the Docker one: each test is one promise of `engine.ports.SandboxBackend`
that the engine relies on, run on both (the Docker side on the real engine, marked `docker`). The unit suite
runs the engine on the fake, so where the two differ, the fake is what changes (runtimes/fake.py)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import errors
from engine.ports import DeviceSpec, DeviceState, Ending, Exit, RunLaunch, SandboxBackend, Swept
from runtimes.docker_backend import DockerBackend
from runtimes.fake import FakeBackend
from tests.conftest import SMALL, remove_owned_containers

pytestmark = pytest.mark.anyio

MISSING_IMAGE = "missing:latest"
"""An image neither backend has (the fake's one missing image)."""


def new_id(prefix: str) -> str:
    """Ids of their own: the Docker engine is shared, and its container names with it."""
    return f"{prefix}-contract-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Script:
    """What a run's command does, said once and written in each backend's language: a shell line for
    Docker, the fake's steps (runtimes/fake.py) for the fake. Texts are single words; `$NAME` in one is
    the run's environment variable."""

    out: tuple[str, ...] = ()
    err: tuple[str, ...] = ()
    write: tuple[tuple[str, str], ...] = ()
    """(path, text): a file of one line the run leaves in its device."""
    code: int = 0
    block: bool = False
    """Print, then run until signalled (the exit code is not reached)."""

    def shell(self) -> str:
        lines = [f'echo "{text}" > {path}' for path, text in self.write]
        lines += [f'echo "{text}"' for text in self.out] + [f'echo "{text}" >&2' for text in self.err]
        return "; ".join([*lines, "exec sleep 1000" if self.block else f"exit {self.code}"])

    def fake(self) -> str:
        steps = [f"write={path}:{text}" for path, text in self.write]
        steps += [f"out={text}" for text in self.out] + [f"err={text}" for text in self.err]
        return " ".join([*steps, "block" if self.block else f"exit={self.code}"])


@dataclass
class Side:
    """One backend under the contract, with the device its tests share."""

    name: str
    backend: SandboxBackend
    image: str
    device: DeviceState
    """What `create` answered for the shared device."""

    def spec(self, device_id: str, **kw: Any) -> DeviceSpec:
        return DeviceSpec(device_id=device_id, kind="sandbox", image=self.image, cpus=1.0, memory_mb=256,
                          pids_limit=64, **kw)

    def launch(self, script: Script, *, device_id: str | None = None, run_id: str | None = None,
               env: dict[str, str] | None = None, **kw: Any) -> RunLaunch:
        """A run of `script` (in the shared device unless told), as the custom provider's argv has it."""
        command = script.shell() if self.name == "docker" else script.fake()
        return RunLaunch(run_id=run_id or new_id("run"), device_id=device_id or self.device.device_id,
                         argv=["sh", "-c", command], cwd="/workspace", env=env or {}, prompt="p", **kw)


@pytest.fixture(scope="module", params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    """Each backend once per module, with one shared device (a Docker one under a home of its own)."""
    home: Path | None = None
    if request.param == "fake":
        backend: SandboxBackend = FakeBackend()
        image = "fake:latest"
    else:
        home = Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp"))  # short: the agent socket's path is in it
        backend, image = DockerBackend(home), SMALL
    try:
        shared = await backend.create(DeviceSpec(device_id=new_id("sbx"), kind="sandbox", image=image, cpus=1.0,
                                                 memory_mb=256, pids_limit=64, env={"CONTRACT_DEVICE": "from-the-device"}))
        yield Side(request.param, backend, image, shared)
    finally:
        if home is not None:
            remove_owned_containers(home)
            shutil.rmtree(home, ignore_errors=True)


@dataclass
class Followed:
    stdout: bytes
    stderr: bytes
    exit: Exit


async def follow(backend: SandboxBackend, launch: RunLaunch,
                 once_started: Callable[[], Awaitable[None]] | None = None) -> Followed:
    """Everything one follow yields: each stream's bytes (how they are cut into chunks is the backend's
    own) and its one `Exit`, which must come last. `once_started` is called when stdout shows `started`."""
    out = {"stdout": b"", "stderr": b""}
    exits: list[Exit] = []
    with anyio.fail_after(60):
        async with aclosing(backend.follow(launch)) as stream:  # type: ignore[type-var]
            async for item in stream:
                assert not exits, f"{item!r} after the Exit"
                if isinstance(item, Exit):
                    exits.append(item)
                    continue
                out[item.stream] += item.data
                if once_started is not None and b"started\n" in out["stdout"]:
                    await once_started()
                    once_started = None
    assert len(exits) == 1, "a follow ends with exactly one Exit"
    return Followed(out["stdout"], out["stderr"], exits[0])


# ---------------------------------------------------------------- devices


async def test_image_exists_says_whether_the_image_is_there(side: Side):
    assert await side.backend.image_exists(side.image) is True
    assert await side.backend.image_exists(MISSING_IMAGE) is False


async def test_a_device_of_a_missing_image_is_refused_as_invalid_input_and_not_kept(side: Side):
    device_id = new_id("sbx")
    with pytest.raises(errors.InvalidInput) as refused:
        await side.backend.create(side.spec(device_id).model_copy(update={"image": MISSING_IMAGE}))
    assert refused.value.field == "image"
    assert await side.backend.inspect(device_id) is None


async def test_a_created_device_is_running_owned_and_labelled_as_its_spec_says(side: Side):
    created = side.device
    assert (created.kind, created.running, created.started, created.paused) == ("sandbox", True, True, False)
    assert (created.ephemeral, created.run_id, created.pool) == (False, None, None)
    assert {"agentdock.device_id": created.device_id, "agentdock.kind": "sandbox",
            "agentdock.ephemeral": "0"}.items() <= created.labels.items()
    owned = {s.device_id: s for s in await side.backend.list_owned()}
    inspected = await side.backend.inspect(created.device_id)
    for state in (owned[created.device_id], inspected):
        assert state is not None
        assert (state.container_id, state.kind, state.running, state.ephemeral, state.run_id) == \
            (created.container_id, "sandbox", True, False, None)
        assert created.labels.items() <= state.labels.items()


async def test_starting_or_repairing_a_running_device_leaves_it_running_and_answering(side: Side):
    assert (await side.backend.start(side.device.device_id)).running
    assert await side.backend.repair(side.device.device_id) == "answering"
    assert await follow(side.backend, side.launch(Script(out=("here",)))) == \
        Followed(b"here\n", b"", Exit(exit_code=0))


async def test_a_taken_device_id_is_refused_with_conflict(side: Side):
    device_id = new_id("sbx")  # not the shared one: on Docker the refusal breaks the device (below)
    created = await side.backend.create(side.spec(device_id))
    try:
        with pytest.raises(errors.Conflict):
            await side.backend.create(side.spec(device_id))
        owned = [s for s in await side.backend.list_owned() if s.device_id == device_id]
        assert [s.container_id for s in owned] == [created.container_id]
    finally:
        await side.backend.remove(device_id)


async def test_a_refused_create_leaves_the_device_of_that_id_working(side: Side):
    device_id = new_id("sbx")
    await side.backend.create(side.spec(device_id))
    try:
        with pytest.raises(errors.Conflict):
            await side.backend.create(side.spec(device_id))
        done = await follow(side.backend, side.launch(Script(out=("kept",), code=3), device_id=device_id))
        assert done == Followed(b"kept\n", b"", Exit(exit_code=3))
    finally:
        await side.backend.remove(device_id)


async def test_a_removed_device_is_no_longer_owned_and_removing_it_again_is_quiet(side: Side):
    device_id = new_id("sbx")
    created = await side.backend.create(side.spec(device_id, pool="contract-pool"))
    assert created.pool == "contract-pool" and created.labels["agentdock.pool"] == "contract-pool"

    await side.backend.remove(device_id)

    assert device_id not in {s.device_id for s in await side.backend.list_owned()}
    assert await side.backend.inspect(device_id) is None
    await side.backend.remove(device_id)


async def test_a_device_with_room_is_not_disk_full(side: Side):
    assert await side.backend.disk_full(side.device.device_id) is False


# ---------------------------------------------------------------- runs


@pytest.mark.parametrize("code", [0, 3])
async def test_a_run_passes_on_its_output_then_one_exit_with_its_code(side: Side, code: int):
    done = await follow(side.backend, side.launch(Script(out=("one", "two"), err=("warned",), code=code)))
    assert done == Followed(b"one\ntwo\n", b"warned\n", Exit(exit_code=code, ending=Ending.exited))


async def test_a_run_sees_its_env_its_secrets_and_its_devices_env(side: Side):
    launch = side.launch(Script(out=("$CONTRACT_RUN", "$CONTRACT_SECRET", "$CONTRACT_DEVICE")),
                         env={"CONTRACT_RUN": "from-the-run"}, secret_env={"CONTRACT_SECRET": "from-a-secret"})
    assert (await follow(side.backend, launch)).stdout == b"from-the-run\nfrom-a-secret\nfrom-the-device\n"


async def test_following_a_run_again_passes_on_only_what_comes_after_the_offsets(side: Side):
    launch = side.launch(Script(out=("hello",), err=("oops",), code=5))
    first = await follow(side.backend, launch)

    again = await follow(side.backend, launch.model_copy(update={"stdout_offset": 2, "stderr_offset": 5}))

    assert (first.stdout, first.stderr) == (b"hello\n", b"oops\n")
    assert again == Followed(b"llo\n", b"", Exit(exit_code=5))


async def test_a_missing_runtime_ends_runtime_not_found_with_127_and_says_which(side: Side):
    done = await follow(side.backend, side.launch(Script(out=("never",)), require="agentdock-contract-cli"))
    assert done.exit == Exit(exit_code=127, ending=Ending.runtime_not_found)
    assert done.stdout == b"" and b"runtime not found: 'agentdock-contract-cli'" in done.stderr


@pytest.mark.parametrize(("signal", "code"), [("TERM", 143), ("KILL", 137)])
async def test_a_signal_ends_a_running_run_which_exits_with_its_code(side: Side, signal: str, code: int):
    launch = side.launch(Script(out=("started",), block=True))

    done = await follow(side.backend, launch, once_started=lambda: side.backend.signal(
        launch.device_id, launch.run_id, signal))  # type: ignore[arg-type]

    # stderr is not compared: on Docker a KILL sometimes adds busybox's "Killed" to it, from the
    # follower's wrapper (a helper of it, `sleep`/`wc`, killed by the host-side kill), not from the run
    assert (done.stdout, done.exit) == (b"started\n", Exit(exit_code=code, ending=Ending.exited))


async def test_a_sweep_after_a_run_finds_nothing_left_exhausted_or_full(side: Side):
    launch = side.launch(Script(out=("done",)))
    await follow(side.backend, launch)

    swept = await side.backend.sweep(launch.device_id, launch.run_id)

    assert isinstance(swept, Swept)
    assert (swept.killed, swept.pids_exhausted, swept.disk_full) == (0, False, False)
    assert swept.pids_peak is None or swept.pids_peak >= 1  # None: not measured


async def test_a_sweep_of_a_running_run_kills_it_and_its_follow_ends_lost(side: Side):
    launch = side.launch(Script(out=("started",), block=True))
    swept: list[Swept] = []

    async def sweep() -> None:
        swept.append(await side.backend.sweep(launch.device_id, launch.run_id))

    done = await follow(side.backend, launch, once_started=sweep)

    assert done.exit == Exit(exit_code=None, ending=Ending.lost)  # its launcher went too: no exit code recorded
    assert swept[0].killed >= 1 and not swept[0].pids_exhausted


async def test_a_device_removed_under_a_running_run_ends_its_follow_sandbox_lost(side: Side):
    device_id = new_id("sbx")
    await side.backend.create(side.spec(device_id))
    launch = side.launch(Script(out=("started",), block=True), device_id=device_id)

    async def remove() -> None:  # from outside the engine (`docker rm -f`): the engine never does under a run
        await side.backend.remove(device_id)

    done = await follow(side.backend, launch, once_started=remove)

    assert done.exit == Exit(exit_code=None, ending=Ending.sandbox_lost)


async def test_an_ephemeral_launch_makes_its_own_device_named_for_the_run(side: Side):
    run_id, device_id = new_id("run"), new_id("sbx")
    spec = side.spec(device_id, ephemeral=True, run_id=run_id)
    try:
        done = await follow(side.backend, side.launch(Script(out=("alone",)), device_id=device_id, run_id=run_id,
                                                      ephemeral=spec))
        assert done == Followed(b"alone\n", b"", Exit(exit_code=0))
        state = await side.backend.inspect(device_id)
        assert state is not None and (state.ephemeral, state.run_id) == (True, run_id)
        assert state.labels["agentdock.run_id"] == run_id
    finally:
        await side.backend.remove(device_id)


# ---------------------------------------------------------------- the run's files


async def test_artifacts_are_read_back_by_index_and_refused_when_missing_or_too_big(side: Side):
    launch = side.launch(Script(write=(("/workspace/contract.txt", "exported"), ("/workspace/big.txt", "x" * 40))),
                         artifact_paths=["/workspace/contract.txt", "/workspace/none.txt", "/workspace/big.txt"],
                         artifact_max_bytes=32)
    await follow(side.backend, launch)
    read = side.backend.artifact

    assert await read(launch.device_id, launch.run_id, 0, "/workspace/contract.txt", 32) == b"exported\n"
    with pytest.raises(errors.NotFound):
        await read(launch.device_id, launch.run_id, 1, "/workspace/none.txt", 32)
    with pytest.raises(errors.LimitExceeded):
        await read(launch.device_id, launch.run_id, 2, "/workspace/big.txt", 32)


async def test_removing_a_runs_files_takes_its_artifacts_with_them(side: Side):
    launch = side.launch(Script(write=(("/workspace/gone.txt", "soon"),)), artifact_paths=["/workspace/gone.txt"])
    await follow(side.backend, launch)
    assert await side.backend.artifact(launch.device_id, launch.run_id, 0, "/workspace/gone.txt", 100) == b"soon\n"

    await side.backend.remove_run_files(launch.device_id, launch.run_id)

    with pytest.raises(errors.NotFound):
        await side.backend.artifact(launch.device_id, launch.run_id, 0, "/workspace/gone.txt", 100)


# ---------------------------------------------------------------- what is not there


async def test_an_unknown_device_is_not_there_to_inspect_repair_fill_or_remove(side: Side):
    device_id = new_id("sbx")
    assert await side.backend.inspect(device_id) is None
    assert await side.backend.repair(device_id) == "gone"
    assert await side.backend.disk_full(device_id) is False
    await side.backend.remove(device_id)


async def test_starting_an_unknown_device_raises_not_found(side: Side):
    with pytest.raises(errors.NotFound):
        await side.backend.start(new_id("sbx"))


async def test_a_run_followed_in_an_unknown_device_ends_sandbox_lost(side: Side):
    done = await follow(side.backend, side.launch(Script(out=("never",)), device_id=new_id("sbx")))
    assert done == Followed(b"", b"", Exit(exit_code=None, ending=Ending.sandbox_lost))


@pytest.mark.parametrize("where", ["unknown device", "unknown run"])
async def test_signal_sweep_and_file_removal_of_what_is_not_there_are_quiet(side: Side, where: str):
    device_id = new_id("sbx") if where == "unknown device" else side.device.device_id
    run_id = new_id("run")
    await side.backend.signal(device_id, run_id, "TERM")
    await side.backend.signal(device_id, run_id, "KILL")
    assert await side.backend.sweep(device_id, run_id) == Swept()
    await side.backend.remove_run_files(device_id, run_id)
    with pytest.raises(errors.NotFound):
        await side.backend.artifact(device_id, run_id, 0, "/workspace/contract.txt", 100)
