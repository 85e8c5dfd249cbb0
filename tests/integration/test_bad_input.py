"""Bad run requests: each is refused with a diagnostic naming the field and saying what to do,
and leaves no run row and no container behind."""

from __future__ import annotations

import re
from typing import Any

import pytest

from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from tests.conftest import owned_containers

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

DELETED = "<deleted>"  # replaced by the id of a sandbox that was created and then deleted


def ok(**kw: Any) -> dict[str, Any]:
    """A valid request (a run in a fresh ephemeral sandbox), with `kw` changed."""
    return {"prompt": "do it", "command": "echo hi", **kw}


def without(key: str, raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != key}


# (case id, raw request, fields the diagnostic may name, pattern the message or suggested command must match:
#  the part that tells the caller what to do)
CASES: list[tuple[str, dict[str, Any], set[str], str]] = [
    ("unknown provider", ok(provider="gpt-9"), {"provider"}, r"claude-code.*custom|custom.*claude-code"),
    ("missing prompt", without("prompt", ok()), {"prompt"}, r"required"),
    ("blank prompt", ok(prompt="  \n\t "), {"prompt"}, r"blank"),
    ("unknown target", ok(target_id="sbx_0000000000000000dead"), {"target_id"},
     r"sandbox list"),
    ("deleted target", ok(sandbox_id=DELETED), {"sandbox_id", "target_id"}, r"sandbox (list|create)"),
    ("custom without command", without("command", ok(provider="custom")), {"command"}, r"needs `command`"),
    ("timeout zero", ok(timeout=0), {"timeout"}, r"between 1 and 86400"),
    ("timeout huge", ok(timeout=10**9), {"timeout"}, r"between 1 and 86400"),
    ("metadata list", ok(metadata=["a", "b"]), {"metadata"}, r"JSON object"),
    ("metadata string", ok(metadata="task=1"), {"metadata"}, r"JSON object"),
    ("oversized prompt", ok(prompt="x" * 100_001), {"prompt"}, r"at most 100000 bytes"),
    ("unknown field", ok(colour="red"), {"colour"}, r"known fields are: .*prompt"),
    ("cwd absolute outside", ok(cwd="/etc"), {"cwd"}, r"inside /workspace|inside it"),
    ("cwd climbing out", ok(cwd="../x"), {"cwd"}, r"inside /workspace|inside it"),
    ("artifact outside workspace", ok(metadata={"artifact_paths": ["/etc/passwd"]}),
     {"metadata", "metadata.artifact_paths"}, r"inside /workspace|inside it"),
    ("env bad name", ok(env={"1BAD": "x"}), {"env", "env.1BAD"},
     r"letters?|digits?|underscores?|A-Za-z"),
    ("env reserved prefix", ok(env={"AGENTDOCK_TOKEN": "x"}), {"env", "env.AGENTDOCK_TOKEN"}, r"reserved"),
    ("two targets", ok(sandbox_id="sbx_00000000000000000001", computer_id="cmp_00000000000000000002"), {"target_id", "sandbox_id", "computer_id"}, r"give one of"),
]


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("raw", "fields", "hint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_run_request_is_refused_with_a_diagnostic_and_creates_nothing(engine, home, raw, fields, hint):
    ids = {}
    if DELETED in raw.values():
        gone = await engine.devices.create(ROOT, dm.DeviceCreate())
        await engine.devices.delete(ROOT, gone.id)
        ids[DELETED] = gone.id
    raw = fill(raw, ids)
    containers_before = sorted(c.id for c in owned_containers(home))

    with pytest.raises(errors.EngineError) as caught:
        await engine.runs.create(ROOT, models.parse(rm.RunCreate, raw))

    diagnostic = caught.value.diagnostic()
    assert diagnostic.evidence.get("field") in fields, diagnostic
    advice = f"{diagnostic.message}\n{diagnostic.suggested_command or ''}"
    assert re.search(hint, advice), diagnostic
    assert "Traceback" not in diagnostic.message and "pydantic" not in diagnostic.message.lower()
    assert await engine.store.runs.list(rm.RunListQuery()) == []
    assert sorted(c.id for c in owned_containers(home)) == containers_before
    assert await engine.store.devices.list(include_ephemeral=True) == []
