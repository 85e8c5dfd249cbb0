"""Callers: every service method takes one; a session sees what it created and uses what it may. The
sessions here are real (spawned by the local user): a caller whose session does not exist, or has
stopped, creates nothing."""

from __future__ import annotations

import anyio
import pytest

from engine import errors
from engine.devices import models as dm
from engine.runs import models as rm
from engine.app import Engine
from engine.callers import ROOT, Caller
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path):
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02)
    async with Engine(settings, backend=FakeBackend(), harnesses=harness.get).running() as running:
        yield running


async def session(engine: Engine, *tools: str) -> Caller:
    """A session spawned by the local user with these toolsets, as it calls in."""
    spawned = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", permissions=PermissionPolicy(
        tools=list(tools))))
    return await engine.sessions.authenticate(spawned.token)


@pytest.fixture
async def AGENT(engine):  # noqa: N802 - reads as the constant it used to be
    return await session(engine, "runs", "devices")


@pytest.fixture
async def OTHER(engine):  # noqa: N802
    return await session(engine, "runs", "devices")


async def finished(engine: Engine, caller: Caller, run_id: str) -> rm.Run:
    with anyio.fail_after(10):
        return await engine.runs.wait(caller, run_id, 10)


async def test_records_remember_their_creator_and_a_session_sees_only_its_own(engine, AGENT, OTHER):
    mine = await engine.runs.create(AGENT, rm.RunCreate(prompt="p", command="out=x"))
    theirs = await engine.runs.create(OTHER, rm.RunCreate(prompt="p", command="out=y"))
    await finished(engine, AGENT, mine.id)

    assert [r.id for r in (await engine.runs.list(AGENT, rm.RunListQuery())).data] == [mine.id]
    with pytest.raises(errors.NotFound):
        await engine.runs.get(AGENT, theirs.id)
    assert {r.id for r in (await engine.runs.list(ROOT, rm.RunListQuery())).data} == {mine.id, theirs.id}
    row = await engine.store.runs.run(mine.id)
    assert row.created_by == AGENT.session_id


async def test_idempotency_keys_are_scoped_to_the_caller(engine, AGENT, OTHER):
    req = rm.RunCreate(prompt="p", command="out=x", idempotency_key="job-1")
    a = await engine.runs.create(AGENT, req)
    again = await engine.runs.create(AGENT, req)
    b = await engine.runs.create(OTHER, req)
    assert again.id == a.id
    assert b.id != a.id


async def test_a_caller_without_the_runs_toolset_is_refused_naming_it_and_nothing_is_written(engine):
    devices_only = await session(engine, "devices")
    with pytest.raises(errors.PermissionDenied) as info:
        await engine.runs.create(devices_only, rm.RunCreate(prompt="p", command="out=x"))
    assert info.value.evidence["toolset"] == "runs"
    assert (await engine.runs.list(ROOT, rm.RunListQuery())).data == []


async def test_a_session_cannot_target_a_device_it_did_not_create(engine, AGENT, OTHER):
    device = await engine.devices.create(OTHER, dm.DeviceCreate())
    with pytest.raises(errors.NotFound):
        await engine.runs.create(AGENT, rm.RunCreate(prompt="p", command="out=x", sandbox_id=device.id))
    assert [d.id for d in (await engine.devices.list(AGENT)).data] == []


def test_a_bad_setting_in_the_environment_is_a_diagnostic_naming_its_variable(monkeypatch, capsys, tmp_path):
    from mcp_server import cli

    monkeypatch.setenv("AGENTDOCK_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTDOCK_MAX_ACTIVE_RUNS", "0")
    assert cli.main(["daemon", "status", "--json"]) == 1
    out = capsys.readouterr()
    body = __import__("json").loads(out.out)
    assert body["diagnostic"]["evidence"]["field"] == "AGENTDOCK_MAX_ACTIVE_RUNS"
    assert "Traceback" not in out.out + out.err


async def test_only_a_caller_whose_permissions_name_secrets_may_give_a_run_secrets(engine, AGENT):
    engine.secrets.set("SOME_KEY", b"a-long-enough-value")
    with pytest.raises(errors.PermissionDenied):
        await engine.runs.create(AGENT, rm.RunCreate(prompt="p", command="out=x", secrets=["SOME_KEY"]))
    assert (await engine.runs.list(ROOT, rm.RunListQuery())).data == []
    trusted = await session(engine, "runs", "secrets")
    run = await engine.runs.create(trusted, rm.RunCreate(prompt="p", command="out=x", secrets=["SOME_KEY"]))
    assert run.secrets == ["SOME_KEY"]
