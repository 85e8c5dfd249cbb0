"""Masking at the record boundary (issue 16), on real SQLite and the shipped fake backend: what a
session holding a secret writes into a record is masked for it (its value and common encodings)
before it is stored, an id holding one is refused, and which sessions hold which secrets."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote

import pytest

from engine.channels import models as cm
from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.groups import models as gm
from engine.profiles import models as pm
from engine.tasks import models as tm
from engine.callers import ROOT
from engine.lineage import PermissionPolicy
from engine.secrets import MASK, Masker, forms
from engine.sessions.models import SpawnRequest
from tests.unit.test_channels import child, engine_for, family, recv

pytestmark = pytest.mark.anyio

VALUE = "sk-live-0a1b2c3d4e5f60718293a4b5"
NAME = "SERVICE_KEY"
EVERYTHING = PermissionPolicy(tools=["agent", "channels", "tasks", "groups", "devices", "runs", "profiles"],
                              network_channels=["*"], sandbox_profiles=["*"])


def disguises(value: str) -> dict[str, str]:
    raw = value.encode()
    return {"whole": f"my key is {value}!", "base64": base64.b64encode(b"Authorization: " + raw).decode(),
            "urlsafe": base64.urlsafe_b64encode(b"k=" + raw + b";").decode(), "hex": raw.hex(),
            "HEX": "0x" + raw.hex().upper(), "reversed": value[::-1], "upper": value.upper(),
            "lower": value.lower(), "mixed": value.swapcase(), "url": "a?k=" + quote(value, safe=""),
            "every byte": "".join(f"%{b:02X}" for b in raw)}


def test_the_masker_hides_each_common_encoding_and_keys_and_numbers() -> None:
    m = Masker([VALUE])
    for name, text in disguises(VALUE).items():
        assert m.finds(text), name
        assert not any(f.lower() in m.line(text).lower() for f in forms(VALUE)), (name, m.line(text))
    assert m.value({VALUE: 1, f"x{VALUE}": [VALUE[::-1]]}) == {MASK: 1, f"x{MASK}": [MASK]}
    assert m.value({VALUE: 1, VALUE.upper(): 2}) == {MASK: 1, f"{MASK}#2": 2}  # keys that become equal stay apart
    assert m.line(f"{VALUE}{VALUE}|İ{VALUE[::-1]}") == f"{MASK}{MASK}|İ{MASK}"  # each whole, positions kept
    number = Masker(["31415926535897"])
    assert number.value({"n": 31415926535897, "m": 7, "b": True}) == {"n": MASK, "m": 7, "b": True}
    assert not Masker(["short"])  # below the minimum, nothing is looked for
    assert m.line("an ordinary line of text") == "an ordinary line of text"


async def keyed(engine) -> str:
    engine.secrets.set(NAME, VALUE.encode())
    return (await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
        "name": "keyed", "runtime": "custom", "secrets": [NAME]}))).id


def on_disk(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.glob("agentdock.db*"))


async def test_every_record_a_session_holding_a_secret_writes_is_masked_before_it_is_stored(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        profile = await keyed(engine)
        holder = await child(engine, permissions=EVERYTHING, agent_runtime_profile_id=profile)
        said = disguises(VALUE)
        ch = family(ROOT.session_id)
        msg = (await engine.channels.send(holder, cm.Send(channel_id=ch, body={"said": said, VALUE: 1},
                                                          metadata=cm.Metadata(ext={"k": said["hex"]})))).message
        task = await engine.tasks.create(holder, tm.TaskCreate(title=said["whole"], payload={"said": said}))
        claim = (await engine.tasks.claim_next(holder, tm.ClaimNext())).claim
        done = await engine.tasks.complete(holder, tm.Complete(task_run_id=claim.run.id, claim_token=claim.claim_token,
                                                               result={"r": said["base64"]}))
        await engine.tasks.create(holder, tm.TaskCreate(title="second"))
        second = (await engine.tasks.claim_next(holder, tm.ClaimNext())).claim
        await engine.tasks.fail(holder, tm.Fail(task_run_id=second.run.id, claim_token=second.claim_token,
                                                error=said["reversed"]))
        group = await engine.groups.create(holder, gm.GroupCreate(name=said["upper"], metadata={"m": said["url"]}))
        device = await engine.devices.create(holder, dm.DeviceCreate(name=said["lower"], metadata={"d": VALUE},
                                                                         env={"TOKEN": VALUE}))
        spawned = await engine.sessions.spawn(holder, SpawnRequest(agent_name="helper", prompt=said["whole"],
                                                                   command=f"echo {VALUE}", target_id=device.id))
        run = await engine.runs.create(holder, rm.RunCreate(prompt=said["HEX"], command="true",
                                                                 metadata={"m": said["urlsafe"]}, env={"K": VALUE}))
        made = await engine.profiles.create(holder, models.parse(pm.ProfileCreate, {
            "name": "mine", "runtime": "custom", "workspace_id": "default", "description": said["whole"],
            "metadata": {"k": VALUE}}))

        assert msg.body == {"said": {k: Masker([VALUE]).line(v) for k, v in said.items()}, MASK: 1}
        assert msg.body["said"]["whole"] == f"my key is {MASK}!" and msg.metadata.ext["k"] == MASK
        assert task.title == f"my key is {MASK}!" and MASK in done.task.result["r"]
        assert (await engine.tasks.get(ROOT, second.task.id)).runs[0].error == MASK
        assert (group.name, group.metadata) == (MASK, {"m": "a?k=" + MASK})
        assert (device.name, device.metadata) == (MASK, {"d": MASK})
        assert (await engine.store.devices.device(device.id)).env == {"TOKEN": MASK}
        assert (spawned.run.prompt, spawned.run.command) == (f"my key is {MASK}!", f"echo {MASK}")
        assert (run.prompt, run.metadata, run.env_keys) == ("0x" + MASK, {"m": Masker([VALUE]).line(said["urlsafe"])},
                                                            ["K"])
        assert (made.description, made.metadata) == (f"my key is {MASK}!", {"k": MASK})
    stored = on_disk(tmp_path)
    for form in {f for form in forms(VALUE) for f in (form, form.upper(), form.lower(), form.swapcase())}:
        assert form.encode() not in stored, form


async def test_an_id_holding_a_secret_is_refused_naming_it_and_nothing_is_written(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        profile = await keyed(engine)
        holder = await child(engine, permissions=EVERYTHING, agent_runtime_profile_id=profile)
        ch = family(ROOT.session_id)
        refusals = {
            "metadata.correlation_id": engine.channels.send(holder, cm.Send(
                channel_id=ch, body=1, metadata=cm.Metadata(correlation_id=VALUE))),
            "idempotency_key": engine.channels.send(holder, cm.Send(channel_id=ch, body=1, idempotency_key=VALUE[::-1])),
            "identifier": engine.tasks.create(holder, tm.TaskCreate(title="t", identifier=VALUE)),
            "project_id": engine.groups.create(holder, gm.GroupCreate(project_id=VALUE.upper())),
            "spawn_role": engine.sessions.spawn(holder, SpawnRequest(agent_name="x", spawn_role=VALUE)),
            "permissions.skills.1": engine.sessions.spawn(holder, SpawnRequest(
                agent_name="x", permissions=PermissionPolicy(skills=["ok", f"s/{VALUE}"]))),
            "cwd": engine.runs.create(holder, rm.RunCreate(prompt="p", command="true", cwd=f"/workspace/{VALUE}")),
            "env": engine.runs.create(holder, rm.RunCreate(prompt="p", command="true",
                                                                env={f"K_{VALUE.encode().hex()}": "x"})),
        }
        for field, call in refusals.items():
            with pytest.raises(errors.InvalidInput) as caught:
                await call
            assert caught.value.field == field
            assert VALUE not in caught.value.message and VALUE.upper() not in caught.value.message
        assert (await engine.store.channels.channel(ch)).last_sequence == 0
        assert (await engine.tasks.list(ROOT, tm.TaskListQuery())).data == []
        assert [s.id for s in (await engine.sessions.list(ROOT)).data] == ["ses_root", holder.session_id]


async def test_a_tree_holds_the_secrets_of_its_runs_profiles_and_devices_and_only_those(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        profile = await keyed(engine)
        engine.secrets.set("OTHER_KEY", b"another-value-of-a-key-1234")
        ch = family(ROOT.session_id)

        async def body_sent_by(caller, channel: str = ch) -> object:
            msg = await engine.channels.send(caller, cm.Send(channel_id=channel,
                                                             body=f"{VALUE} and another-value-of-a-key-1234"))
            return msg.message.body

        holder = await child(engine, permissions=EVERYTHING, agent_runtime_profile_id=profile)
        below = await child(engine, holder, permissions=EVERYTHING)  # no profile, no secret of its own: its tree's
        stranger = await child(engine, permissions=EVERYTHING)  # another tree, holding nothing
        assert await body_sent_by(holder) == f"{MASK} and another-value-of-a-key-1234"
        assert await body_sent_by(below, family(holder.session_id)) == f"{MASK} and another-value-of-a-key-1234"
        assert await body_sent_by(stranger) == f"{VALUE} and another-value-of-a-key-1234"  # the rule's edge
        assert await body_sent_by(ROOT) == f"{MASK} and {MASK}"  # the local user holds every secret

        runner = await child(engine, permissions=PermissionPolicy(tools=["channels", "runs", "secrets"],
                                                                  network_channels=["*"]))
        await engine.runs.create(runner, rm.RunCreate(prompt="p", command="true", secrets=["OTHER_KEY"]))
        assert await body_sent_by(runner) == f"{VALUE} and {MASK}"  # a run of its own named OTHER_KEY

        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="true", secrets=[NAME],
                                                        target_id=device.id))
        guest = await child(engine, permissions=EVERYTHING, prompt="p", command="true", target_id=device.id)
        assert await body_sent_by(guest) == f"{MASK} and another-value-of-a-key-1234"  # a run on that device did
        engine.secrets.remove(NAME)
        assert await body_sent_by(holder) == f"{VALUE} and another-value-of-a-key-1234"  # a removed one is gone
        got = await recv(engine, ROOT, ch, limit=500)
        assert len(got) == 5  # every send on it but the local user's own, none refused
