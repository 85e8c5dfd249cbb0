"""Sessions and spawn on real SQLite, the shipped fake backend and the fake clock: lineage, budgets,
permissions that only narrow, tokens, TTL expiry and the stop cascade."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from engine import errors, lineage, models, topics
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend
from tests import peek

pytestmark = pytest.mark.anyio


def engine_for(tmp_path, clock=None, backend=None) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02),
                  backend=backend or FakeBackend(), harnesses=harness.get, clock=clock)


async def until(engine: Engine, topic: str, read, done) -> None:
    """Wait for `done(await read())`, woken by commits on `topic` (watched before each read)."""
    with anyio.fail_after(10):
        while True:
            changed = engine.topics.watch(topic)
            if done(await read()):
                return
            await changed.wait()


async def spawn(engine: Engine, caller, **kw):
    return await engine.sessions.spawn(caller, SpawnRequest(agent_name=kw.pop("agent_name", "worker"), **kw))


async def test_a_spawned_child_has_its_lineage_and_a_token_that_stands_for_it(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        child = await spawn(engine, ROOT, spawn_role="reviewer", permissions=PermissionPolicy(tools=["runs"]))
        me = (await engine.sessions.me(await engine.sessions.authenticate(child.token))).session
    assert me.id == child.session.id and me.type == "agent" and me.state == "active"
    assert (me.lineage.parent_session_id, me.lineage.root_session_id, me.lineage.spawn_depth) == (
        "ses_root", "ses_root", 1)
    assert me.lineage.spawn_role == "reviewer" and me.lineage.permission_policy.tools == ["runs"]
    assert child.token.startswith("adt_") and child.token not in peek.text_of(engine.settings, "sessions")


async def test_a_child_can_never_be_given_more_than_its_parent_has(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        parent = await spawn(engine, ROOT, permissions=PermissionPolicy(tools=["agent", "runs"],
                                                                         network_channels=["team"]))
        caller = await engine.sessions.authenticate(parent.token)
        with pytest.raises(errors.PermissionDenied, match="permissions.tools: 'devices'"):
            await spawn(engine, caller, permissions=PermissionPolicy(tools=["agent", "devices"]))
        with pytest.raises(errors.PermissionDenied, match="network_channels"):
            await spawn(engine, caller, permissions=PermissionPolicy(tools=["agent"], network_channels=["all"]))
        narrow = await spawn(engine, caller, permissions=PermissionPolicy(tools=["agent_run_get", "agent"]))
        assert len((await engine.sessions.list(caller)).data) == 2  # itself and the one child it has
    assert narrow.permissions.tools == ["agent_run_get", "agent"]


async def test_a_session_without_the_agent_toolset_cannot_spawn(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        child = await spawn(engine, ROOT, permissions=PermissionPolicy(tools=["runs"]))
        caller = await engine.sessions.authenticate(child.token)
        with pytest.raises(errors.PermissionDenied, match="agent_spawn"):
            await spawn(engine, caller)
        assert (await engine.sessions.me(caller)).session.id == child.session.id  # agent_me is always allowed
        assert len(await engine.store.sessions.list()) == 1


async def test_spawning_three_levels_deep_works_and_the_fourth_is_refused(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        caller = ROOT
        for depth in (1, 2, 3):
            child = await spawn(engine, caller)
            assert child.lineage.spawn_depth == depth
            caller = await engine.sessions.authenticate(child.token)
        with pytest.raises(errors.LimitExceeded, match="max_depth"):
            await spawn(engine, caller)
        assert len(await engine.store.sessions.list()) == 3


async def test_max_children_counts_live_children_only(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        engine.sessions.root_budget = lineage.SpawnBudget(max_children=2)
        a = await spawn(engine, ROOT)
        await spawn(engine, ROOT)
        with pytest.raises(errors.LimitExceeded, match="max_children"):
            await spawn(engine, ROOT)
        await engine.sessions.stop(ROOT, a.session.id)
        await spawn(engine, ROOT)


async def test_a_token_stops_working_when_its_session_stops_and_stopping_takes_the_whole_tree(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        parent = await spawn(engine, ROOT)
        pc = await engine.sessions.authenticate(parent.token)
        kept = await spawn(engine, pc, auto_stop_on_parent=True)
        kc = await engine.sessions.authenticate(kept.token)
        grandchild = await spawn(engine, kc)
        sibling = await spawn(engine, ROOT)
        with pytest.raises(errors.InvalidInput) as loose:  # a child that would outlive its parent's stop
            await spawn(engine, pc, auto_stop_on_parent=False)

        await engine.sessions.stop(ROOT, parent.session.id)
        await engine.sessions.stop(ROOT, parent.session.id)  # twice is harmless

        states = {s.id: (s.state, s.stop_reason) for s in (await engine.sessions.list(ROOT)).data}
        assert states[parent.session.id] == ("stopped", "stopped")
        assert states[kept.session.id] == ("stopped", "parent_stopped")
        assert states[grandchild.session.id] == ("stopped", "parent_stopped")
        assert states[sibling.session.id] == ("active", None)
        assert len(states) == 5  # the root and four spawned: the refused one wrote nothing
        for token in (parent.token, kept.token, grandchild.token):
            with pytest.raises(errors.Unauthenticated):
                await engine.sessions.authenticate(token)
        await engine.sessions.authenticate(sibling.token)
    assert loose.value.field == "auto_stop_on_parent"


async def test_bad_tokens_are_refused(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        for token in (None, "", "adt_" + "0" * 64, "Bearer x"):
            with pytest.raises(errors.Unauthenticated):
                await engine.sessions.authenticate(token)


async def test_ttl_expiry_on_the_fake_clock_stops_the_session_and_cancels_its_run(tmp_path):
    clock, backend = FakeClock(), FakeBackend()
    async with engine_for(tmp_path, clock, backend).running() as engine:
        child = await spawn(engine, ROOT, ttl_seconds=60, prompt="work", command="block")
        assert child.run is not None
        await until(engine, topics.run(child.run.id),
                    lambda: engine.runs.get(ROOT, child.run.id), lambda r: r.status is models.RunStatus.running)
        grand = await spawn(engine, await engine.sessions.authenticate(child.token), ttl_seconds=3000)
        assert grand.lineage.ttl_expires_at == child.lineage.ttl_expires_at  # never past its parent
        clock.advance(59)
        await anyio.sleep(0.01)
        assert (await engine.sessions.get(ROOT, child.session.id)).state == "active"
        clock.advance(2)
        await until(engine, topics.SESSIONS,
                    lambda: engine.sessions.get(ROOT, child.session.id), lambda s: s.state != "active")
        await until(engine, topics.run(child.run.id),  # TERM ends the fake process at once
                    lambda: engine.runs.get(ROOT, child.run.id), lambda r: r.status is models.RunStatus.canceled)
        assert (await engine.sessions.get(ROOT, child.session.id)).stop_reason == "ttl_expired"
        assert (await engine.sessions.get(ROOT, grand.session.id)).state in ("expired", "stopped")
        with pytest.raises(errors.Unauthenticated):
            await engine.sessions.authenticate(child.token)


async def test_a_ttl_above_the_budget_and_bad_run_fields_are_refused_with_nothing_written(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        with pytest.raises(errors.LimitExceeded, match="ttl_seconds"):
            await spawn(engine, ROOT, ttl_seconds=10**6)
        with pytest.raises(errors.InvalidInput, match="command"):
            await spawn(engine, ROOT, command="echo no prompt")
        with pytest.raises(errors.InvalidInput):
            await spawn(engine, ROOT, prompt="p", target_id="../etc")
        assert await engine.store.sessions.list() == []


async def test_a_session_sees_its_own_and_its_childrens_runs_and_no_others(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await spawn(engine, ROOT, permissions=PermissionPolicy(tools=["agent", "runs"]))
        b = await spawn(engine, ROOT, permissions=PermissionPolicy(tools=["agent", "runs"]))
        ac = await engine.sessions.authenticate(a.token)
        child = await spawn(engine, ac, prompt="p", command="out=hi")
        ac = await engine.sessions.authenticate(a.token)  # a caller knows the sessions below it when it comes in
        bc = await engine.sessions.authenticate(b.token)
        assert (await engine.runs.get(ac, child.run.id)).id == child.run.id
        with pytest.raises(errors.NotFound):
            await engine.runs.get(bc, child.run.id)
        with pytest.raises(errors.NotFound):
            await engine.sessions.get(bc, a.session.id)


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["spawn", "stop", "tick"]), st.integers(0, 20),
                                st.lists(st.sampled_from(["agent", "runs", "devices", "agent_run_get", "tasks"]),
                                         max_size=3, unique=True)), max_size=25))
async def test_any_sequence_of_spawns_stops_and_time_keeps_every_budget(tmp_path_factory, steps):
    clock = FakeClock()
    async with engine_for(tmp_path_factory.mktemp("s"), clock).running() as engine:
        engine.sessions.root_budget = lineage.SpawnBudget(max_children=3, max_depth=3, ttl_seconds=100)
        tokens = {"ses_root": None}
        for op, pick, tools in steps:
            live = sorted(tokens)
            who = live[pick % len(live)]
            caller = ROOT if who == "ses_root" else None
            if caller is None:
                try:
                    caller = await engine.sessions.authenticate(tokens[who])
                except errors.Unauthenticated:
                    continue
            if op == "spawn":
                try:
                    child = await spawn(engine, caller, permissions=PermissionPolicy(tools=["agent", *tools]),
                                        ttl_seconds=1 + pick * 5)
                    tokens[child.session.id] = child.token
                except (errors.PermissionDenied, errors.LimitExceeded):
                    pass
            elif op == "stop" and who != "ses_root":
                await engine.sessions.stop(ROOT, who)
            elif op == "tick":
                clock.advance(pick)
                await engine.sessions.expire_due()
            rows = {r.id: r for r in await engine.store.sessions.list()}
            now = clock.now()
            for row in rows.values():
                parent = rows.get(row.parent_session_id)
                parent_tools = set(parent.permissions["tools"]) if parent else set(lineage.TOOLS_BY_TOOLSET)
                for tool in row.permissions["tools"]:
                    assert tool in parent_tools or lineage.TOOLSET_OF.get(tool) in parent_tools
                assert row.spawn_depth <= 3
                if row.status == "active":
                    assert row.ttl_expires_at > now - timedelta(seconds=0), "a live session past its TTL"
                    if parent is not None:
                        assert parent.status == "active" or not row.auto_stop_on_parent
                        assert row.ttl_expires_at <= parent.ttl_expires_at
            for sid in ["ses_root", *rows]:
                live_children = [r for r in rows.values() if r.parent_session_id == sid and r.status == "active"]
                assert len(live_children) <= 3


async def test_context_names_the_sessions_around_the_caller_and_the_channel_it_shares_with_each(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await spawn(engine, ROOT, agent_name="alpha")
        b = await spawn(engine, ROOT, agent_name="beta")
        ac = await engine.sessions.authenticate(a.token)
        c = await spawn(engine, ac, agent_name="gamma")
        await spawn(engine, await engine.sessions.authenticate(c.token), agent_name="delta")  # not a's neighbour
        ctx = await engine.context.context(ac)
        small = await engine.context.context(ac, limit=2)
        cfg = await engine.context.coordinator_config(ac)
    assert {p.session_id for p in ctx.peer_roster.peers} == {"ses_root", b.session.id, c.session.id}
    assert ctx.peer_roster.section.model_dump() == {"limit": 50, "returned": 3, "truncated": False}
    assert small.peer_roster.section.model_dump() == {"limit": 2, "returned": 2, "truncated": True}
    assert len(small.peer_roster.peers) == 2
    assert ctx.self_.session_id == a.session.id and ctx.model_dump()["self"]["agent_name"] == "alpha"
    peers = {p.session_id: p.channel_id for p in ctx.peer_roster.peers}
    assert peers["ses_root"] == peers[b.session.id] == ctx.coordination_channel.channel["id"]
    assert ctx.coordination_channel.channel["channel"] == "family:ses_root"
    assert peers[c.session.id] != peers[b.session.id]  # a's own family, with its child
    assert not ctx.task.available and "task_claim_next" in ctx.task.source
    assert ctx.inbox_summary.items == [] and ctx.inbox_summary.section.returned == 0
    assert (cfg.source, cfg.max_children, cfg.workspace_id) == ("default", 8, "default")


async def test_a_spawned_session_keeps_the_soul_it_had_at_spawn(tmp_path):
    (tmp_path / "souls").mkdir()
    soul_file = tmp_path / "souls" / "reviewer.md"
    soul_file.write_text("---\nrole: Reviews pull requests\ntone: [terse]\n---\nRead the diff first.\n")
    async with engine_for(tmp_path).running() as engine:
        child = await spawn(engine, ROOT, agent_name="reviewer", permissions=PermissionPolicy(tools=["agent", "soul"]))
        soul_file.write_text("---\nrole: Something else entirely\n---\nchanged\n")
        caller = await engine.sessions.authenticate(child.token)
        own = await engine.souls.get(caller)
        ctx = await engine.context.context(caller)
        now = await engine.souls.get(ROOT, "reviewer")
    assert (own.frontmatter.role, own.body.strip(), own.snapshot_id is not None) == (
        "Reviews pull requests", "Read the diff first.", True)
    assert ctx.soul.role == "Reviews pull requests" and ctx.soul.tone == ["terse"]
    assert now.frontmatter.role == "Something else entirely"  # the file moved on; the session did not
