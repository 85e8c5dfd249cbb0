"""Bad input that used to get through and create things: every field has a bound and a charset."""

from __future__ import annotations

from typing import Any

import pytest

from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm

SBX = "sbx_" + "0" * 20


def run(**raw: Any) -> rm.RunCreate:
    return models.parse(rm.RunCreate, {"prompt": "p", "command": "true", **raw})


def device(**raw: Any) -> dm.DeviceCreate:
    return models.parse(dm.DeviceCreate, raw)


@pytest.mark.parametrize(("make", "raw", "field", "hint"), [
    (run, {"env": {"X\n": "1"}}, "env", "valid variable name"),
    (run, {"env": {"X": "a\x00b"}}, "env", "NUL"),
    (run, {"env": {"X": "x" * 200_000}}, "env", "at most 32768 bytes"),
    (run, {"env": {f"V{i}": "x" * 30_000 for i in range(5)}}, "env", "together"),
    (run, {"env": {"PATH": "/nonexistent"}}, "env", "reserved"),
    (run, {"env": {"LD_PRELOAD": "/tmp/x.so"}}, "env", "reserved"),
    (run, {"model": "gpt\x00"}, "model", "valid model name"),
    (run, {"model": "a b"}, "model", "valid model name"),
    (run, {"idempotency_key": "key\nX-Injected: 1"}, "idempotency_key", "printable ASCII"),
    (run, {"metadata": {"artifact_paths": ["/workspace/a\nb"]}}, "metadata", "control characters"),
    (run, {"metadata": {"x": float("nan")}}, "metadata", "plain JSON"),
    (device, {"name": "a\x00b"}, "name", "control characters"),
    (device, {"name": "line\nbreak"}, "name", "control characters"),
    (device, {"metadata": {"blob": "x" * 10_000_000}}, "metadata", "at most 65536 bytes"),
    (device, {"metadata": "not an object"}, "metadata", "JSON object"),
    (device, {"env": {"X": "x" * 10_000_000}}, "env", "at most 32768 bytes"),
    (device, {"env": {"PATH": "/nonexistent"}}, "env", "reserved"),
    (device, {"image": "../../etc"}, "image", "valid image reference"),
    (device, {"image": "busybox\x00"}, "image", "valid image reference"),
])
def test_bad_input_is_refused_naming_the_field_and_what_is_wrong(make, raw, field, hint):
    with pytest.raises(errors.InvalidInput) as info:
        make(**raw)
    diag = info.value.diagnostic()
    assert diag.evidence["field"] == field
    assert hint in diag.message, diag.message


def test_env_within_its_bounds_and_a_home_override_are_accepted():
    env = {"HOME": "/workspace", "API_URL": "x" * 32_768, "B": "ü" * 100}
    assert run(env=env).env == env


@pytest.mark.parametrize("spelling", [
    {"sandbox_id": SBX},
    {"target_id": SBX},
    {"target_id": SBX, "target_kind": "sandbox"},
])
def test_idempotency_fingerprint_is_the_same_for_every_spelling_of_one_target(spelling):
    assert run(**spelling).fingerprint() == run(sandbox_id=SBX).fingerprint()


def test_idempotency_fingerprint_still_tells_targets_and_empty_env_apart():
    assert run(sandbox_id=SBX).fingerprint() != run(computer_id="cmp_" + "0" * 20).fingerprint()
    assert run(sandbox_id=SBX).fingerprint() != run().fingerprint()
    assert run(env={}).fingerprint() == run().fingerprint()
    assert run(env={"A": "1"}).fingerprint() != run().fingerprint()
