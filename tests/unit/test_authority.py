"""Authority that holds (issue 16) on real SQLite and the shipped fake backend: every create names a
workspace its caller may use; a session's effective limits are its profile's within its parent's, all
the way down, and hold for what it does itself; a spawn racing its parent's stop never leaves a live
session under a stopped one. The sandbox-side versions of these cases are in
tests/e2e/test_authority.py."""

from __future__ import annotations


import anyio
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from engine import authority, errors, models, topics
from engine.devices import models as dm
from engine.runs import models as rm
from engine.groups import models as gm
from engine.profiles import models as pm
from engine.tasks import models as tm
from engine.app import Engine
from engine.authority import Ceilings, Limits
from engine.callers import ROOT
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend
from tests import peek

pytestmark = pytest.mark.anyio
ALL = PermissionPolicy(tools=["agent", "runs", "devices", "groups", "tasks", "profiles"], sandbox_profiles=["*"])


def engine_for(tmp_path) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02), backend=FakeBackend(),
                  harnesses=harness.get)


def profile(name: str, **kw) -> pm.ProfileCreate:
    return models.parse(pm.ProfileCreate, {"name": name, "runtime": "custom", **kw})


def count(engine: Engine, sql: str) -> int:
    return peek.count(engine.settings, sql)


def device_row(engine: Engine, device_id: str) -> tuple[int, int]:
    """A device's network and memory as recorded, deleted or not (an ephemeral one goes with its run)."""
    return peek.rows(engine.settings, "SELECT network, memory_mb FROM devices WHERE id = ?", (device_id,))[0]


async def spawn(engine: Engine, caller, **kw):
    spawned = await engine.sessions.spawn(caller, SpawnRequest(agent_name="w", **{"permissions": ALL, **kw}))
    return spawned, await engine.sessions.authenticate(spawned.token)


# ---------------------------------------------------------------- part 1: workspaces


async def test_every_create_naming_another_workspace_is_refused_naming_its_field_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile("b-default", workspace_id="B", is_default=True, network=True))
        _, a = await spawn(engine, ROOT, workspace_id="A")
        own_group = await engine.groups.create(a, gm.GroupCreate(name="mine"))
        before = {t: count(engine, f"SELECT count(*) FROM {t}") for t in (
            "sessions", "agent_runs", "agent_run_groups", "agent_run_group_entries", "tasks",
            "agent_runtime_profiles", "devices", "soul_snapshots")}
        attempts = {
            "groups": lambda: engine.groups.create(a, gm.GroupCreate(name="g", workspace_id="B")),
            "spawn": lambda: engine.sessions.spawn(a, SpawnRequest(agent_name="w", workspace_id="B")),
            "runs": lambda: engine.runs.create(a, rm.RunCreate(prompt="p", command="out=x", workspace_id="B")),
            "dispatch": lambda: engine.groups.dispatch(a, own_group.id, models.parse(gm.DispatchRequest, {
                "async": True, "runs": [{"prompt": "p", "command": "out=x"},
                                        {"prompt": "p", "command": "out=x", "workspace_id": "B"}]})),
            "tasks": lambda: engine.tasks.create(a, tm.TaskCreate(title="t", workspace_id="B")),
            "profiles": lambda: engine.profiles.create(a, profile("p", workspace_id="B", network=True)),
            "devices": lambda: engine.devices.create(a, dm.DeviceCreate(workspace_id="B")),
        }
        fields = {}
        for what, attempt in attempts.items():
            with pytest.raises(errors.PermissionDenied) as refused:
                await attempt()
            fields[what] = refused.value.evidence["field"]
        after = {t: count(engine, f"SELECT count(*) FROM {t}") for t in before}
        own = await engine.groups.dispatch(a, own_group.id, models.parse(gm.DispatchRequest, {
            "async": True, "runs": [{"prompt": "p", "command": "out=x", "workspace_id": "A"}]}))
    assert fields == {"groups": "workspace_id", "spawn": "workspace_id", "runs": "workspace_id",
                      "dispatch": "runs.1.workspace_id", "tasks": "workspace_id", "profiles": "workspace_id",
                      "devices": "workspace_id"}
    assert after == before
    assert len(own.entries) == 1  # its own workspace, named, is fine


async def test_the_local_user_may_name_any_workspace_and_a_groups_items_stay_in_the_groups(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", workspace_id="B"))
        group = await engine.groups.create(ROOT, gm.GroupCreate(name="g", workspace_id="B"))
        with pytest.raises(errors.InvalidInput) as elsewhere:
            await engine.groups.dispatch(ROOT, group.id, models.parse(gm.DispatchRequest, {
                "async": True, "runs": [{"prompt": "p", "command": "out=x", "workspace_id": "C"}]}))
        entries = count(engine, "SELECT count(*) FROM agent_run_group_entries")
    assert child.session.workspace_id == "B" and group.workspace_id == "B"
    assert elsewhere.value.field == "runs.0.workspace_id" and entries == 0


async def test_a_child_spawned_into_its_workspace_by_the_local_user_cannot_reach_out_of_it(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        b_profile = await engine.profiles.create(ROOT, profile("b", workspace_id="B", is_default=True))
        task = await engine.tasks.create(ROOT, tm.TaskCreate(title="private", workspace_id="B"))
        _, a = await spawn(engine, ROOT, workspace_id="A")
        claimed = await engine.tasks.claim_next(a, tm.ClaimNext())
        listed = await engine.tasks.list(a, tm.TaskListQuery())
        with pytest.raises(errors.NotFound):
            await engine.profiles.update(a, pm.ProfileUpdate(profile_id=b_profile.id, network=True))
    assert claimed.claim is None and listed.data == [] and task.workspace_id == "B"


# ---------------------------------------------------------------- part 2: limits


CLOSED = {"network": False, "tools": ["exec", "files"], "resources": {"memory_mb": 256, "cpus": 0.5},
          "policy": {"approval": "confirm-risky", "max_child_sandboxes": 3}}


@pytest.mark.parametrize("opt_out", [{}, {"skip_agent_runtime_profile": True}], ids=["no-profile", "skip"])
async def test_a_grandchild_that_opts_out_of_a_profile_keeps_every_limit_of_its_parent(tmp_path, opt_out):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile("open-default", is_default=True, network=True))  # what {} gets
        closed = await engine.profiles.create(ROOT, profile("closed", **CLOSED))
        child, c = await spawn(engine, ROOT, agent_runtime_profile_id=closed.id, skip_agent_runtime_profile=False)
        grandchild, g = await spawn(engine, c, **opt_out)
        with pytest.raises(errors.PermissionDenied) as network:
            await engine.devices.create(g, dm.DeviceCreate(network=True))
        with pytest.raises(errors.LimitExceeded) as memory:
            await engine.devices.create(g, dm.DeviceCreate(memory_mb=1024))
        made = await engine.devices.create(g, dm.DeviceCreate())
        with pytest.raises(errors.PermissionDenied) as approval:
            await engine.devices.delete(g, made.id)
        run = await engine.runs.create(g, rm.RunCreate(prompt="p", command="out=x"))
        ephemeral = device_row(engine, run.target_id)
    expected = Limits(network=False, tools=["exec", "files"], resources=Ceilings(cpus=0.5, memory_mb=256),
                      max_child_sandboxes=3, approval=pm.Approval.confirm_risky)
    assert child.session.effective_limits == expected
    assert grandchild.session.effective_limits == expected and g.limits == expected
    assert network.value.evidence["field"] == "network" and memory.value.evidence["field"] == "memory_mb"
    assert approval.value.evidence["field"] == "approval"
    assert (made.network, made.memory_mb, made.cpus) == (False, 256, 0.5)  # a default size lowered to the ceiling
    assert run.profile_id is not None and ephemeral == (0, 256)  # the default profile's network taken away


async def test_a_grandchild_under_a_files_only_parent_runs_nothing_whatever_profile_it_names(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        files = await engine.profiles.create(ROOT, profile("files", tools=["files"]))
        everything = await engine.profiles.create(ROOT, profile("everything", network=True))
        _, c = await spawn(engine, ROOT, agent_runtime_profile_id=files.id)
        grandchild, g = await spawn(engine, c, agent_runtime_profile_id=everything.id)
        with pytest.raises(errors.PermissionDenied) as run:
            await engine.runs.create(g, rm.RunCreate(prompt="p", command="out=x"))
        with pytest.raises(errors.PermissionDenied):
            await engine.devices.create(g, dm.DeviceCreate())
        with pytest.raises(errors.PermissionDenied):
            await engine.sessions.spawn(c, SpawnRequest(agent_name="w", prompt="p", command="out=x"))
        caps = {cap.id for cap in (await engine.sessions.me(g)).capabilities}
        runs = count(engine, "SELECT count(*) FROM agent_runs")
    assert grandchild.session.effective_limits.tools == ["files"]
    assert grandchild.session.effective_limits.network is False  # the files profile gives no network either
    assert "agent_run" in run.value.message and runs == 0
    assert "agent_run_artifacts" in caps and not caps & {"agent_run", "sandbox_create", "group_dispatch"}


async def test_an_image_pins_its_tree_and_a_child_profile_naming_another_is_refused_writing_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await engine.profiles.create(ROOT, profile("a", image="img:a", network=True))
        b = await engine.profiles.create(ROOT, profile("b", image="img:b", network=True))
        _, c = await spawn(engine, ROOT, agent_runtime_profile_id=a.id)
        sessions_before = count(engine, "SELECT count(*) FROM sessions")
        with pytest.raises(errors.PermissionDenied) as moved:
            await engine.sessions.spawn(c, SpawnRequest(agent_name="w", permissions=ALL, agent_runtime_profile_id=b.id))
        sessions_after = count(engine, "SELECT count(*) FROM sessions")
        snapshots = count(engine, "SELECT count(*) FROM soul_snapshots")
        _, g = await spawn(engine, c, skip_agent_runtime_profile=True)
        with pytest.raises(errors.PermissionDenied) as asked:
            await engine.devices.create(g, dm.DeviceCreate(image="img:z"))
        with pytest.raises(errors.PermissionDenied) as by_profile:
            await engine.runs.create(g, rm.RunCreate(prompt="p", command="out=x", agent_runtime_profile_id=b.id))
        made = await engine.devices.create(g, dm.DeviceCreate())
    assert moved.value.evidence["field"] == "image" and sessions_after == sessions_before
    assert snapshots == sessions_before  # a refused spawn keeps no soul snapshot either
    assert asked.value.evidence["field"] == "image" and by_profile.value.evidence["field"] == "image"
    assert made.image == "img:a" and g.limits.image == "img:a"


async def test_a_child_may_not_run_in_a_networked_device_its_limits_forbid_even_its_parents(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        closed = await engine.profiles.create(ROOT, profile("closed", network=False))
        sandbox = await engine.devices.create(ROOT, dm.DeviceCreate(network=True))
        with pytest.raises(errors.PermissionDenied) as refused:
            await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", agent_runtime_profile_id=closed.id,
                                                           prompt="p", command="out=x", target_id=sandbox.id))
        open_child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", prompt="p", command="out=x",
                                                                    target_id=sandbox.id))
        states = {s.id: (s.state, s.stop_reason) for s in (await engine.sessions.list(ROOT)).data}
    assert refused.value.evidence == {"field": "target_id", "limit": "network"}
    assert open_child.run is not None
    assert sorted(states.values()) == [("active", None), ("active", None), ("stopped", "spawn_failed")]


async def test_a_groups_children_are_held_to_the_limits_of_the_session_that_created_it(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile("open-default", is_default=True, network=True))
        closed = await engine.profiles.create(ROOT, profile("closed", tools=["exec"]))
        _, c = await spawn(engine, ROOT, agent_runtime_profile_id=closed.id)
        group = await engine.groups.create(c, gm.GroupCreate(name="g"))
        await engine.groups.dispatch(c, group.id, models.parse(gm.DispatchRequest, {
            "async": True, "runs": [{"prompt": "p", "command": "out=x"}]}))
        with anyio.fail_after(10):
            await engine.groups.wait(c, group.id, 10)
        (run,) = (await engine.runs.list(ROOT, rm.RunListQuery())).data
    assert run.status == "succeeded" and run.profile_id is not None  # the open default applied ...
    assert device_row(engine, run.target_id) == (0, 512)  # ... but its network did not


async def test_disk_sizes_narrow_down_the_tree_and_only_the_local_user_goes_past_the_daemons_setting(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        setting = engine.settings.sandbox_workspace_mb
        big = await engine.profiles.create(ROOT, profile("big-disks", resources={"workspace_mb": 4 * setting}))
        small = await engine.profiles.create(ROOT, profile("small-disks", resources={"workspace_mb": 64, "tmp_mb": 32}))
        mine = await engine.devices.create(ROOT, dm.DeviceCreate(workspace_mb=2 * setting))
        _, c = await spawn(engine, ROOT)
        with pytest.raises(errors.LimitExceeded) as asked:
            await engine.devices.create(c, dm.DeviceCreate(workspace_mb=setting + 1))
        lowered = await engine.devices.create(c, dm.DeviceCreate(agent_runtime_profile_id=big.id))
        _, s = await spawn(engine, ROOT, agent_runtime_profile_id=small.id, skip_agent_runtime_profile=False)
        _, g = await spawn(engine, s, skip_agent_runtime_profile=True)
        with pytest.raises(errors.LimitExceeded) as beyond:
            await engine.devices.create(g, dm.DeviceCreate(tmp_mb=64))
        held = await engine.devices.create(g, dm.DeviceCreate())
        run = await engine.runs.create(g, rm.RunCreate(prompt="p", command="true"))
        ephemeral = await engine.devices.get(ROOT, run.target_id)
    assert mine.workspace_mb == 2 * setting  # the local user sizes past the operator's default
    assert asked.value.evidence == {"field": "workspace_mb", "limit": setting}
    assert lowered.workspace_mb == setting  # a profile's size past the setting is lowered to it below the user
    assert beyond.value.evidence == {"field": "tmp_mb", "limit": 32}
    assert (held.workspace_mb, held.tmp_mb) == (64, 32) == (ephemeral.workspace_mb, ephemeral.tmp_mb)


def test_limits_intersect_as_documented():
    parent = Limits(network=True, tools=["exec", "files"], image=None, resources=Ceilings(memory_mb=512),
                    max_child_sandboxes=4)
    own = Limits(network=False, tools=["files", "browser"], image="img:a", resources=Ceilings(memory_mb=1024, cpus=2),
                 max_child_sandboxes=None, approval=pm.Approval.confirm_risky)
    assert authority.narrow(parent, own) == Limits(
        network=False, tools=["files"], image="img:a", resources=Ceilings(memory_mb=512, cpus=2),
        max_child_sandboxes=4, approval=pm.Approval.confirm_risky)
    assert authority.narrow(own, authority.UNBOUNDED) == own  # opting out of a profile keeps the parent's
    assert authority.wider(authority.UNBOUNDED, own) == [
        "network", "tools", "image", "resources.cpus", "resources.memory_mb", "approval"]
    assert Limits.of_profile(None) == authority.UNBOUNDED
    assert Limits.of_profile({"network": False}).network is False  # a profile gives no network unless it says so


limits = st.builds(
    Limits, network=st.booleans(),
    tools=st.one_of(st.none(), st.lists(st.sampled_from([b.value for b in pm.Bundle]), unique=True)),
    image=st.one_of(st.none(), st.sampled_from(["img:a", "img:b"])),
    resources=st.builds(Ceilings, cpus=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0])),
                        memory_mb=st.one_of(st.none(), st.integers(32, 4096)),
                        pids_limit=st.one_of(st.none(), st.integers(16, 1024)),
                        workspace_mb=st.one_of(st.none(), st.integers(16, 4096)),
                        tmp_mb=st.one_of(st.none(), st.integers(16, 1024))),
    max_child_sandboxes=st.one_of(st.none(), st.integers(0, 10)), approval=st.sampled_from(list(pm.Approval)))


@hsettings(max_examples=300, deadline=None)
@given(parent=limits, own=limits)
def test_a_narrowed_child_is_never_wider_than_its_parent_or_its_own_profile(parent, own):
    try:
        child = authority.narrow(parent, own)
    except errors.PermissionDenied as exc:
        assert exc.evidence["field"] == "image" and None not in (parent.image, own.image)
        return
    assert authority.wider(child, parent) == []
    assert authority.wider(child, own) == []


# ---------------------------------------------------------------- part 4: stop and spawn serialize


async def test_a_spawn_whose_parent_stops_between_its_checks_and_its_write_is_refused_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        parent, p = await spawn(engine, ROOT)
        snapshot_row = engine.sessions.souls.snapshot_row

        async def stop_meanwhile(*args, **kw):  # the interleaving forced: the stop lands in between
            found = await snapshot_row(*args, **kw)
            await engine.sessions.stop(ROOT, parent.session.id)
            return found

        engine.sessions.souls.snapshot_row = stop_meanwhile  # type: ignore[method-assign]
        with pytest.raises(errors.Unauthenticated) as refused:
            await engine.sessions.spawn(p, SpawnRequest(agent_name="w"))
        rows = await engine.store.sessions.list()
    assert refused.value.evidence["session_id"] == parent.session.id
    assert [(r.id, r.status) for r in rows] == [(parent.session.id, "stopped")]


async def test_a_session_stopped_after_it_authenticated_creates_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        parent, p = await spawn(engine, ROOT)
        group = await engine.groups.create(p, gm.GroupCreate(name="g"))
        await engine.sessions.stop(ROOT, parent.session.id)
        for attempt in (lambda: engine.runs.create(p, rm.RunCreate(prompt="p", command="out=x")),
                        lambda: engine.devices.create(p, dm.DeviceCreate()),
                        lambda: engine.groups.create(p, gm.GroupCreate(name="g2")),
                        lambda: engine.groups.dispatch(p, group.id, models.parse(gm.DispatchRequest, {
                            "async": True, "runs": [{"prompt": "p", "command": "out=x"}]})),
                        lambda: engine.sessions.spawn(p, SpawnRequest(agent_name="w"))):
            with pytest.raises(errors.Unauthenticated):
                await attempt()
        written = [count(engine, f"SELECT count(*) FROM {t}") for t in (
            "agent_runs", "devices", "agent_run_groups", "agent_run_group_entries", "sessions")]
    assert written == [0, 0, 1, 0, 1]
    assert engine.backend.devices == {}


async def test_a_stopped_sessions_queued_group_entries_fail_instead_of_starting(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        parent, p = await spawn(engine, ROOT)
        group = await engine.groups.create(p, gm.GroupCreate(name="g", concurrency_limit=1))
        await engine.groups.dispatch(p, group.id, models.parse(gm.DispatchRequest, {
            "async": True, "runs": [{"prompt": "p", "command": "block"}, {"prompt": "p", "command": "out=x"}]}))
        with anyio.fail_after(10):
            while True:  # the first entry holds the group's one slot
                changed = engine.topics.watch(topics.group(group.id))
                entries = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
                if entries[0].status == "running":
                    break
                await changed.wait()
        await engine.sessions.stop(ROOT, parent.session.id)
        with anyio.fail_after(10):
            done = await engine.groups.wait(ROOT, group.id, 10)
        entries = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
    assert not done.is_active
    assert [(e.status, e.run_id is None) for e in entries] == [("canceled", False), ("failed", True)]
    assert entries[1].diagnostic is not None and entries[1].diagnostic.code == "unauthenticated"


async def test_a_sandbox_of_a_session_pinned_to_an_image_takes_it_over_a_default_profiles_image(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await engine.profiles.create(ROOT, profile("a", image="img:a"))
        other = await engine.profiles.create(ROOT, profile("other-default", image="img:x", is_default=True))
        _, c = await spawn(engine, ROOT, agent_runtime_profile_id=a.id)
        _, g = await spawn(engine, c, skip_agent_runtime_profile=True)
        made = await engine.devices.create(g, dm.DeviceCreate())  # the default's image is only a default
        with pytest.raises(errors.PermissionDenied) as named:
            await engine.devices.create(g, dm.DeviceCreate(agent_runtime_profile_id=other.id))
        with pytest.raises(errors.PermissionDenied) as run:  # a run under the default would not be what it says
            await engine.runs.create(g, rm.RunCreate(prompt="p", command="out=x"))
        skipped = await engine.runs.create(g, rm.RunCreate(prompt="p", command="out=x",
                                                               skip_agent_runtime_profile=True))
    assert made.image == "img:a"
    assert named.value.evidence["field"] == "image" and run.value.evidence["field"] == "image"
    assert "skip_agent_runtime_profile" in run.value.message and skipped.profile_id is None


async def test_sessions_spawned_before_limits_were_recorded_get_them_when_the_daemon_starts(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        closed = await engine.profiles.create(ROOT, profile("closed", **CLOSED))
        opened = await engine.profiles.create(ROOT, profile("open", network=True, image="img:b"))
        child, c = await spawn(engine, ROOT, agent_runtime_profile_id=closed.id)
        grandchild, _ = await spawn(engine, c, skip_agent_runtime_profile=True)
        other, _ = await spawn(engine, ROOT, agent_runtime_profile_id=opened.id)
    peek.rows(engine.settings, "UPDATE sessions SET limits = NULL")  # as a database from before migration 0013
    async with engine_for(tmp_path).running() as engine:
        rows = {r.id: r for r in await engine.store.sessions.list()}
        g = await engine.sessions.authenticate(grandchild.token)
    recorded = child.session.effective_limits.model_dump(mode="json")
    assert rows[grandchild.session.id].limits == rows[child.session.id].limits == recorded
    assert g.limits == child.session.effective_limits
    assert rows[other.session.id].limits == other.session.effective_limits.model_dump(mode="json")
    assert other.session.effective_limits.image == "img:b" and other.session.effective_limits.network is True
