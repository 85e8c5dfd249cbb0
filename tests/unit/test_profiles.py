"""Agent runtime profiles on real SQLite and the shipped fake backend: scopes, defaults, the seed's
resolution order, what a profile governs (runtime, model, env, secrets, devices, tool bundles, child
sandboxes) and every refusal naming its field with nothing written."""

from __future__ import annotations

import itertools

import anyio
import pytest

from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.groups import models as gm
from engine.profiles import models as pm
from engine.app import Engine
from engine.callers import ROOT
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import adapters
from runtimes.fake import FakeBackend
from tests import peek

pytestmark = pytest.mark.anyio


def engine_for(tmp_path, **kw) -> Engine:
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, **kw)
    return Engine(settings, backend=FakeBackend(), harnesses=adapters.get)


def profile(name: str = "builder", **kw) -> pm.ProfileCreate:
    return models.parse(pm.ProfileCreate, {"name": name, "runtime": kw.pop("runtime", "custom"), **kw})


def run(**kw) -> rm.RunCreate:
    return models.parse(rm.RunCreate, {"prompt": "p", "command": "out=ok", **kw})


def rows(engine: Engine, table: str) -> int:
    return peek.count(engine.settings, f"SELECT count(*) FROM {table}")


async def test_a_profile_gets_an_arp_id_and_reads_back_with_every_seed_field(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        made = await engine.profiles.create(ROOT, profile(
            workspace_id="ws_1", description="builds apps", applies_to={"resources": ["sandbox"]},
            tools=["files", "exec"], connectors=["refero/design-research"], env={"MIOSA_AGENT_CWD": "/workspace"},
            policy={"approval": "confirm-risky", "max_child_sandboxes": 5}, metadata={"product_agent": "x"},
            is_default=True))
        got = await engine.profiles.get(ROOT, made.id)
        listed = await engine.profiles.list(ROOT, pm.ProfileListQuery(workspace_id="ws_1"))
        other = await engine.profiles.list(ROOT, pm.ProfileListQuery(workspace_id="ws_2"))
    assert made.id.startswith("arp_") and got == made
    assert (got.workspace_id, got.runtime, got.tools, got.connectors) == (
        "ws_1", "custom", ["files", "exec"], ["refero/design-research"])
    assert got.policy == {"approval": "confirm-risky", "max_child_sandboxes": 5} and got.is_default
    assert [p.id for p in listed.data] == [made.id] and other.data == []


async def test_a_name_is_unique_in_its_scope_but_may_repeat_in_another_scope(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile("same"))
        await engine.profiles.create(ROOT, profile("same", workspace_id="ws_1"))
        with pytest.raises(errors.Conflict) as caught:
            await engine.profiles.create(ROOT, profile("same", workspace_id="ws_1"))
        renamed = await engine.profiles.create(ROOT, profile("other"))
        with pytest.raises(errors.Conflict):
            await engine.profiles.update(ROOT, pm.ProfileUpdate(profile_id=renamed.id, name="same"))
        count = rows(engine, "agent_runtime_profiles")
    assert caught.value.evidence["field"] == "name" and count == 3


async def test_a_new_default_takes_over_its_scope_and_leaves_other_scopes_alone(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        first = await engine.profiles.create(ROOT, profile("a", is_default=True))
        in_ws = await engine.profiles.create(ROOT, profile("b", workspace_id="ws_1", is_default=True))
        second = await engine.profiles.create(ROOT, profile("c", is_default=True))
        third = await engine.profiles.create(ROOT, profile("d"))
        await engine.profiles.update(ROOT, pm.ProfileUpdate(profile_id=third.id, is_default=True))
        state = {p.name: p.is_default for p in (await engine.profiles.list(ROOT, pm.ProfileListQuery())).data}
    assert state == {"a": False, "c": False, "d": True, "b": True}, (first, in_ws, second)


# ---------------------------------------------------------------- resolution


CASES = list(itertools.product([False, True], [None, "agent_runtime_profile_id", "agent_profile_id"],
                               [False, True], [False, True]))


@pytest.mark.parametrize(("skip", "explicit_field", "ws_default", "tenant_default"), CASES)
async def test_resolution_follows_the_seed_order_for_every_combination_of_sources(
        tmp_path, skip, explicit_field, ws_default, tenant_default):
    async with engine_for(tmp_path).running() as engine:
        made = {"explicit": await engine.profiles.create(ROOT, profile("explicit", workspace_id="ws_1"))}
        if ws_default:
            made["workspace_default"] = await engine.profiles.create(
                ROOT, profile("wsd", workspace_id="ws_1", is_default=True))
        if tenant_default:
            made["tenant_default"] = await engine.profiles.create(ROOT, profile("td", is_default=True))
        body = {"workspace_id": "ws_1"}
        if explicit_field:
            body[explicit_field] = made["explicit"].id
        if skip and explicit_field:  # both at once is a contradiction, refused naming the flag
            with pytest.raises(errors.InvalidInput) as caught:
                run(skip_agent_runtime_profile=True, **body)
            assert caught.value.field == "skip_agent_runtime_profile"
            return
        created = await engine.runs.create(ROOT, run(skip_agent_runtime_profile=skip, **body))
    expected = (None if skip else "explicit" if explicit_field else "workspace_default" if ws_default
                else "tenant_default" if tenant_default else None)
    if expected is None:
        assert created.profile_id is None and created.profile_snapshot is None
    else:
        assert created.profile_id == made[expected].id
        assert created.profile_snapshot["source"] == expected
        assert created.profile_snapshot["id"] == made[expected].id


async def test_a_run_without_a_workspace_takes_the_local_users_default_workspace_then_the_tenant(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        tenant = await engine.profiles.create(ROOT, profile("t", is_default=True))
        plain = await engine.runs.create(ROOT, run())
        ws = await engine.profiles.create(ROOT, profile("w", workspace_id="default", is_default=True))
        again = await engine.runs.create(ROOT, run())
    assert (plain.profile_id, plain.workspace_id) == (tenant.id, "default")
    assert again.profile_id == ws.id


async def test_two_different_profile_ids_at_once_are_refused_naming_the_field(tmp_path):
    with pytest.raises(errors.InvalidInput) as caught:
        run(agent_runtime_profile_id="arp_" + "1" * 20, agent_profile_id="arp_" + "2" * 20)
    assert caught.value.field == "agent_profile_id"
    same = run(agent_runtime_profile_id="arp_" + "1" * 20, agent_profile_id="arp_" + "1" * 20)
    assert same.profile_asked == "arp_" + "1" * 20


async def test_an_unknown_or_other_workspace_profile_is_refused_naming_the_field_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        theirs = await engine.profiles.create(ROOT, profile("theirs", workspace_id="ws_2"))
        with pytest.raises(errors.InvalidInput) as unknown:
            await engine.runs.create(ROOT, run(agent_runtime_profile_id="arp_" + "0" * 20))
        with pytest.raises(errors.InvalidInput) as foreign:
            await engine.runs.create(ROOT, run(agent_profile_id=theirs.id, workspace_id="ws_1"))
        written = rows(engine, "agent_runs"), rows(engine, "devices")
    assert unknown.value.field == "agent_runtime_profile_id"
    assert foreign.value.field == "agent_profile_id" and "ws_2" in foreign.value.message
    assert written == (0, 0)


async def test_run_env_overrides_profile_env_and_the_snapshot_survives_a_later_update(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(env={"A": "from-profile", "B": "from-profile"},
                                                       model="m-1", is_default=True))
        created = await engine.runs.create(ROOT, run(env={"B": "from-run"}))
        await engine.profiles.update(ROOT, pm.ProfileUpdate(profile_id=p.id, model="m-2", env={"A": "changed"}))
        row = await engine.store.runs.run(created.id)
        later = await engine.runs.get(ROOT, created.id)
    assert row.env == {"A": "from-profile", "B": "from-run"}
    assert row.model == "m-1" and later.profile_snapshot["model"] == "m-1"
    assert later.profile_snapshot["env"] == {"A": "from-profile", "B": "from-profile"}


async def test_a_profile_runtime_and_model_apply_only_when_the_run_names_none(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile(runtime="codex", model="gpt-x", is_default=True))
        bare = await engine.runs.create(ROOT, rm.RunCreate(prompt="p"))
        own = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", provider="pi", model="mine"))
        custom = await engine.runs.create(ROOT, run())
    assert (bare.provider, bare.model) == ("codex", "gpt-x")
    assert (own.provider, own.model) == ("pi", "mine")
    assert custom.provider == "custom"  # a command is a runtime of its own


async def test_a_profile_image_resources_and_network_shape_the_ephemeral_sandbox_it_creates(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await engine.profiles.create(ROOT, profile(image="other:1", resources={"cpus": 0.5, "memory_mb": 256,
                                                                               "pids_limit": 64},
                                                   network=True, is_default=True))
        with_profile = await engine.runs.create(ROOT, run())
        without = await engine.runs.create(ROOT, run(skip_agent_runtime_profile=True))
        a, b = await engine.store.devices.device(with_profile.target_id), await engine.store.devices.device(without.target_id)
    assert (a.image, a.cpus, a.memory_mb, a.pids_limit, a.network) == ("other:1", 0.5, 256, 64, True)
    assert (b.image, b.network) == ("fake:latest", False)


async def test_profile_secrets_merge_with_the_run_secrets_and_an_unknown_name_is_refused(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        engine.secrets.set("PROFILE_KEY", b"value-of-profile-key")
        engine.secrets.set("RUN_KEY", b"value-of-run-key-1")
        with pytest.raises(errors.InvalidInput) as unknown:
            await engine.profiles.create(ROOT, profile(secrets=["NOT_SET"]))
        await engine.profiles.create(ROOT, profile(secrets=["PROFILE_KEY"], is_default=True))
        created = await engine.runs.create(ROOT, run(secrets=["RUN_KEY"]))
    assert unknown.value.field == "secrets.0" and unknown.value.suggested_command == "agentdock secrets set NOT_SET"
    assert created.secrets == ["RUN_KEY", "PROFILE_KEY"]
    assert created.profile_snapshot["secrets"] == ["PROFILE_KEY"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "field"), [
    ({"runtime": "gpt-runner"}, "runtime"),
    ({"tools": ["files", "shell"]}, "tools.1"),
    ({"colour": "red"}, "colour"),
    ({"policy": {"approval": "always"}}, "policy.approval"),
    ({"policy": {"max_children": 3}}, "policy.max_children"),
    ({"env": {"PATH": "/bin"}}, "env"),
    ({"workspace_id": "../x"}, "workspace_id"),
])
async def test_malformed_profile_fields_are_refused_naming_the_field(body, field):
    with pytest.raises(errors.InvalidInput) as caught:
        models.parse(pm.ProfileCreate, {"name": "x", "runtime": "custom", **body})
    assert caught.value.field == field


@pytest.mark.parametrize(("name", "value"), [
    ("OPENAI_API_KEY", "anything"), ("GITHUB_TOKEN", "abc"), ("DB_PASSWORD", "hunter2"),
    ("HELPER", "sk-ant-api03-abcdefghijklmnop"), ("BLOB", "q8ZrT1vX9mLp2Ws7Yb4Nc6Hd0Jf3Gk5R"),
])
async def test_secret_looking_env_is_refused_pointing_at_the_secret_store(tmp_path, name, value):
    async with engine_for(tmp_path).running() as engine:
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.profiles.create(ROOT, profile(env={name: value}))
        plain = await engine.profiles.create(ROOT, profile("ok", env={"ANTHROPIC_MODEL": "claude-sonnet-4.6",
                                                                       "MIOSA_AGENT_CWD": "/workspace"}))
        count = rows(engine, "agent_runtime_profiles")
    assert caught.value.field == f"env.{name}"
    assert caught.value.suggested_command == f"agentdock secrets set {name}"
    assert f'secrets: ["{name}"]' in caught.value.message and value not in caught.value.message
    assert count == 1 and plain.env["ANTHROPIC_MODEL"] == "claude-sonnet-4.6"


async def test_a_profile_scope_cannot_be_moved_by_an_update(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(workspace_id="ws_1"))
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.profiles.update(ROOT, pm.ProfileUpdate(profile_id=p.id, workspace_id="ws_2"))
    assert caught.value.field == "workspace_id"


# ---------------------------------------------------------------- in use


async def test_deleting_a_profile_an_unfinished_run_uses_is_refused_saying_which_run(tmp_path):
    async with engine_for(tmp_path, max_active_runs=1).running() as engine:
        p = await engine.profiles.create(ROOT, profile())
        blocker = await engine.runs.create(ROOT, run(command="block", agent_runtime_profile_id=p.id))
        with pytest.raises(errors.Conflict) as caught:
            await engine.profiles.delete(ROOT, p.id)
        await engine.runs.cancel(ROOT, blocker.id)
        gone = await engine.profiles.delete(ROOT, p.id)
        with pytest.raises(errors.NotFound):
            await engine.profiles.get(ROOT, p.id)
        kept = await engine.runs.get(ROOT, blocker.id)
    assert caught.value.evidence["in_use_by"] == {"runs": [blocker.id]} and blocker.id in caught.value.message
    assert gone.id == p.id and kept.profile_snapshot["id"] == p.id


async def test_deleting_a_profile_a_live_session_runs_under_is_refused_until_it_stops(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile())
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", agent_runtime_profile_id=p.id))
        with pytest.raises(errors.Conflict) as caught:
            await engine.profiles.delete(ROOT, p.id)
        await engine.sessions.stop(ROOT, child.session.id)
        await engine.profiles.delete(ROOT, p.id)
    assert caught.value.evidence["in_use_by"] == {"sessions": [child.session.id]}
    assert child.session.profile_id == p.id and child.session.profile["source"] == "explicit"


# ---------------------------------------------------------------- sessions under a profile


async def test_a_spawn_names_only_a_profile_the_childs_sandbox_profiles_allow(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile("allowed-one"))
        with pytest.raises(errors.PermissionDenied) as caught:
            await engine.sessions.spawn(ROOT, SpawnRequest(
                agent_name="w", agent_runtime_profile_id=p.id,
                permissions=PermissionPolicy(tools=["runs"], sandbox_profiles=["something-else"])))
        by_name = await engine.sessions.spawn(ROOT, SpawnRequest(
            agent_name="w", agent_runtime_profile_id=p.id,
            permissions=PermissionPolicy(tools=["runs"], sandbox_profiles=["allowed-one"])))
        live = rows(engine, "sessions")
    assert caught.value.evidence["field"] == "agent_runtime_profile_id"
    assert by_name.session.profile_id == p.id and live == 1


async def test_max_child_sandboxes_refuses_the_sandbox_past_the_limit_under_that_session(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(policy={"max_child_sandboxes": 1}))
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", agent_runtime_profile_id=p.id))
        caller = await engine.sessions.authenticate(child.token)
        first = await engine.devices.create(caller, dm.DeviceCreate())
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.devices.create(caller, dm.DeviceCreate())
        with pytest.raises(errors.LimitExceeded):
            await engine.runs.create(caller, run())  # its ephemeral sandbox would be one more
        await engine.devices.delete(caller, first.id)
        second = await engine.devices.create(caller, dm.DeviceCreate())
        live = len(await engine.backend.list_owned())
    assert caught.value.evidence["field"] == "max_child_sandboxes" and caught.value.evidence["limit"] == 1
    assert second.id != first.id and live == 1


async def test_tool_bundles_decide_which_tools_a_session_under_the_profile_sees_and_may_call(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(tools=["artifacts"]))
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", agent_runtime_profile_id=p.id))
        caller = await engine.sessions.authenticate(child.token)
        caps = {c.id for c in (await engine.sessions.me(caller)).capabilities}
        with pytest.raises(errors.PermissionDenied) as run_refused:
            await engine.runs.create(caller, run())
        with pytest.raises(errors.PermissionDenied):
            await engine.devices.create(caller, dm.DeviceCreate())
        with pytest.raises(errors.PermissionDenied):
            await engine.groups.list(caller, gm.GroupListQuery())
        unrestricted = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", skip_agent_runtime_profile=True))
        all_caps = {c.id for c in (await engine.sessions.me(
            await engine.sessions.authenticate(unrestricted.token))).capabilities}
    assert "agent_run_artifacts" in caps and "task_list" in caps and "profile_list" in caps
    assert not caps & {"agent_run", "sandbox_create", "group_dispatch", "agent_run_get"}
    assert "agent_run" in run_refused.value.message
    assert {"agent_run", "sandbox_create"} <= all_caps


async def test_bundle_mapping_covers_exactly_the_seed_bundles():
    assert set(pm.BUNDLE_TOOLS) == {"files", "exec", "browser", "previews", "artifacts", "deploy"}
    assert pm.denied_tools(None) == frozenset()
    assert pm.denied_tools(["exec", "files"]) == frozenset()
    assert "agent_run" in pm.denied_tools([])


async def test_a_session_sees_tenant_and_own_workspace_profiles_and_manages_only_its_workspace(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        tenant = await engine.profiles.create(ROOT, profile("t"))
        mine = await engine.profiles.create(ROOT, profile("m", workspace_id="ws_1"))
        theirs = await engine.profiles.create(ROOT, profile("o", workspace_id="ws_2"))
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", workspace_id="ws_1"))
        caller = await engine.sessions.authenticate(child.token)
        seen = {p.id for p in (await engine.profiles.list(caller, pm.ProfileListQuery())).data}
        with pytest.raises(errors.NotFound):
            await engine.profiles.get(caller, theirs.id)
        with pytest.raises(errors.PermissionDenied):
            await engine.profiles.delete(caller, tenant.id)
        with pytest.raises(errors.PermissionDenied):
            await engine.profiles.create(caller, profile("t2"))
        own = await engine.profiles.create(caller, profile("n", workspace_id="ws_1"))
        with pytest.raises(errors.InvalidInput) as foreign:
            await engine.runs.create(caller, run(agent_runtime_profile_id=theirs.id))
    assert "ws_2" not in foreign.value.message and foreign.value.field == "agent_runtime_profile_id"
    assert seen == {tenant.id, mine.id} and own.workspace_id == "ws_1"


async def test_a_groups_child_runs_resolve_the_default_of_the_groups_workspace(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        ws = await engine.profiles.create(ROOT, profile("w", workspace_id="team", is_default=True, model="team-m"))
        group = await engine.groups.create(ROOT, gm.GroupCreate(name="g", workspace_id="team"))
        await engine.groups.dispatch(ROOT, group.id, models.parse(gm.DispatchRequest, {
            "runs": [{"prompt": "p", "command": "out=x"}], "async": True}))
        with anyio.fail_after(10):
            await engine.groups.wait(ROOT, group.id, 10)
        (child,) = (await engine.runs.list(ROOT, rm.RunListQuery())).data
    assert child.profile_id == ws.id and child.model == "team-m" and child.workspace_id == "team"


async def test_max_child_sandboxes_counts_the_sandboxes_of_children_spawned_with_a_prompt(tmp_path):
    async with engine_for(tmp_path, max_active_runs=4).running() as engine:
        p = await engine.profiles.create(ROOT, profile(policy={"max_child_sandboxes": 1}))
        parent = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="lead", agent_runtime_profile_id=p.id))
        lead = await engine.sessions.authenticate(parent.token)
        first = await engine.sessions.spawn(lead, SpawnRequest(agent_name="w", prompt="p", command="block",
                                                               skip_agent_runtime_profile=True))
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.sessions.spawn(lead, SpawnRequest(agent_name="w", prompt="p", command="block",
                                                           skip_agent_runtime_profile=True))
        no_sandbox = await engine.sessions.spawn(lead, SpawnRequest(agent_name="w", skip_agent_runtime_profile=True))
        states = {s.id: s.state for s in (await engine.sessions.list(ROOT)).data}
    assert first.run is not None and caught.value.evidence["session_id"] == parent.session.id
    assert no_sandbox.session.profile_id is None
    assert "stopped" not in states.values()  # the refused spawn wrote no child at all
    assert len(states) == 4  # the root, lead, first and no_sandbox


async def test_a_sandbox_created_under_a_profile_takes_what_the_request_leaves_out(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(image="prof:1", resources={"cpus": 0.5, "pids_limit": 64},
                                                       network=True))
        named = await engine.devices.create(ROOT, dm.DeviceCreate(agent_runtime_profile_id=p.id))
        own = await engine.devices.create(ROOT, dm.DeviceCreate(agent_runtime_profile_id=p.id, image="mine:2",
                                                                    cpus=2, network=False))
        plain = await engine.devices.create(ROOT, dm.DeviceCreate())
        only_computers = await engine.profiles.create(ROOT, profile("c", applies_to={"resources": ["computer"]}))
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.devices.create(ROOT, dm.DeviceCreate(agent_runtime_profile_id=only_computers.id))
    assert (named.image, named.cpus, named.pids_limit, named.memory_mb, named.network) == (
        "prof:1", 0.5, 64, 512, True)
    assert (own.image, own.cpus, own.network) == ("mine:2", 2, False)
    assert (plain.image, plain.network) == ("fake:latest", False)
    assert caught.value.field == "kind"


async def test_a_session_under_a_profile_without_network_may_not_create_a_networked_device(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(image="prof:1"))
        child = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", agent_runtime_profile_id=p.id))
        caller = await engine.sessions.authenticate(child.token)
        with pytest.raises(errors.PermissionDenied) as caught:
            await engine.devices.create(caller, dm.DeviceCreate(network=True))
        made = await engine.devices.create(caller, dm.DeviceCreate())
        live = len(await engine.backend.list_owned())
    assert caught.value.evidence["field"] == "network"
    assert (made.image, made.network, live) == ("prof:1", False, 1)


async def test_a_dispatch_naming_a_profile_that_cannot_apply_is_refused_before_any_entry_is_written(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        theirs = await engine.profiles.create(ROOT, profile("o", workspace_id="elsewhere"))
        group = await engine.groups.create(ROOT, gm.GroupCreate(name="g", workspace_id="team"))
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.groups.dispatch(ROOT, group.id, models.parse(gm.DispatchRequest, {"async": True, "runs": [
                {"prompt": "p", "command": "out=x"},
                {"prompt": "p", "command": "out=x", "agent_runtime_profile_id": theirs.id}]}))
        entries = rows(engine, "agent_run_group_entries")
    assert caught.value.field == "runs.1.agent_runtime_profile_id" and entries == 0


async def test_a_profile_deleted_between_resolution_and_the_write_refuses_the_run_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        p = await engine.profiles.create(ROOT, profile(is_default=True))
        resolve = engine.profiles.resolve

        async def resolve_then_lose_it(*args, **kw):  # the interleaving forced: a delete lands in between
            found = await resolve(*args, **kw)
            await engine.profiles.delete(ROOT, p.id)
            return found

        engine.profiles.resolve = resolve_then_lose_it  # type: ignore[method-assign]
        with pytest.raises(errors.Conflict) as caught:
            await engine.runs.create(ROOT, run())
        written = rows(engine, "agent_runs"), rows(engine, "devices")
    assert caught.value.evidence["profile_id"] == p.id and written == (0, 0)
