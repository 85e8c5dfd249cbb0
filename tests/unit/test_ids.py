"""Ids are checked by shape wherever one comes in: a malformed id is an `invalid_input` naming its field."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from engine import errors, ids, models
from engine.runs import models as rm
from engine.settings import Settings
from mcp_server import areas, mcp_app
from mcp_server.client import DaemonClient, DaemonUnavailable

RUN = "run_0123456789abcdef0123"
SANDBOX = "sbx_0123456789abcdef0123"
COMPUTER = "cmp_0123456789abcdef0123"
MALFORMED = ["", " ", "..", "../sandboxes?", "run_../x", "#", "%2e%2e", "\x00", "r" * 1_000_000,
             RUN.upper(), RUN + "\n", " " + RUN, RUN[:-1], RUN + "0", "run-0123456789abcdef0123",
             "run_0123456789abcdef012g", "run_０１２３456789abcdef0123"]

FIELDS = [  # (model, field, an id of the right shape, other required fields)
    (mcp_app.RunRef, "run_id", RUN, {}),
    (mcp_app.EventsInput, "run_id", RUN, {}),
    (mcp_app.ArtifactsInput, "run_id", RUN, {}),
    (mcp_app.SandboxRef, "sandbox_id", SANDBOX, {}),
    (rm.RunListQuery, "cursor", RUN, {}),
    (rm.RunListQuery, "target_id", COMPUTER, {}),
    (rm.RunCreate, "target_id", SANDBOX, {"prompt": "p", "command": "true"}),
    (rm.RunCreate, "sandbox_id", SANDBOX, {"prompt": "p", "command": "true"}),
    (rm.RunCreate, "computer_id", COMPUTER, {"prompt": "p", "command": "true"}),
]


@pytest.mark.parametrize(("model", "field", "good", "rest"), FIELDS, ids=[f"{m.__name__}.{f}" for m, f, _, _ in FIELDS])
def test_every_id_field_refuses_a_malformed_id_naming_the_field_without_echoing_it(model, field, good, rest):
    assert getattr(models.parse(model, {**rest, field: good}), field) == good
    for bad in MALFORMED:
        with pytest.raises(errors.InvalidInput) as info:
            models.parse(model, {**rest, field: bad})
        diag = info.value.diagnostic()
        assert (diag.code, diag.evidence["field"]) == ("invalid_input", field), repr(bad[:40])
        assert "20 lowercase hex digits" in diag.message and len(diag.message) < 300


def test_a_device_id_may_be_a_sandbox_or_a_computer_but_the_shortcuts_take_only_their_kind():
    assert models.parse(mcp_app.SandboxRef, {"sandbox_id": COMPUTER}).sandbox_id == COMPUTER
    assert models.parse(rm.RunCreate, {"prompt": "p", "target_id": COMPUTER}).target_id == COMPUTER
    with pytest.raises(errors.InvalidInput, match="sandbox_id: must be a sandbox id"):
        models.parse(rm.RunCreate, {"prompt": "p", "sandbox_id": COMPUTER})
    with pytest.raises(errors.InvalidInput, match="computer_id: must be a computer id"):
        models.parse(rm.RunCreate, {"prompt": "p", "computer_id": SANDBOX})
    with pytest.raises(errors.InvalidInput, match="run_id: must be a run id"):
        models.parse(mcp_app.RunRef, {"run_id": SANDBOX})


def test_an_id_that_is_not_a_string_is_refused_as_such():
    with pytest.raises(errors.InvalidInput, match="run_id: Input should be a valid string"):
        models.parse(mcp_app.RunRef, {"run_id": 7})


def test_tool_schemas_publish_the_id_pattern_so_a_caller_can_see_the_shape():
    run_ref = mcp_app.RunRef.model_json_schema()["properties"]["run_id"]
    target = rm.RunCreate.model_json_schema()["properties"]["target_id"]["anyOf"][0]
    assert run_ref["pattern"] == ids.RUN.pattern == "^run_[0-9a-f]{20}$"
    assert target["pattern"] == ids.DEVICE.pattern


@pytest.mark.parametrize("call", ["GET", "CANCEL", "EVENTS", "ARTIFACTS", "get_device", "delete_device"])
def test_the_daemon_client_refuses_a_malformed_id_before_sending_anything(call, tmp_path: Path):
    # No daemon listens here: a request that were sent would fail as daemon_unavailable.
    settings = Settings(home=tmp_path)
    good = SANDBOX if call.endswith("device") else RUN
    op = {"get_device": areas.devices.GET, "delete_device": areas.devices.DELETE}.get(call) or getattr(areas.runs, call)
    field = "sandbox_id" if call.endswith("device") else "run_id"

    async def attempt(value: str) -> errors.EngineError:
        async with DaemonClient(settings, timeout=5) as client:
            with pytest.raises(errors.EngineError) as info:
                await client.call(op, **{field: value})
        return info.value

    refused = anyio.run(attempt, "../sandboxes?")
    sent = anyio.run(attempt, good)

    assert isinstance(refused, errors.InvalidInput)
    assert refused.field == ("sandbox_id" if call.endswith("device") else "run_id")
    assert isinstance(sent, DaemonUnavailable)
