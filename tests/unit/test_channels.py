"""Channels on real SQLite, the shipped fake backend and the fake clock: the family and task channels
the engine makes, ordered delivery through a per-session cursor, replies routed by the message they
answer, allowed kinds, permissions, and a waiting receiver woken by the send's commit."""

from __future__ import annotations

import anyio
import pytest

from engine.channels import models as cm
from engine import errors
from engine.tasks import models as tm
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


def engine_for(tmp_path, clock=None, **settings) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, **settings),
                  backend=FakeBackend(), harnesses=harness.get, clock=clock or FakeClock())


async def child(engine: Engine, parent=ROOT, **kw):
    spawned = await engine.sessions.spawn(parent, SpawnRequest(agent_name="worker", **kw))
    return await engine.sessions.authenticate(spawned.token)


def family(session_id: str) -> str:
    return cm.channel_id(cm.family_name(session_id))


async def send(engine: Engine, caller, channel: str, body, **meta) -> cm.Message:
    return (await engine.channels.send(caller, cm.Send(channel_id=channel, body=body,
                                                       metadata=cm.Metadata(**meta)))).message


async def recv(engine: Engine, caller, channel: str, **kw) -> list[cm.Message]:
    return (await engine.channels.recv(caller, cm.Recv(channel_id=channel, **kw))).messages


async def waiting(clock: FakeClock, tg, fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Start `fn` and return once it waits on the clock (its own wait: another task's sleep does not count)."""
    started: list[int] = []

    async def run() -> None:
        started.append(anyio.get_current_task().id)
        await fn(*args)

    tg.start_soon(run)
    while not started:
        await anyio.sleep(0)
    await clock.until_asleep(started[0])


async def test_a_spawn_makes_the_parents_family_channel_and_every_child_joins_it(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a, b = await child(engine), await child(engine)
        grandchild = await child(engine, parent=a)
        names = {c.channel for c in (await engine.channels.list(a)).channels}
        assert names == {"family:ses_root", f"family:{a.session_id}"}
        assert {c.channel for c in (await engine.channels.list(b)).channels} == {"family:ses_root"}
        assert {c.channel for c in (await engine.channels.list(grandchild)).channels} == {f"family:{a.session_id}"}
        assert (await engine.sessions.me(b)).channels[0]["id"] == family(ROOT.session_id)
        listed = (await engine.channels.list(ROOT)).channels
        assert {c.id for c in listed} == {family(ROOT.session_id), family(a.session_id)}
        assert all(c.allowed_message_kinds == list(cm.MessageKind) for c in listed)


async def test_recv_hands_each_session_every_message_once_in_order(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a, b = await child(engine), await child(engine)
        ch = family(ROOT.session_id)
        sent = [await send(engine, ROOT, ch, {"n": i}) for i in range(5)]
        assert [m.sequence for m in sent] == [1, 2, 3, 4, 5]
        first = await recv(engine, a, ch, limit=3)
        rest = await recv(engine, a, ch)
        assert [m.body["n"] for m in first + rest] == [0, 1, 2, 3, 4]
        assert await recv(engine, a, ch) == []
        assert [m.message_id for m in await recv(engine, b, ch)] == [m.message_id for m in sent]
        assert await recv(engine, ROOT, ch) == []  # its own messages are not handed back to the sender
        mine = await send(engine, a, ch, "from a")
        assert [m.message_id for m in await recv(engine, ROOT, ch)] == [mine.message_id]
        assert [m.message_id for m in await recv(engine, b, ch)] == [mine.message_id]


async def test_a_reply_goes_to_the_original_sender_with_its_correlation_id(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a, b = await child(engine), await child(engine)
        ch = family(ROOT.session_id)
        ask = await send(engine, ROOT, ch, "which files?", message_kind="request", correlation_id="q-1")
        plain = await send(engine, ROOT, ch, "hello")
        answer = (await engine.channels.reply(a, cm.Reply(reply_to_message_id=ask.message_id, body="these"))).message
        assert (answer.to_session_id, answer.reply_to_message_id) == (ROOT.session_id, ask.message_id)
        assert answer.metadata.correlation_id == "q-1" and answer.metadata.message_kind is cm.MessageKind.reply
        other = (await engine.channels.reply(a, cm.Reply(reply_to_message_id=plain.message_id, body="hi"))).message
        assert other.metadata.correlation_id == plain.message_id  # none set: the message's own id
        assert [m.message_id for m in await recv(engine, ROOT, ch)] == [answer.message_id, other.message_id]
        assert [m.message_id for m in await recv(engine, b, ch)] == [ask.message_id, plain.message_id]
        with pytest.raises(errors.InvalidInput, match="metadata.correlation_id"):
            await engine.channels.reply(b, cm.Reply(reply_to_message_id=ask.message_id, body="x",
                                                    metadata=cm.Metadata(message_kind="reply",
                                                                         correlation_id="q-2")))
        with pytest.raises(errors.NotFound):  # a reply addressed to the root is not b's to answer
            await engine.channels.reply(b, cm.Reply(reply_to_message_id=answer.message_id, body="x"))
        with pytest.raises(errors.InvalidInput, match="your own"):
            await engine.channels.reply(ROOT, cm.Reply(reply_to_message_id=ask.message_id, body="x"))


async def test_a_task_channel_is_made_at_claim_and_refuses_kinds_it_does_not_carry(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        worker = await child(engine)
        task = await engine.tasks.create(ROOT, tm.TaskCreate(title="build"))
        claim = (await engine.tasks.claim_next(worker, tm.ClaimNext())).claim
        ch = claim.run.coordination_channel_id
        assert ch == cm.channel_id(cm.task_name(task.id))
        channel = next(c for c in (await engine.channels.list(worker)).channels if c.id == ch)
        assert channel.task_id == task.id and cm.MessageKind.chat not in channel.allowed_message_kinds
        await send(engine, worker, ch, {"done": 1}, message_kind="progress", task_id=task.id)
        with pytest.raises(errors.InvalidInput, match="metadata.message_kind"):
            await send(engine, worker, ch, "hi", message_kind="chat")
        with pytest.raises(errors.InvalidInput, match="coordination_channel_id"):
            await send(engine, worker, ch, "x", coordination_channel_id=family(ROOT.session_id))
        got = await recv(engine, ROOT, ch)
        assert [(m.metadata.message_kind, m.metadata.task_id) for m in got] == [("progress", task.id)]
        assert len(got) == 1 and got[0].sequence == 1  # the refused sends wrote nothing


async def test_channels_are_closed_to_non_members_and_to_sessions_whose_permissions_do_not_name_them(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await child(engine)
        outsider = await child(engine, parent=a)  # in a's family, not the root's
        muted = await child(engine, permissions=PermissionPolicy(tools=["channels"], network_channels=[]))
        named = await child(engine, permissions=PermissionPolicy(tools=["channels"],
                                                                 network_channels=["family:ses_root"]))
        ch = family(ROOT.session_id)
        with pytest.raises(errors.NotFound):
            await send(engine, outsider, ch, "x")
        with pytest.raises(errors.PermissionDenied, match="network_channels"):
            await send(engine, muted, ch, "x")
        assert (await engine.channels.list(muted)).channels == []
        await send(engine, named, ch, "allowed by name")
        no_tools = await child(engine, permissions=PermissionPolicy(tools=["tasks"]))
        with pytest.raises(errors.PermissionDenied, match="channel_send"):
            await send(engine, no_tools, ch, "x")
        with pytest.raises(errors.NotFound):
            await recv(engine, a, cm.channel_id("family:ses_nonexistent0000000000"))


async def test_a_waiting_receiver_wakes_on_the_sends_commit_not_on_a_tick(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        got: list[cm.Messages] = []

        async def wait() -> None:
            got.append(await engine.channels.recv(a, cm.Recv(channel_id=ch, wait=True)))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await waiting(clock, tg, wait)  # it waits; the clock never moves
                sent = await send(engine, ROOT, ch, "now")
        assert got[0].waited and [m.message_id for m in got[0].messages] == [sent.message_id]


async def test_a_wait_ends_empty_at_its_bound_and_a_wait_beyond_the_servers_bound_is_refused(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        with pytest.raises(errors.InvalidInput, match="wait_seconds"):
            await recv(engine, a, ch, wait_seconds=engine.settings.mcp_max_wait_seconds + 1)
        got: list[cm.Messages] = []

        async def wait() -> None:
            got.append(await engine.channels.recv(a, cm.Recv(channel_id=ch, wait_seconds=5)))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await waiting(clock, tg, wait)
                clock.advance(5)
        assert got[0].messages == [] and got[0].waited


async def test_bad_messages_are_refused_naming_the_field_and_write_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await child(engine)
        ch = family(ROOT.session_id)
        for data, field in (({"channel_id": ch, "body": "x" * (cm.MAX_BODY_BYTES + 1)}, "body"),
                            ({"channel_id": "chn_nothex", "body": 1}, "channel"),
                            ({"channel_id": ch, "body": 1, "metadata": {"message_kind": "shout"}}, "message_kind"),
                            ({"channel_id": ch, "body": 1, "metadata": {"task_id": "../x"}}, "task_id"),
                            ({"channel_id": ch, "body": 1, "extra": 1}, "extra")):
            with pytest.raises(errors.InvalidInput, match=field):
                await engine.channels.send(ROOT, cm.models.parse(cm.Send, data))
        assert (await engine.channels.list(ROOT)).channels[0].id == ch
        assert (await engine.store.channels.channel(ch)).last_sequence == 0


async def test_the_context_shows_the_unread_inbox_the_coordination_channel_and_the_held_task(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await child(engine)
        await send(engine, ROOT, family(ROOT.session_id), {"todo": "build"}, message_kind="request")
        task = await engine.tasks.create(ROOT, tm.TaskCreate(title="build"))
        claim = (await engine.tasks.claim_next(a, tm.ClaimNext())).claim
        ctx = await engine.context.context(a)
        assert ctx.coordination_channel.available
        assert ctx.coordination_channel.channel["id"] == family(ROOT.session_id)
        assert ctx.inbox_summary.unread_count == 1 and ctx.inbox_summary.items[0].preview == '{"todo": "build"}'
        assert ctx.task.available and ctx.task.bundle["task"]["id"] == task.id
        assert ctx.task.bundle["current_run"]["coordination_channel_id"] == claim.run.coordination_channel_id
        await recv(engine, a, family(ROOT.session_id))
        assert (await engine.context.context(a)).inbox_summary.unread_count == 0
        root_ctx = await engine.context.context(ROOT)
        assert not root_ctx.task.available


async def test_bodies_and_ext_nested_too_deep_or_too_large_are_refused(tmp_path):
    deep: object = 1
    for _ in range(cm.MAX_DEPTH + 1):
        deep = [deep]
    for data, field in (({"channel_id": cm.channel_id("x"), "body": deep}, "body"),
                        ({"channel_id": cm.channel_id("x"), "body": 1, "metadata": {"ext": {"k": "v" * 9000}}}, "ext"),
                        ({"channel_id": cm.channel_id("x"), "body": 1, "metadata": {"ext": {"k": deep}}}, "ext")):
        with pytest.raises(errors.InvalidInput, match=field):
            cm.models.parse(cm.Send, data)


async def test_a_send_repeated_with_its_idempotency_key_returns_the_first_message_and_stores_no_copy(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        first = await engine.channels.send(ROOT, cm.Send(channel_id=ch, body={"n": 1}, idempotency_key="k-1"))
        again = await engine.channels.send(ROOT, cm.Send(channel_id=ch, body={"n": 1}, idempotency_key="k-1"))
        with pytest.raises(errors.Conflict, match="idempotency_key"):
            await engine.channels.send(ROOT, cm.Send(channel_id=ch, body={"n": 2}, idempotency_key="k-1"))
        theirs = await engine.channels.send(a, cm.Send(channel_id=ch, body={"n": 1}, idempotency_key="k-1"))
        assert again.message == first.message and theirs.message.message_id != first.message.message_id
        assert [m.message_id for m in await recv(engine, a, ch)] == [first.message.message_id]
        assert (await engine.store.channels.channel(ch)).last_sequence == 2  # the root's one message and a's


async def test_a_session_stopped_while_it_waits_neither_receives_nor_claims(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        outcomes: list[BaseException] = []

        async def wait(call) -> None:  # type: ignore[no-untyped-def]
            try:
                await call
            except errors.Unauthenticated as exc:
                outcomes.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await waiting(clock, tg, wait, engine.channels.recv(a, cm.Recv(channel_id=ch, wait=True)))
                await waiting(clock, tg, wait, engine.tasks.claim_next(a, tm.ClaimNext(wait_seconds=30)))
                await engine.sessions.stop(ROOT, a.session_id)
                await send(engine, ROOT, ch, "too late")
                await engine.tasks.create(ROOT, tm.TaskCreate(title="too late"))
        assert len(outcomes) == 2
        assert [t.status for t in (await engine.tasks.list(ROOT, tm.TaskListQuery())).data] == ["queued"]


async def test_a_receiver_that_lost_an_answer_reads_it_again_after_its_last_sequence_and_its_cursor_stays(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        sent = [await send(engine, ROOT, ch, i) for i in range(4)]
        first = await recv(engine, a, ch, limit=2)
        lost = await recv(engine, a, ch)  # say this answer never reached the caller
        again = await recv(engine, a, ch, after_sequence=first[-1].sequence)
        assert [m.message_id for m in lost] == [m.message_id for m in again] == [m.message_id for m in sent[2:]]
        assert await recv(engine, a, ch) == []  # the cursor did not move back
        later = await send(engine, ROOT, ch, "later")
        assert [m.message_id for m in await recv(engine, a, ch, after_sequence=0, limit=1)] == [sent[0].message_id]
        assert [m.message_id for m in await recv(engine, a, ch)] == [later.message_id]


async def test_a_session_that_floods_its_channels_is_stopped_at_its_quota_and_the_refused_send_writes_nothing(tmp_path):
    async with engine_for(tmp_path, channel_quota_messages=3, channel_quota_bytes=70_000).running() as engine:
        a = await child(engine)
        ch = family(ROOT.session_id)
        for i in range(3):
            await send(engine, a, ch, i)
        with pytest.raises(errors.LimitExceeded, match="channel quota"):
            await send(engine, a, ch, "one too many")
        b = await child(engine)
        await send(engine, b, ch, "x" * 60_000)
        with pytest.raises(errors.LimitExceeded, match="channel quota"):
            await send(engine, b, ch, "y" * 20_000)
        for i in range(5):
            await send(engine, ROOT, ch, i)  # the local user has no quota
        got = await recv(engine, ROOT, ch, limit=500)
        assert [m.body for m in got] == [0, 1, 2, "x" * 60_000]
