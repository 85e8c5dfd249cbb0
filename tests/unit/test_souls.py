"""Soul documents: every problem is a diagnostic at the right line and column of the original file
(table-driven, from small broken documents), with the right field and severity, and nothing else."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.souls import models as souls
from engine.souls import parser as soul_parser
from engine.souls.models import Limits, Severity, Status

E, W, I = Severity.error, Severity.warning, Severity.info

CASES = [
    # (case, document, [(code, line, column, field, severity)])
    ("a valid soul", "---\nrole: reviewer\ntone: [calm]\n---\n# Body\n", []),
    ("no frontmatter", "Just Markdown.\n", [("frontmatter_missing", 1, 1, None, E)]),
    ("frontmatter never closed", "---\nrole: r\n", [("frontmatter_unclosed", 1, 1, None, E)]),
    ("unclosed flow list", "---\nrole: r\ntone: [a, b\n---\n", [("yaml_error", 3, 12, None, E)]),
    ("indented key", "---\nrole: r\n  bad: x\n---\n", [("yaml_error", 3, 6, None, E)]),
    ("tab indentation", "---\nrole: r\n\ttone: x\n---\n", [("yaml_error", 3, 1, None, E)]),
    ("unterminated quote", '---\nrole: "r\n---\n', [("yaml_error", 2, 9, None, E)]),
    ("misspelled key", "---\nrole: r\ntonne: [a]\n---\n", [("unknown_key", 3, 1, "tonne", E)]),
    ("Claude Code key", "---\nrole: r\nmodel: sonnet\n---\n", [("unknown_key", 3, 1, "model", E)]),
    ("role is a number", "---\nrole: 42\n---\n", [("wrong_type", 2, 7, "role", E)]),
    ("role is a list", "---\nrole:\n  - a\n---\n", [("wrong_type", 3, 3, "role", E)]),
    ("role is blank", "---\nrole: ''\n---\n", [("empty_value", 2, 7, "role", E)]),
    ("role is empty", "---\nrole:\n---\n", [("empty_value", 2, 6, "role", E)]),
    ("a list item is a mapping", "---\nrole: r\ntags:\n  - ok\n  - {x: 1}\n---\n",
     [("wrong_type", 5, 5, "tags[1]", E)]),
    ("a list item is a number", "---\nrole: r\nprinciples: [a, 7]\n---\n",
     [("wrong_type", 3, 17, "principles[1]", E)]),
    ("a list is a mapping", "---\nrole: r\ntone: {a: 1}\n---\n", [("wrong_type", 3, 7, "tone", E)]),
    ("one text for a list", "---\nrole: r\ntone: calm\n---\n", [("coerced", 3, 7, "tone", I)]),
    ("a number for version", "---\nrole: r\nversion: 2.10\n---\n", [("coerced", 3, 10, "version", I)]),
    ("true/false for version", "---\nrole: r\nversion: yes\n---\n", [("wrong_type", 3, 10, "version", E)]),
    ("a key twice", "---\nrole: a\nrole: b\n---\n", [("duplicate_key", 3, 1, "role", E)]),
    ("a wrong role and a second role", "---\nrole: 1\nrole: b\n---\n",
     [("wrong_type", 2, 7, "role", E), ("duplicate_key", 3, 1, "role", E)]),
    ("no role", "---\ntone: [calm]\n---\n", [("missing_field", 1, 1, "role", E)]),
    ("empty frontmatter", "---\n---\nbody\n", [("missing_field", 1, 1, "role", E)]),
    ("an empty list field", "---\nrole: r\ntone:\n---\n", [("empty_value", 3, 6, "tone", W)]),
    ("a blank list item", "---\nrole: r\ntags: [a, '']\n---\n", [("empty_value", 3, 11, "tags[1]", W)]),
    ("frontmatter is a list", "---\n- a\n- b\n---\n", [("frontmatter_not_mapping", 2, 1, None, E)]),
    ("a key that is a number", "---\nrole: r\n1: x\n---\n", [("wrong_type", 3, 1, None, E)]),
    ("a merge key", "---\nrole: r\n<<: {a: 1}\n---\n", [("wrong_type", 3, 1, None, E)]),
    ("a python tag is not constructed", "---\nrole: !!python/object/apply:os.system [echo]\n---\n",
     [("wrong_type", 2, 7, "role", E)]),
    ("a list that contains itself", "---\nrole: r\ntags: &t [*t]\n---\n", [("wrong_type", 3, 7, "tags[0]", E)]),
    ("escape sequence in the body", "---\nrole: r\n---\nhi\x1b[31m\n", [("control_character", 4, 3, None, E)]),
    ("NUL in a value", "---\nrole: a\x00b\n---\n", [("control_character", 2, 8, None, E)]),
    ("not UTF-8", b"---\nrole: r\n---\nok \xff\n", [("not_utf8", 4, 4, None, E)]),
    ("CRLF line ends", "---\r\nrole: r\r\ntone: [a, 7]\r\n---\r\nbody\r\n", [("wrong_type", 3, 11, "tone[1]", E)]),
    ("a byte order mark", "\ufeff---\nrole: 1\n---\n", [("wrong_type", 2, 7, "role", E)]),
    ("columns count characters", "---\nrole: r\ntags: [été, 5]\n---\n", [("wrong_type", 3, 13, "tags[1]", E)]),
    ("a line separator in a value", "---\nrole: a\u2028b\ntone: 5\n---\n", [("wrong_type", 3, 7, "tone", E)]),
    ("role too long", "---\nrole: " + "x" * 1001 + "\n---\n", [("value_too_long", 2, 7, "role", E)]),
    ("too many tags", "---\nrole: r\ntags:\n" + "".join(f"  - t{i}\n" for i in range(65)) + "---\n",
     [("too_many_items", 68, 5, "tags[64]", E)]),
]


def found(soul: souls.Soul) -> list[tuple[str, int | None, int | None, str | None, Severity]]:
    return [(d.code, d.line, d.column, d.field, d.severity) for d in soul.diagnostics]


@pytest.mark.parametrize(("document", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_is_one_diagnostic_at_its_line_and_column(document, expected):
    soul = soul_parser.parse(document, "/souls/x.md")

    assert found(soul) == expected
    errors = any(sev is E for *_, sev in expected)
    assert soul.validation_status is (Status.invalid if errors else Status.valid)
    assert soul.valid is (not errors) and soul.active is (not errors)
    for d in soul.diagnostics:
        assert (d.source_path, d.owner_surface) == ("/souls/x.md", "request")
        assert d.message


def test_a_valid_soul_has_its_fields_body_digest_and_revision():
    text = "---\nrole: Reviews code\ntone: [calm, terse]\nprinciples:\n  - cite lines\nversion: '1'\n---\n# Hi\n"
    soul = soul_parser.parse(text, agent_name="rev")

    assert soul.frontmatter.model_dump() == {
        "role": "Reviews code", "tone": ["calm", "terse"], "principles": ["cite lines"], "constraints": [],
        "collaboration": [], "memory_policy": [], "tags": [], "version": "1"}
    assert soul.body == "# Hi\n" and not soul.truncated
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert soul.digest == "sha256:" + digest and soul.revision_id == "rev_" + digest[:20]
    assert (soul.present, soul.enabled, soul.agent_name) == (True, True, "rev")


def test_coercions_keep_the_value_as_written():
    soul = soul_parser.parse("---\nrole: r\ntone: calm\nversion: 2.10\n---\n")
    assert (soul.frontmatter.tone, soul.frontmatter.version) == (["calm"], "2.10")
    assert soul.valid


def test_a_duplicate_key_keeps_the_first_value():
    assert soul_parser.parse("---\nrole: a\nrole: b\n---\n").frontmatter.role == "a"


def test_the_size_limits_point_where_they_are_crossed_and_the_body_is_cut_there():
    limits = Limits(max_bytes=40, max_body_bytes=30, context_projection_bytes=100)
    text = "---\nrole: r\n---\n" + "0123456789\n" * 4  # 16 bytes of frontmatter, 44 of body

    soul = soul_parser.parse(text, limits=limits)

    assert found(soul) == [("soul_too_large", 6, 3, "document", E), ("body_too_large", 6, 9, "body", E)]
    assert soul.truncated and soul.body == ("0123456789\n" * 4)[:30]
    assert soul.frontmatter.role == "r"  # the frontmatter lies within the limit: still checked


def test_a_limit_crossed_inside_a_character_points_at_that_character():
    text = "---\nrole: r\n---\néééé"  # the third é is bytes 20 and 21
    for limit in (20, 21):
        soul = soul_parser.parse(text, limits=Limits(max_bytes=limit))
        assert found(soul)[0] == ("soul_too_large", 4, 3, "document", E), limit


def test_frontmatter_past_the_size_limit_is_not_parsed():
    soul = soul_parser.parse("---\nrole: 5\n---\n", limits=Limits(max_bytes=10))
    assert found(soul) == [("soul_too_large", 2, 7, "document", E)]


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "[a, " * 40, "{a: " * 40, "- " * 5000 + "x"])
def test_deep_nesting_is_a_yaml_diagnostic_not_a_crash(nested):
    soul = soul_parser.parse("---\nrole: r\ntags: " + nested + "\n---\n")
    assert [(d.code, d.line) for d in soul.diagnostics] == [("yaml_error", 3)]


def test_flow_nesting_is_refused_where_it_passes_the_bound():
    (diag,) = soul_parser.parse("---\nrole: r\ntags: " + "[" * 40 + "\n---\n").diagnostics
    assert (diag.code, diag.line, diag.column) == ("yaml_error", 3, 7 + soul_parser.MAX_FLOW_DEPTH)


def test_yaml_messages_say_where_the_unfinished_thing_started():
    (diag,) = soul_parser.parse('---\nrole: "r\n---\n').diagnostics
    assert "line 2, column 7" in diag.message


def test_unknown_keys_get_a_suggestion():
    (typo,) = soul_parser.parse("---\nrole: r\nprinciple: [a]\n---\n").diagnostics
    (claude,) = soul_parser.parse("---\nrole: r\ndescription: d\n---\n").diagnostics
    assert "did you mean principles" in typo.message
    assert "agentdock soul import" in claude.message


def test_a_document_with_very_many_problems_reports_the_first_ones_and_a_count():
    text = "---\nrole: r\n" + "".join(f"k{i}: x\n" for i in range(150)) + "---\n"
    soul = soul_parser.parse(text)
    assert len(soul.diagnostics) == soul_parser.MAX_DIAGNOSTICS
    assert soul.diagnostics[-1].code == "too_many_diagnostics" and "51 more" in soul.diagnostics[-1].message


def test_a_lone_surrogate_in_text_is_not_utf8_not_a_crash():
    soul = soul_parser.parse("---\nrole: r\n---\nx\ud800\n")
    assert found(soul) == [("not_utf8", 4, 2, None, E)]


def test_switched_off_souls_are_checked_but_never_active():
    soul = soul_parser.parse("---\nrole: r\n---\n", enabled=False)
    assert (soul.valid, soul.enabled, soul.active) == (True, False, False)
    assert [(d.code, d.owner_surface) for d in soul.diagnostics] == [("soul_disabled", "settings")]


def test_the_context_projection_keeps_whole_items_within_its_budget():
    text = "---\nrole: r\nprinciples: [" + ", ".join(["p" * 20] * 10) + "]\ntone: [calm]\n---\n"
    soul = soul_parser.parse(text, limits=Limits(context_projection_bytes=100))

    ctx = souls.projection(soul)

    assert ctx.role == "r" and ctx.truncated
    assert len(ctx.principles) == 4 and ctx.tone == []  # 3 + 4 * 23 bytes fit in 100, a fifth would not
    assert len(json.dumps(ctx.role)) + sum(len(json.dumps(p)) + 1 for p in ctx.principles + ctx.tone) <= 100
    assert ctx.config_digest == soul.config_provenance.digest
    whole = souls.projection(soul_parser.parse(text))
    assert not whole.truncated and len(whole.principles) == 10 and whole.tone == ["calm"]


def test_an_invalid_soul_projects_nothing_into_context():
    ctx = souls.projection(soul_parser.parse("---\nrole: r\nbad: 1\n---\n"))
    assert (ctx.role, ctx.principles, ctx.active, ctx.validation_status) == (None, [], False, Status.invalid)


def test_config_provenance_digest_changes_with_the_limits():
    a = soul_parser.parse("---\nrole: r\n---\n").config_provenance
    b = soul_parser.parse("---\nrole: r\n---\n", limits=Limits(max_bytes=1000)).config_provenance
    assert a.digest != b.digest and a.source is souls.Source.request


def test_a_megabyte_of_control_characters_is_a_bounded_report():
    soul = soul_parser.parse("---\nrole: r\n---\n" + "\x1b" * souls.MAX_SOURCE_BYTES)
    assert len(soul.diagnostics) == soul_parser.MAX_DIAGNOSTICS
    assert found(soul)[0] == ("control_character", 4, 1, None, E)
    assert soul.diagnostics[-1].code == "too_many_diagnostics"
    assert f"{souls.MAX_SOURCE_BYTES + 2 - soul_parser.MAX_DIAGNOSTICS + 1} more" in soul.diagnostics[-1].message
