"""Input validation: every bad field is named, with what to do."""

from __future__ import annotations

import pytest

from engine import errors, models
from engine.runs import models as rm


def parse(**raw):
    return models.parse(rm.RunCreate, {"prompt": "p", "command": "true", **raw})


@pytest.mark.parametrize(("raw", "field"), [
    ({"provider": "gpt"}, "provider"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 100_001}, "prompt"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": 10**9}, "timeout"),
    ({"metadata": [1]}, "metadata"),
    ({"metadata": "x"}, "metadata"),
    ({"metadata": {"artifact_paths": ["/etc/passwd"]}}, "metadata"),
    ({"cwd": "/etc"}, "cwd"),
    ({"cwd": "../x"}, "cwd"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"AGENTDOCK_X": "x"}}, "env"),
    ({"bogus": 1}, "bogus"),
    ({"sandbox_id": "sbx_00000000000000000001", "computer_id": "cmp_00000000000000000002"}, "target_id"),
    ({"provider": "custom", "command": None}, "command"),
])
def test_bad_run_input_names_the_field(raw, field):
    with pytest.raises(errors.InvalidInput) as info:
        parse(**raw)
    diag = info.value.diagnostic()
    assert diag.evidence["field"] == field
    assert diag.code == "invalid_input" and diag.message


def test_unknown_field_lists_the_known_ones():
    with pytest.raises(errors.InvalidInput, match="known fields are: .*prompt"):
        parse(promt="typo")


def test_provider_defaults_to_custom_with_a_command_and_claude_code_without():
    assert parse().provider is models.Provider.custom
    assert models.parse(rm.RunCreate, {"prompt": "p"}).provider is models.Provider.claude_code


def test_cwd_is_resolved_inside_the_workspace():
    assert parse(cwd="sub/dir").cwd == "/workspace/sub/dir"
    assert parse(cwd="/workspace/a/../b").cwd == "/workspace/b"


def test_sandbox_and_computer_ids_are_shortcuts_for_the_target():
    sbx, cmp = "sbx_00000000000000000001", "cmp_00000000000000000001"
    assert parse(sandbox_id=sbx).target() == (models.TargetKind.sandbox, sbx)
    assert parse(computer_id=cmp).target() == (models.TargetKind.computer, cmp)
    assert parse().target() == (None, None)


def test_the_idempotency_fingerprint_ignores_the_key_but_not_the_body():
    assert parse(idempotency_key="a").fingerprint() == parse(idempotency_key="b").fingerprint()
    assert parse(timeout=5).fingerprint() != parse(timeout=6).fingerprint()


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(errors.InvalidInput, match="JSON object"):
        models.parse(rm.RunCreate, [1, 2])
