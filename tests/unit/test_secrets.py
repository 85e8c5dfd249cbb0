"""Secrets on disk (names, values, owner-only files) and the masker that hides their values in output."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import errors, models
from engine.runs import models as rm
from engine.secrets import MASK, Masker, SecretStore

VALUE = "sk-ant-api03-abcdefghijklmnop"


def test_a_secret_is_one_owner_only_file_in_an_owner_only_directory(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    info = store.set("ANTHROPIC_API_KEY", (VALUE + "\n").encode())
    assert (info.name, info.size) == ("ANTHROPIC_API_KEY", len(VALUE))  # one trailing newline dropped
    path = tmp_path / "secrets" / "ANTHROPIC_API_KEY"
    assert path.read_text() == VALUE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.environment(["ANTHROPIC_API_KEY"]) == {"ANTHROPIC_API_KEY": VALUE}
    assert [s.name for s in store.list().data] == ["ANTHROPIC_API_KEY"]
    assert VALUE not in store.list().model_dump_json()
    store.remove("ANTHROPIC_API_KEY")
    assert store.list().data == [] and not path.exists()


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "../x", "x/y", "PATH", "HOME", "AGENTDOCK_KEY",
                                  "LD_PRELOAD", "A" * 129, "É"])
def test_a_bad_secret_name_is_refused_naming_the_field_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    store = SecretStore(tmp_path / "secrets")
    with pytest.raises(errors.InvalidInput) as caught:
        store.set(name, VALUE.encode())
    assert caught.value.field == "name"
    assert not (tmp_path / "secrets").exists()


@pytest.mark.parametrize(("value", "why"), [(b"short", "at least"), (b"x" * 40_000, "at most"),
                                            (b"abc\x00defghij", "NUL"), (b"\xff\xfe" * 8, "UTF-8")])
def test_a_bad_value_is_refused_without_quoting_it(tmp_path: Path, value: bytes, why: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        SecretStore(tmp_path / "s").set("KEY", value)
    assert caught.value.field == "value" and why in caught.value.message
    assert value.decode(errors="replace")[:8] not in caught.value.message


def test_an_unknown_secret_is_named_with_the_command_that_sets_it(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        SecretStore(tmp_path / "s").require(["KNOWN_NOT"])
    assert caught.value.field == "secrets.0"
    assert caught.value.suggested_command == "agentdock secrets set KNOWN_NOT"


def test_run_requests_check_secret_names_by_index_and_refuse_duplicates() -> None:
    assert models.parse(rm.RunCreate, {"prompt": "p", "secrets": ["A_KEY"]}).secrets == ["A_KEY"]
    for bad, field in (({"secrets": ["ok_KEY", "bad name"]}, "secrets.1"), ({"secrets": ["K1", "K1"]}, "secrets"),
                       ({"secrets": "K1"}, "secrets"), ({"secrets": ["K"] * 40}, "secrets")):
        with pytest.raises(errors.InvalidInput) as caught:
            models.parse(rm.RunCreate, {"prompt": "p", **bad})
        assert caught.value.field == field, (bad, caught.value.message)


def test_the_masker_hides_values_whole_json_escaped_and_line_by_line() -> None:
    multi = 'line-one-credential\n{"token": "a\\"quoted-secret"}'
    m = Masker([VALUE, multi])
    assert m.line(f"key={VALUE}!") == f"key={MASK}!"
    assert VALUE not in m.line('{"text": "' + VALUE + '"}')
    assert "line-one-credential" not in m.line("the first line-one-credential appears")
    assert m.value({"a": [f"x{VALUE}"], "b": 1}) == {"a": [f"x{MASK}"], "b": 1}
    assert not Masker([])


@given(st.lists(st.integers(min_value=0, max_value=80), max_size=6), st.text(max_size=30), st.text(max_size=30))
def test_a_value_split_across_chunks_anywhere_is_still_masked(cuts: list[int], before: str, after: str) -> None:
    text = before + VALUE + after + VALUE
    m = Masker([VALUE])
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    out = "".join(m.stream("stdout", p) for p in pieces) + m.flush("stdout")
    assert VALUE not in out
    assert out == text.replace(VALUE, MASK)


def test_a_secret_also_given_in_env_is_refused_naming_secrets() -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        models.parse(rm.RunCreate, {"prompt": "p", "secrets": ["A_KEY"], "env": {"A_KEY": "x"}})
    assert caught.value.field == "secrets"
