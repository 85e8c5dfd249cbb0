"""The soul service on real SQLite and real files: where souls are read from (and what is refused),
snapshots that outlive the file, validation that stores nothing, and importing Claude Code agent files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from engine import errors, models
from engine.souls import claude_agent as soul_import
from engine.souls import models as souls
from engine.souls import parser as soul_parser
from engine.app import Engine
from engine.callers import ROOT, Caller
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio
AGENT = Caller(session_id="ses_agent", toolsets=frozenset({"soul"}))
NO_SOUL = Caller(session_id="ses_nosoul", toolsets=frozenset({"runs"}))
GOOD = "---\nrole: Reviews code\ntone: [calm]\n---\nYou review code.\n"
CLAUDE = ("---\nname: code-reviewer\ndescription: Reviews code for bugs.\ntools: Read, Grep, Bash\nmodel: sonnet\n"
          "color: blue\n---\nYou are a senior code reviewer.\n")


async def running(settings: Settings):
    return Engine(settings, backend=FakeBackend(), harnesses=harness.get).running()


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path / "home", image="fake:latest")


@pytest.fixture
async def engine(settings):
    async with await running(settings) as e:
        yield e


def write_soul(settings: Settings, name: str, text: str | bytes) -> Path:
    settings.souls_dir.mkdir(parents=True, exist_ok=True)
    path = settings.souls_dir / f"{name}.md"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


async def snapshot_rows(engine: Engine) -> tuple[int, int]:
    docs = await engine.store._all("SELECT count(*) AS n FROM soul_documents")
    snaps = await engine.store._all("SELECT count(*) AS n FROM soul_snapshots")
    return docs[0]["n"], snaps[0]["n"]


# ---------------------------------------------------------------- reading


async def test_no_soul_file_is_present_false_and_missing_not_an_error(engine, settings):
    soul = await engine.souls.get(ROOT)

    assert (soul.agent_name, soul.present, soul.validation_status, soul.valid, soul.active) == (
        "agentdock", False, souls.Status.missing, False, False)
    assert soul.source_path == str(settings.souls_dir / "agentdock.md")
    assert [(d.code, d.severity) for d in soul.diagnostics] == [("soul_missing", souls.Severity.info)]
    assert soul.digest is None and soul.config_provenance.source is souls.Source.home


async def test_a_soul_file_is_read_validated_and_dated(engine, settings):
    path = write_soul(settings, "agentdock", GOOD)
    os.utime(path, (1_700_000_000, 1_700_000_000))

    soul = await engine.souls.get(ROOT)

    assert (soul.present, soul.validation_status, soul.active) == (True, souls.Status.valid, True)
    assert soul.frontmatter.role == "Reviews code" and soul.body == "You review code.\n"
    assert soul.digest == "sha256:" + hashlib.sha256(GOOD.encode()).hexdigest()
    assert soul.created_at.timestamp() == 1_700_000_000
    assert soul.limits == souls.Limits(max_bytes=65_536, max_body_bytes=49_152, context_projection_bytes=4_096)


async def test_the_limits_and_default_name_come_from_agentdock_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTDOCK_SOUL_MAX_BYTES", "2048")
    monkeypatch.setenv("AGENTDOCK_SOUL_AGENT_NAME", "lead")
    settings = Settings.load(home=tmp_path, image="fake:latest")
    write_soul(settings, "lead", "---\nrole: r\n---\n" + "x" * 3000)
    async with await running(settings) as engine:
        soul = await engine.souls.get(ROOT)

    assert soul.agent_name == "lead" and soul.limits.max_bytes == 2048
    assert [d.code for d in soul.diagnostics] == ["soul_too_large"]


async def test_a_bad_setting_is_a_diagnostic_naming_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTDOCK_SOUL_AGENT_NAME", "../etc")
    with pytest.raises(errors.InvalidInput) as info:
        Settings.load(home=tmp_path)
    assert info.value.field == "AGENTDOCK_SOUL_AGENT_NAME"


async def test_the_workspace_soul_comes_first_and_the_home_is_the_fallback(tmp_path):
    workspace = tmp_path / "project"
    settings = Settings(home=tmp_path / "home", image="fake:latest", soul_workspace=workspace)
    write_soul(settings, "agentdock", GOOD)
    (workspace / ".agentdock" / "souls").mkdir(parents=True)
    (workspace / ".agentdock" / "souls" / "agentdock.md").write_text("---\nrole: Project reviewer\n---\n")
    async with await running(settings) as engine:
        from_workspace = await engine.souls.get(ROOT)
        (workspace / ".agentdock" / "souls" / "agentdock.md").unlink()
        from_home = await engine.souls.get(ROOT)

    assert (from_workspace.frontmatter.role, from_workspace.config_provenance.source) == (
        "Project reviewer", souls.Source.workspace)
    assert from_workspace.source_path == str(workspace / ".agentdock" / "souls" / "agentdock.md")
    assert (from_home.frontmatter.role, from_home.config_provenance.source) == ("Reviews code", souls.Source.home)


@pytest.mark.parametrize("name", ["../agentdock", "a/b", "..", ".hidden", "Agent", "", "a" * 65, "x.md", "a\x00b",
                                  "-flag"])
async def test_an_agent_name_that_could_steer_a_path_is_refused_naming_the_field(engine, name):
    with pytest.raises(errors.InvalidInput) as direct:
        await engine.souls.get(ROOT, name)
    with pytest.raises(errors.InvalidInput) as parsed:
        models.parse(souls.SoulGet, {"agent_name": name})
    assert direct.value.field == "agent_name" and parsed.value.field == "agent_name"


async def test_a_symbolic_link_to_another_file_is_refused_not_followed(engine, settings, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("---\nrole: secret\n---\nTOP SECRET\n")
    settings.souls_dir.mkdir(parents=True)
    (settings.souls_dir / "agentdock.md").symlink_to(secret)

    soul = await engine.souls.get(ROOT)

    assert "TOP SECRET" not in soul.model_dump_json()
    assert soul.validation_status is souls.Status.invalid
    assert [d.code for d in soul.diagnostics] == ["soul_unreadable"]
    assert "symbolic link" in soul.diagnostics[0].message


async def test_a_linked_souls_directory_in_a_workspace_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "agentdock.md").write_text("---\nrole: planted\n---\n")
    workspace = tmp_path / "project"
    (workspace / ".agentdock").mkdir(parents=True)
    (workspace / ".agentdock" / "souls").symlink_to(elsewhere)
    settings = Settings(home=tmp_path / "home", image="fake:latest", soul_workspace=workspace)
    async with await running(settings) as engine:
        soul = await engine.souls.get(ROOT)

    assert soul.frontmatter.role is None and [d.code for d in soul.diagnostics] == ["soul_unreadable"]


async def test_a_fifo_in_place_of_a_soul_is_refused_without_waiting(engine, settings):
    settings.souls_dir.mkdir(parents=True)
    os.mkfifo(settings.souls_dir / "agentdock.md")

    soul = await engine.souls.get(ROOT)

    assert [d.code for d in soul.diagnostics] == ["soul_unreadable"]
    assert "regular file" in soul.diagnostics[0].message


async def test_a_file_over_the_read_bound_is_read_to_it_and_reported_oversize(engine, settings):
    write_soul(settings, "agentdock", "---\nrole: r\n---\n" + "x" * (souls.MAX_SOURCE_BYTES + 10))
    soul = await engine.souls.get(ROOT)
    assert [d.code for d in soul.diagnostics] == ["body_too_large", "soul_too_large"]  # both on line 4
    assert len(soul.body) == settings.soul_max_body_bytes


async def test_a_caller_without_the_soul_toolset_is_refused_naming_it(engine):
    with pytest.raises(errors.PermissionDenied) as info:
        await engine.souls.get(NO_SOUL)
    with pytest.raises(errors.PermissionDenied):
        await engine.souls.validate(NO_SOUL, souls.SoulValidate(content=GOOD))
    assert info.value.evidence["toolset"] == "soul"


async def test_souls_switched_off_are_read_but_not_active(tmp_path):
    settings = Settings(home=tmp_path, image="fake:latest", soul_enabled=False)
    write_soul(settings, "agentdock", GOOD)
    async with await running(settings) as engine:
        soul = await engine.souls.get(ROOT)
    assert (soul.valid, soul.enabled, soul.active, soul.config_provenance.enabled) == (True, False, False, False)


# ---------------------------------------------------------------- validate


async def test_validating_content_stores_nothing_and_reports_placed_diagnostics(engine, settings):
    soul = await engine.souls.validate(AGENT, souls.SoulValidate(content="---\nrole: r\ntone: 5\n---\n",
                                                                 agent_name="helper"))

    assert soul.agent_name == "helper" and soul.config_provenance.source is souls.Source.request
    assert [(d.code, d.line, d.column, d.field, d.owner_surface) for d in soul.diagnostics] == [
        ("wrong_type", 3, 7, "tone", "request")]
    assert not settings.souls_dir.exists()
    assert await snapshot_rows(engine) == (0, 0)


async def test_validating_without_content_checks_the_stored_soul(engine, settings):
    write_soul(settings, "helper", "---\nrole: r\nrolee: x\n---\n")
    soul = await engine.souls.validate(AGENT, souls.SoulValidate(agent_name="helper"))
    assert soul.config_provenance.source is souls.Source.home
    assert [(d.code, d.line, d.source_path) for d in soul.diagnostics] == [
        ("unknown_key", 3, str(settings.souls_dir / "helper.md"))]


async def test_content_past_the_accepted_bound_is_invalid_input_naming_content():
    with pytest.raises(errors.InvalidInput) as info:
        models.parse(souls.SoulValidate, {"content": "x" * (souls.MAX_SOURCE_BYTES + 1)})
    with pytest.raises(errors.InvalidInput) as unknown:
        models.parse(souls.SoulValidate, {"content": GOOD, "path": "/etc/passwd"})
    assert info.value.field == "content" and unknown.value.field == "path"


# ---------------------------------------------------------------- snapshots


async def test_a_snapshot_keeps_the_soul_a_session_had_at_spawn(engine, settings):
    path = write_soul(settings, "helper", GOOD)
    snapshot_id, at_spawn = await engine.souls.snapshot(ROOT, "helper")
    path.write_text("---\nrole: Rewritten\n---\n")
    later_file = await engine.souls.get(AGENT, "helper")
    path.unlink()
    from_snapshot = await engine.souls.get(AGENT, "helper", snapshot_id=snapshot_id)
    by_id_alone = await engine.souls.get(AGENT, snapshot_id=snapshot_id)

    assert souls.SNAPSHOT.matches(snapshot_id) and at_spawn.snapshot_id == snapshot_id
    assert later_file.frontmatter.role == "Rewritten"
    assert (from_snapshot.frontmatter.role, from_snapshot.body, from_snapshot.digest) == (
        "Reviews code", "You review code.\n", at_spawn.digest)
    assert (from_snapshot.snapshot_id, from_snapshot.config_provenance.source) == (snapshot_id, souls.Source.snapshot)
    assert from_snapshot.source_path == str(path) and by_id_alone.agent_name == "helper"


async def test_a_soul_missing_at_spawn_stays_missing_for_that_session(engine, settings):
    snapshot_id, at_spawn = await engine.souls.snapshot(ROOT, "helper")
    write_soul(settings, "helper", GOOD)
    soul = await engine.souls.get(AGENT, snapshot_id=snapshot_id)

    assert at_spawn.validation_status is souls.Status.missing
    assert (soul.present, soul.validation_status, soul.snapshot_id) == (False, souls.Status.missing, snapshot_id)


async def test_snapshots_of_the_same_document_store_it_once(engine, settings):
    write_soul(settings, "helper", GOOD)
    first, _ = await engine.souls.snapshot(ROOT, "helper")
    second, _ = await engine.souls.snapshot(ROOT, "helper")
    assert first != second
    assert await snapshot_rows(engine) == (1, 2)


async def test_an_unknown_or_misshapen_snapshot_id_is_refused(engine, settings):
    write_soul(settings, "helper", GOOD)
    snapshot_id, _ = await engine.souls.snapshot(ROOT, "helper")
    with pytest.raises(errors.NotFound):
        await engine.souls.get(AGENT, snapshot_id="snap_0000000000000000dead")
    with pytest.raises(errors.NotFound):
        await engine.souls.get(AGENT, "other", snapshot_id=snapshot_id)  # another agent's name
    with pytest.raises(errors.InvalidInput) as info:
        await engine.souls.get(AGENT, snapshot_id="../snap")
    assert info.value.field == "snapshot_id"


async def test_a_snapshot_survives_a_restart(settings):
    write_soul(settings, "helper", GOOD)
    async with await running(settings) as engine:
        snapshot_id, _ = await engine.souls.snapshot(ROOT, "helper")
    (settings.souls_dir / "helper.md").unlink()
    async with await running(settings) as engine:
        soul = await engine.souls.get(ROOT, snapshot_id=snapshot_id)
    assert soul.frontmatter.role == "Reviews code"


# ---------------------------------------------------------------- import


async def test_importing_a_claude_code_agent_writes_a_valid_soul(engine, settings):
    imported = await engine.souls.import_agent(ROOT, souls.SoulImport(content=CLAUDE))
    path = settings.souls_dir / "code-reviewer.md"
    read_back = await engine.souls.get(ROOT, "code-reviewer")

    assert (imported.written, imported.replaced, imported.path, imported.dropped_keys) == (
        True, False, str(path), ["color"])
    assert read_back.valid and read_back.frontmatter.role == "Reviews code for bugs."
    assert read_back.frontmatter.tags == ["claude-code", "model:sonnet", "tool:Read", "tool:Grep", "tool:Bash"]
    assert read_back.body == "You are a senior code reviewer.\n"
    assert read_back.digest == imported.soul.digest
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in settings.souls_dir.iterdir()] == ["code-reviewer.md"]  # no temporary file left


async def test_import_refuses_to_overwrite_without_force_and_replaces_with_it(engine, settings):
    path = write_soul(settings, "code-reviewer", GOOD)
    with pytest.raises(errors.Conflict) as info:
        await engine.souls.import_agent(ROOT, souls.SoulImport(content=CLAUDE))
    unchanged = path.read_text()
    forced = await engine.souls.import_agent(ROOT, souls.SoulImport(content=CLAUDE, force=True))

    assert unchanged == GOOD and info.value.evidence["field"] == "force"
    assert forced.replaced and "Reviews code for bugs." in path.read_text()
    assert [p.name for p in settings.souls_dir.iterdir()] == ["code-reviewer.md"]


async def test_import_with_force_replaces_a_planted_link_not_its_target(engine, settings, tmp_path):
    target = tmp_path / "target.md"
    target.write_text("keep me")
    settings.souls_dir.mkdir(parents=True)
    (settings.souls_dir / "code-reviewer.md").symlink_to(target)

    await engine.souls.import_agent(ROOT, souls.SoulImport(content=CLAUDE, force=True))

    assert target.read_text() == "keep me"
    assert not (settings.souls_dir / "code-reviewer.md").is_symlink()


async def test_import_takes_a_name_and_a_list_of_tools(engine, settings):
    content = "---\nname: Not A Soul Name\ndescription: d\ntools:\n  - Read\n---\nbody\n"
    with pytest.raises(errors.InvalidInput) as unnamed:
        await engine.souls.import_agent(ROOT, souls.SoulImport(content=content))
    imported = await engine.souls.import_agent(ROOT, souls.SoulImport(content=content, name="reader"))

    assert unnamed.value.field == "name"
    assert imported.soul.frontmatter.tags == ["claude-code", "tool:Read"]
    assert (settings.souls_dir / "reader.md").exists()


@pytest.mark.parametrize(("content", "field", "line", "column"), [
    ("no frontmatter\n", "content", 1, 1),
    ("---\nname: a\ndescription: [unclosed\n---\n", "content", 3, 23),
    ("---\nname: a\ndescription: d\n  tools: x\n---\n", "content", 4, 8),
    ("---\nname: a\n---\nbody\n", "description", None, None),
    ("---\nname: a\ndescription: d\ntools: {a: 1}\n---\n", "tools", None, None),
    ("---\nname: a\ndescription: d\nmodel: 5\n---\n", "model", None, None),
])
async def test_a_broken_agent_file_is_invalid_input_with_its_place_and_writes_nothing(engine, settings, content,
                                                                                      field, line, column):
    with pytest.raises(errors.InvalidInput) as info:
        await engine.souls.import_agent(ROOT, souls.SoulImport(content=content))
    assert info.value.field == field
    assert (info.value.evidence.get("line"), info.value.evidence.get("column")) == (line, column)
    assert not settings.souls_dir.exists()


async def test_an_import_whose_soul_would_be_invalid_writes_nothing(engine, settings):
    imported = await engine.souls.import_agent(ROOT, souls.SoulImport(
        content="---\nname: a\ndescription: d\n---\nbad \x1b[2J body\n"))
    assert not imported.written and not imported.soul.valid
    assert [d.code for d in imported.soul.diagnostics] == ["control_character"]
    assert not (settings.souls_dir / "a.md").exists()


async def test_a_long_description_gives_its_first_sentence_as_role_and_keeps_the_rest_in_the_body():
    description = "Use this agent after edits. It reviews code.\n<example>user: review</example>"
    converted = soul_import.convert(f"---\nname: r\ndescription: {description!r}\n---\nPrompt.\n".replace(
        "'", '"'), None, 65_536)
    soul = soul_parser.parse(converted.document)
    assert soul.valid and soul.frontmatter.role == "Use this agent after edits."
    assert soul.body.startswith("Prompt.\n\n## When to use this agent\n\nUse this agent after edits.")


async def test_only_the_local_user_may_import(engine, settings):
    with pytest.raises(errors.PermissionDenied):
        await engine.souls.import_agent(AGENT, souls.SoulImport(content=CLAUDE))
    assert not settings.souls_dir.exists()
