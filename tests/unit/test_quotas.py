"""Quotas per tree of sessions and per workspace, bounded task bodies and list answers within a byte
budget (issue 16), on real SQLite, the shipped fake backend and the fake clock. Each refused write
is shown to have written nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import pytest

from engine.channels import models as cm
from engine import errors
from engine.devices import models as dm
from engine.runs import models as rm
from engine.groups import models as gm
from engine.tasks import models as tm
from engine.callers import ROOT
from engine.lineage import PermissionPolicy
from engine.quotas.repository import Usage
from engine.store import Store, migrations
from tests.unit.test_channels import child, engine_for, family, recv, send

pytestmark = pytest.mark.anyio

TALKERS = PermissionPolicy(tools=["agent", "channels", "tasks", "devices", "runs"], network_channels=["*"])


async def test_a_parent_that_spawns_fresh_children_gives_them_no_fresh_channel_quota(tmp_path):
    async with engine_for(tmp_path, channel_quota_messages=3).running() as engine:
        parent = await child(engine, permissions=TALKERS)
        first = await child(engine, parent, permissions=TALKERS)
        second = await child(engine, parent, permissions=TALKERS)
        ch = family(parent.session_id)
        await send(engine, first, ch, 1)
        await send(engine, first, ch, 2)
        await send(engine, second, ch, 3)
        for flooder in (second, first, parent, await child(engine, parent, permissions=TALKERS)):
            with pytest.raises(errors.LimitExceeded, match="channel quota") as caught:
                await send(engine, flooder, ch, "one too many")
            assert caught.value.evidence["scope"] == "tree"
            assert caught.value.evidence["scope_id"] == parent.session_id
            assert caught.value.evidence["setting"] == "AGENTDOCK_CHANNEL_QUOTA_MESSAGES"
        other = await child(engine, permissions=TALKERS)  # another tree has its own
        await send(engine, other, family(ROOT.session_id), "mine")
        await send(engine, ROOT, ch, "the local user has none")
        got = await recv(engine, ROOT, ch, limit=500)
        assert [m.body for m in got] == [1, 2, 3]  # the refused sends wrote nothing
        assert (await engine.store.quotas.usage(f"tree:{parent.session_id}")).messages == 3


async def test_trees_of_one_workspace_share_its_quota_of_messages_and_bytes(tmp_path):
    async with engine_for(tmp_path, channel_quota_messages=3, workspace_channel_quota_messages=4,
                          workspace_channel_quota_bytes=100_000).running() as engine:
        a, b = await child(engine, permissions=TALKERS), await child(engine, permissions=TALKERS)
        ch = family(ROOT.session_id)
        for i in range(3):
            await send(engine, a, ch, i)
        await send(engine, b, ch, "b")
        with pytest.raises(errors.LimitExceeded) as caught:
            await send(engine, b, ch, "b again")
        assert (caught.value.evidence["scope"], caught.value.evidence["scope_id"]) == ("workspace", "default")
        assert caught.value.evidence["resource"] == "messages" and caught.value.evidence["used"] == 4
        assert (await engine.store.quotas.usage("workspace:default")).messages == 4

    async with engine_for(tmp_path / "bytes", workspace_channel_quota_bytes=100_000).running() as engine:
        a, b = await child(engine, permissions=TALKERS), await child(engine, permissions=TALKERS)
        ch = family(ROOT.session_id)
        await send(engine, a, ch, "x" * 60_000)
        with pytest.raises(errors.LimitExceeded) as caught:
            await send(engine, b, ch, "y" * 60_000)
        assert caught.value.evidence["resource"] == "message_bytes"
        assert caught.value.evidence["setting"] == "AGENTDOCK_WORKSPACE_CHANNEL_QUOTA_BYTES"
        assert [m.body for m in await recv(engine, ROOT, ch)] == ["x" * 60_000]


async def test_tasks_count_against_the_tree_and_the_workspace_and_the_refused_one_is_not_written(tmp_path):
    async with engine_for(tmp_path, task_quota_tasks=2, workspace_task_quota_tasks=3).running() as engine:
        parent = await child(engine, permissions=TALKERS)
        kid = await child(engine, parent, permissions=TALKERS)
        await engine.tasks.create(parent, tm.TaskCreate(title="one"))
        await engine.tasks.create(kid, tm.TaskCreate(title="two"))
        with pytest.raises(errors.LimitExceeded, match="task quota") as caught:
            await engine.tasks.create(kid, tm.TaskCreate(title="three"))
        assert caught.value.evidence["scope"] == "tree" and caught.value.evidence["field"] == "payload"
        other = await child(engine, permissions=TALKERS)
        await engine.tasks.create(other, tm.TaskCreate(title="four"))
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.tasks.create(other, tm.TaskCreate(title="five"))
        assert caught.value.evidence["scope"] == "workspace"
        await engine.tasks.create(ROOT, tm.TaskCreate(title="the local user has none"))
        titles = [t.title for t in (await engine.tasks.list(ROOT, tm.TaskListQuery())).data]
        assert titles == ["the local user has none", "four", "two", "one"]


async def test_task_bytes_count_payloads_results_and_errors_of_the_tree(tmp_path):
    async with engine_for(tmp_path, task_quota_bytes=100_000).running() as engine:
        worker = await child(engine, permissions=TALKERS)
        task = await engine.tasks.create(worker, tm.TaskCreate(title="t", payload={"p": "x" * 50_000}))
        claim = (await engine.tasks.claim_next(worker, tm.ClaimNext())).claim
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.tasks.complete(worker, tm.Complete(task_run_id=claim.run.id, claim_token=claim.claim_token,
                                                            result={"r": "y" * 60_000}))
        assert (caught.value.evidence["resource"], caught.value.evidence["field"]) == ("task_bytes", "result")
        held = await engine.tasks.get(ROOT, task.id)
        assert held.status == "claimed" and held.result is None and held.runs[0].status == "running"
        done = await engine.tasks.complete(worker, tm.Complete(task_run_id=claim.run.id, claim_token=claim.claim_token,
                                                               result={"r": "small"}))
        assert done.task.status == "completed"
        used = await engine.store.quotas.usage(f"tree:{worker.session_id}")
        assert used.tasks == 1 and used.task_bytes == len("t") + len(json.dumps({"p": "x" * 50_000})) + len(
            json.dumps({"r": "small"}))


async def test_a_payload_or_result_past_its_bound_is_invalid_input_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path, task_payload_max_bytes=2_048, task_result_max_bytes=1_024).running() as engine:
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.tasks.create(ROOT, tm.TaskCreate(title="big", payload={"p": "x" * 2_100}))
        assert caught.value.field == "payload" and caught.value.evidence["limit"] == 2_048
        assert "AGENTDOCK_TASK_PAYLOAD_MAX_BYTES" in caught.value.message
        assert (await engine.tasks.list(ROOT, tm.TaskListQuery())).data == []
        await engine.tasks.create(ROOT, tm.TaskCreate(title="fits", payload={"p": "x" * 2_000}))
        claim = (await engine.tasks.claim_next(ROOT, tm.ClaimNext())).claim
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.tasks.complete(ROOT, tm.Complete(task_run_id=claim.run.id, claim_token=claim.claim_token,
                                                          result="r" * 1_100))
        assert caught.value.field == "result"
        assert (await engine.tasks.get(ROOT, claim.task.id)).status == "claimed"


async def test_a_task_list_gives_summaries_unless_asked_and_bodies_only_within_its_byte_budget(tmp_path):
    async with engine_for(tmp_path, list_page_max_bytes=100_000).running() as engine:
        for i in range(6):
            await engine.tasks.create(ROOT, tm.TaskCreate(title=f"t{i}", payload={"i": i, "p": "x" * 30_000},
                                                          max_attempts=1))
        claim = (await engine.tasks.claim_next(ROOT, tm.ClaimNext())).claim
        await engine.tasks.fail(ROOT, tm.Fail(task_run_id=claim.run.id, claim_token=claim.claim_token, error="e" * 5_000))

        summaries = (await engine.tasks.list(ROOT, tm.TaskListQuery())).data
        assert [t.title for t in summaries] == [f"t{i}" for i in reversed(range(6))]
        assert all(t.bodies_omitted and t.payload is None and t.result is None for t in summaries)
        failed = next(t for t in summaries if t.id == claim.task.id)
        assert failed.error == "e" * 200  # cut in a summary
        assert len(tm.TaskList(data=summaries).model_dump_json()) < 20_000

        full = (await engine.tasks.list(ROOT, tm.TaskListQuery(include_payload=True))).data
        with_bodies = [t for t in full if not t.bodies_omitted]
        assert [t.payload["i"] for t in with_bodies] == [5, 4, 3]  # 3 x 30 KB within 100 KB, the 4th past it
        assert all(t.payload is None for t in full[3:])
        assert len(tm.TaskList(data=full).model_dump_json()) < 100_000 + 20_000
        got = await engine.tasks.get(ROOT, full[-1].id)  # get has everything
        assert got.payload == {"i": 0, "p": "x" * 30_000} and not got.bodies_omitted
        assert (await engine.tasks.get(ROOT, claim.task.id)).error == "e" * 5_000


async def test_a_run_list_carries_outputs_only_within_its_byte_budget_and_get_has_them(tmp_path):
    async with engine_for(tmp_path, list_page_max_bytes=65_536).running() as engine:
        made = []
        for i in range(6):
            run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command=f"out={i}{'x' * 15_000}"))
            with anyio.fail_after(10):
                made.append(await engine.runs.wait(ROOT, run.id, 10))
        assert all(r.status == "succeeded" and len(r.output) == 15_002 for r in made)
        listed = (await engine.runs.list(ROOT, rm.RunListQuery(limit=10))).data
        newest_first = sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)  # one instant on the fake clock
        assert [r.id for r in listed] == [r.id for r in newest_first]
        assert [r.output_omitted for r in listed] == [False] * 4 + [True] * 2  # 4 x 15 KB within 64 KiB
        assert [r.output for r in listed[:4]] == [r.output for r in newest_first[:4]]
        assert all(r.output == r.stderr == "" for r in listed[4:])
        got = await engine.runs.get(ROOT, listed[-1].id)
        assert got.output == newest_first[-1].output and not got.output_omitted
        paged = (await engine.runs.list(ROOT, rm.RunListQuery(limit=2, cursor=listed[3].id))).data
        assert [r.output_omitted for r in paged] == [False, False]  # each page has its own budget


async def test_a_groups_runs_and_dispatch_results_carry_outputs_only_within_the_byte_budget(tmp_path):
    async with engine_for(tmp_path, list_page_max_bytes=65_536).running() as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=6))
        req = gm.DispatchRequest.model_validate({"runs": [{"prompt": "p", "command": f"out={i}{'x' * 15_000}"}
                                                          for i in range(6)]})
        with anyio.fail_after(10):
            result = await engine.groups.dispatch(ROOT, group.id, req, wait=10)
        assert result.done and all(r.ok for r in result.results)
        assert [r.run.output_omitted for r in sorted(result.results, key=lambda r: r.index)] == [False] * 4 + [True] * 2
        listed = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery(include_output=True))).data
        assert [r.output.output_omitted for r in listed] == [False] * 4 + [True] * 2
        assert [r.output.output[0] for r in listed[:4]] == ["0", "1", "2", "3"]
        assert all(r.output.output == "" for r in listed[4:])
        bare = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery(include_input=True))).data
        assert all(r.output is None and r.input.prompt == "p" for r in bare)

        pages, after = [], 0  # the group's events (6 x 15 KB of output) page by the same budget, nothing lost
        while page := (await engine.groups.events(ROOT, group.id, gm.GroupEventsQuery(after_sequence=after,
                                                                                       limit=1000))).data:
            pages.append(page)
            after = page[-1].sequence
        assert len(pages) > 1
        assert all(sum(len(json.dumps(e.payload)) for e in p) <= 65_536 for p in pages)
        seqs = [e.sequence for p in pages for e in p]
        assert seqs == list(range(1, len(seqs) + 1))
        text = "".join(e.payload.get("text", "") for p in pages for e in p if e.type == "output")
        assert sorted(text.splitlines()) == sorted(f"{i}{'x' * 15_000}" for i in range(6))


async def test_recv_stops_at_its_byte_budget_and_the_rest_waits_for_the_next_recv(tmp_path):
    async with engine_for(tmp_path, list_page_max_bytes=100_000).running() as engine:
        a = await child(engine, permissions=TALKERS)
        ch = family(ROOT.session_id)
        for i in range(5):
            await send(engine, ROOT, ch, {"i": i, "x": "y" * 40_000})
        pages = []
        while page := await recv(engine, a, ch, limit=500):
            pages.append([m.body["i"] for m in page])
        assert pages == [[0, 1], [2, 3], [4]]
        big = await send(engine, ROOT, ch, "z" * 60_000)
        await send(engine, ROOT, ch, "z" * 60_000)
        first = await recv(engine, a, ch)
        assert [m.message_id for m in first] == [big.message_id]  # always at least one


async def test_sandboxes_are_bounded_per_tree_and_per_workspace_and_a_deleted_one_frees_its_place(tmp_path):
    async with engine_for(tmp_path, tree_max_live_sandboxes=2, workspace_max_live_sandboxes=3).running() as engine:
        parent = await child(engine, permissions=TALKERS)
        kid = await child(engine, parent, permissions=TALKERS)
        made = [await engine.devices.create(parent, dm.DeviceCreate()),
                await engine.devices.create(kid, dm.DeviceCreate())]
        for who in (kid, parent):
            with pytest.raises(errors.LimitExceeded, match="live sandboxes") as caught:
                await engine.devices.create(who, dm.DeviceCreate())
            assert caught.value.evidence["scope"] == "tree" and caught.value.evidence["live"] == 2
        with pytest.raises(errors.LimitExceeded, match="live sandboxes"):  # a run's ephemeral sandbox counts too
            await engine.runs.create(kid, rm.RunCreate(prompt="p", command="true"))
        other = await child(engine, permissions=TALKERS)
        await engine.devices.create(other, dm.DeviceCreate())
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.devices.create(other, dm.DeviceCreate())
        assert (caught.value.evidence["scope"], caught.value.evidence["live"]) == ("workspace", 3)
        assert len(await engine.store.devices.list(include_ephemeral=True)) == 3  # nothing written by the refusals
        await engine.devices.delete(parent, made[0].id)
        await engine.devices.create(kid, dm.DeviceCreate())
        await engine.devices.create(ROOT, dm.DeviceCreate())  # the local user has no quota


async def test_a_send_cannot_pass_for_a_reply_nor_take_another_sessions_correlation(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a, b = await child(engine, permissions=TALKERS), await child(engine, permissions=TALKERS)
        ch = family(ROOT.session_id)
        request = await send(engine, a, ch, "which port?", message_kind="request", correlation_id="port-1")
        for meta in ({"message_kind": "reply"}, {"message_kind": "reply", "correlation_id": "port-1"}):
            with pytest.raises(errors.InvalidInput, match="channel_reply") as caught:
                await send(engine, b, ch, "8080", **meta)
            assert caught.value.field == "metadata.message_kind"
        for correlation in ("port-1", request.message_id):
            with pytest.raises(errors.InvalidInput, match="another session's correlation") as caught:
                await send(engine, b, ch, "8080", message_kind="result", correlation_id=correlation)
            assert caught.value.field == "metadata.correlation_id"
        await send(engine, a, ch, "still waiting", message_kind="status", correlation_id="port-1")  # its own
        await send(engine, b, ch, "a question of mine", message_kind="request", correlation_id="port-2")
        reply = (await engine.channels.reply(b, cm.Reply(reply_to_message_id=request.message_id, body="8080"))).message
        assert (reply.to_session_id, reply.metadata.correlation_id) == (a.session_id, "port-1")
        got = await recv(engine, a, ch)
        assert [(m.body, m.metadata.message_kind) for m in got] == [("a question of mine", "request"),
                                                                   ("8080", "reply")]


NOW = datetime(2026, 1, 2, tzinfo=UTC).isoformat()


async def test_migrating_counts_what_trees_and_workspaces_wrote_before_from_the_records(tmp_path):
    path = tmp_path / "db.sqlite"
    async with Store(path) as store:
        raw = store._writer.raw
        raw.execute("PRAGMA user_version = 14")  # as if 0015 (and what follows) had not run: put the old table back
        raw.executescript("DROP TABLE approvals; DROP TABLE usage; DROP INDEX channel_messages_by_correlation; "
                          "CREATE TABLE channel_usage (session_id TEXT PRIMARY KEY, messages INTEGER NOT NULL, "
                          "bytes INTEGER NOT NULL) WITHOUT ROWID; ALTER TABLE tasks DROP COLUMN body_bytes; "
                          "ALTER TABLE agent_runs DROP COLUMN model_requests; "  # 0017
                          "ALTER TABLE agent_runs DROP COLUMN input_tokens; ALTER TABLE agent_runs DROP COLUMN output_tokens; "
                          "ALTER TABLE devices DROP COLUMN workspace_mb; ALTER TABLE devices DROP COLUMN tmp_mb; "  # 0018
                          "DROP TABLE daemons; DROP TABLE leases; DROP INDEX agent_runs_live_by_daemon; "  # 0019
                          "ALTER TABLE agent_runs DROP COLUMN daemon_id; ALTER TABLE devices DROP COLUMN daemon_id;")
        for sid, parent, ws in (("ses_a", "ses_root", "w1"), ("ses_a1", "ses_a", "w1"), ("ses_b", "ses_root", "w1")):
            raw.execute("INSERT INTO sessions (id, agent_name, token_hash, status, parent_session_id, root_session_id, "
                        "spawn_depth, auto_stop_on_parent, permissions, spawn_budget, ttl_expires_at, workspace_id, "
                        "created_by, created_at, updated_at) VALUES (?, 'x', ?, 'active', ?, 'ses_root', 1, 1, '{}', "
                        "'{}', ?, ?, ?, ?, ?)", (sid, sid, parent, NOW, ws, parent, NOW, NOW))
        raw.execute("INSERT INTO channels (id, channel, kind, display_name, purpose, allowed_message_kinds, "
                    "workspace_id, owner_session_id, last_activity_at, created_at) VALUES ('chn_1', 'family:ses_a', "
                    "'family', 'f', 'p', '[]', 'w1', 'ses_a', ?, ?)", (NOW, NOW))
        for seq, sender in enumerate(("ses_a", "ses_a1", "ses_b", "ses_root"), start=1):
            raw.execute("INSERT INTO channel_messages (channel_id, sequence, id, from_session_id, message_kind, "
                        "metadata, body, created_at) VALUES ('chn_1', ?, ?, ?, 'status', '{}', '\"12345\"', ?)",
                        (seq, f"msg_{seq}", sender, NOW))
        for i, (creator, result) in enumerate((("ses_a1", '"done"'), ("ses_b", None), ("ses_root", None))):
            raw.execute("INSERT INTO tasks (id, title, priority, payload, max_attempts, workspace_id, scope, status, "
                        "available_at, created_by, created_at, updated_at, result) VALUES (?, 'abc', 0, '{\"k\": 1}', "
                        "1, 'w1', 'workspace', 'queued', ?, ?, ?, ?, ?)", (f"tsk_{i}", NOW, creator, NOW, NOW, result))
        assert await store.migrate() == migrations()[-1][0]
        message = len('"12345"') + len("{}")
        task = len("abc") + len('{"k": 1}')
        assert await store.quotas.usage("tree:ses_a") == Usage(2, 2 * message, 1, task + len('"done"'))
        assert await store.quotas.usage("tree:ses_b") == Usage(1, message, 1, task)
        assert await store.quotas.usage("workspace:w1") == Usage(3, 3 * message, 2, 2 * task + len('"done"'))
        assert await store.quotas.usage("tree:ses_root") == Usage()
        rows = {r.id: r.body_bytes for r in await store.tasks.list(None, None, 10)}
        assert rows == {"tsk_0": len('{"k": 1}') + len('"done"'), "tsk_1": len('{"k": 1}'), "tsk_2": len('{"k": 1}')}
