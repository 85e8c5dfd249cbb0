"""Runtime harnesses: command lines, stream parsing, and the fake CLIs driven end to end."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from engine.ports import EventDraft, Harness, HarnessInput
from runtimes import harness
from runtimes.adapters import hermes as hermes_adapter
from runtimes.harness import HARNESSES, get

FAKES = Path(harness.__file__).resolve().parent / "fakes"
SH = "/bin/busybox" if Path("/bin/busybox").exists() else "/bin/sh"


def run_input(prompt: str = "hi", *, model: str | None = None, command: str | None = None) -> HarnessInput:
    return HarnessInput(prompt=prompt, command=command, model=model, cwd="/work")


def fold(h: Harness, lines: list[str]) -> tuple[list[EventDraft], str | None]:
    """Feed lines to the parser the way the engine does: collect events, keep the latest output."""
    events: list[EventDraft] = []
    output: str | None = None
    for line in lines:
        parsed = h.parse_line(line)
        events.extend(parsed.events)
        if parsed.output is not None:
            output = parsed.output
    return events, output


def run_fake(h: Harness, prompt: str, *, model: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the harness's own argv against the fake CLI of the same name, prompt on stdin."""
    argv = h.argv(run_input(prompt, model=model))
    if argv[:2] == ["sh", "-c"]:  # behind the adapter's credential check or setup: what it execs
        argv = argv[4:]
    while argv[0] == "env" or "=" in argv[0]:  # after the runtime's own environment
        argv = argv[1:]
    assert h.binary is not None and argv[0] == h.binary
    shell = [SH, "sh"] if SH.endswith("busybox") else [SH]
    return subprocess.run(
        [*shell, str(FAKES / h.binary), *argv[1:]],
        input=prompt, capture_output=True, text=True, timeout=20,
    )


def types(events: list[EventDraft]) -> list[str]:
    return [e.type for e in events]


# --- registry and argv ------------------------------------------------------------------------


def test_registry_holds_every_provider_under_its_own_name() -> None:
    assert set(HARNESSES) == {"custom", "claude-code", "claude", "codex", "osa", "pi", "hermes"}
    for name, h in HARNESSES.items():
        assert h.provider == name
        assert get(name) is h


def test_get_raises_key_error_for_an_unknown_provider() -> None:
    with pytest.raises(KeyError):
        get("nope")


def test_custom_runs_the_users_command_with_sh_and_has_no_binary() -> None:
    h = get("custom")
    assert h.binary is None and h.structured is False
    assert h.argv(run_input(command="echo hi && ls")) == ["sh", "-c", "echo hi && ls"]


def test_custom_without_a_command_is_refused() -> None:
    with pytest.raises(ValueError):
        get("custom").argv(run_input())


QUIET_CLAUDE = ["env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_TELEMETRY=1", "DISABLE_ERROR_REPORTING=1",
                "DISABLE_AUTOUPDATER=1", "DISABLE_BUG_COMMAND=1", "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY=1"]


def test_claude_argv_is_headless_stream_json_with_the_prompt_on_stdin_and_no_side_traffic() -> None:
    for name in ("claude-code", "claude"):
        h = get(name)
        assert h.binary == "claude" and h.structured is True
        argv = h.argv(run_input("do not put me on the command line"))
        assert argv == [*QUIET_CLAUDE, "claude", "-p", "--output-format", "stream-json", "--verbose",
                        "--dangerously-skip-permissions"]


def test_claude_argv_passes_the_model_flag_when_a_model_is_set() -> None:
    argv = get("claude-code").argv(run_input(model="opus"))
    assert argv == [*QUIET_CLAUDE, "claude", "-p", "--output-format", "stream-json", "--verbose",
                    "--dangerously-skip-permissions", "--model", "opus"]


def test_codex_argv_is_exec_json_reading_the_prompt_from_stdin_behind_a_credential_check() -> None:
    h = get("codex")
    assert h.binary == "codex" and h.structured is True
    argv = h.argv(run_input("secret prompt"))
    assert argv[:2] == ["sh", "-c"] and "CODEX_API_KEY" in argv[2] and "secret prompt" not in argv
    assert argv[4:] == ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                        "-", "-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"]
    assert "OPENAI_BASE_URL" in argv[2]  # a provider of its own at a gateway's URL, codex ignoring the variable


def test_codex_argv_passes_the_model_flag_before_the_stdin_marker() -> None:
    argv = get("codex").argv(run_input(model="gpt-5-codex"))[4:]
    assert argv == ["codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                    "--model", "gpt-5-codex", "-", "-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"]


def test_osa_without_a_template_runs_its_binary_with_the_prompt_on_stdin() -> None:
    h = get("osa")
    assert h.binary == "osa" and h.structured is False
    assert h.argv(run_input(model="m")) == ["osa"]


def test_pi_argv_is_print_mode_json_reading_the_prompt_from_stdin_behind_its_setup() -> None:
    h = get("pi")
    assert h.binary == "pi" and h.structured is True
    argv = h.argv(run_input("do not put me on the command line", model="anthropic/claude-sonnet-4-5"))
    assert argv[:2] == ["sh", "-c"] and "PI_OFFLINE=1" in argv[2]
    assert argv[3:] == ["pi", "pi", "-p", "--mode", "json", "--no-session", "--model", "anthropic/claude-sonnet-4-5"]


@pytest.mark.parametrize(("printed", "exit_code", "expected"), [
    (['{"type":"message_end","message":{"role":"assistant","content":[],"stopReason":"error","errorMessage":"401"}}'],
     0, 1),
    (['{"type":"message_end","message":{"role":"assistant","content":[],"stopReason":"error"}}',
      '{"type":"message_end","message":{"role":"assistant","content":[],"stopReason":"stop"}}'], 0, 0),
    (['{"type":"message_end","message":{"role":"assistant","content":[{"type":"text","text":"\\"stopReason\\":\\"error\\""}],'
      '"stopReason":"stop"}}'], 0, 0),
    ([], 3, 3),
])
def test_pi_setup_exits_1_when_the_last_assistant_message_failed(printed, exit_code, expected) -> None:
    """pi --mode json exits 0 after a failed model call; its setup reads the stream it passes on."""
    argv = get("pi").argv(run_input())
    script = "".join(f"echo '{line}'; " for line in printed) + f"exit {exit_code}"
    done = subprocess.run([*argv[:4], "sh", "-c", script], capture_output=True, text=True, timeout=20,
                          env={"PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout.splitlines()) == (expected, printed), done.stderr


@pytest.mark.parametrize("base_url", [None, 'http://gw:8080/v1/"odd\\path'])
def test_pi_setup_points_pi_at_anthropic_base_url_through_a_models_json_of_the_run(tmp_path, base_url) -> None:
    """Pi reads no ANTHROPIC_BASE_URL; its setup writes the override pi reads, and removes it after."""
    argv = get("pi").argv(run_input())
    probe = ('echo "offline=$PI_OFFLINE telemetry=$PI_TELEMETRY"; '
             '[ -z "${PI_CODING_AGENT_DIR:-}" ] || { cat "$PI_CODING_AGENT_DIR/models.json"; '
             'echo "$PI_CODING_AGENT_DIR" > "$0"; }; exit 7')
    env = {"PATH": "/usr/bin:/bin", **({"ANTHROPIC_BASE_URL": base_url} if base_url else {})}
    done = subprocess.run([*argv[:3], str(tmp_path / "dir"), "sh", "-c", probe, str(tmp_path / "dir")],
                          capture_output=True, text=True, timeout=20, env=env)
    assert done.returncode == 7, done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first == "offline=1 telemetry=0"
    if base_url is None:
        assert rest == ""
    else:
        assert json.loads(rest) == {"providers": {"anthropic": {"baseUrl": base_url}}}
        assert not Path((tmp_path / "dir").read_text().strip()).exists()


def test_hermes_argv_is_one_shot_with_the_prompt_as_one_option_value_then_reads_its_session() -> None:
    h = get("hermes")
    assert h.binary == "hermes" and h.structured is True
    argv = h.argv(run_input("--version please", model="m"))
    assert argv[:2] == ["sh", "-c"] and argv[3:4] == ["hermes"] and "--usage-file" in argv[2]
    assert argv[5:] == ["--oneshot=--version please", "--model", "m"]


def test_hermes_session_read_back_becomes_messages_tool_use_results_usage_and_the_answer(tmp_path: Path) -> None:
    """The command line's reader, run on a store shaped as hermes-agent 0.19.0 leaves it (the rows and
    usage file a real run against the scripted provider left)."""
    home, run = tmp_path / "hermes", tmp_path / "run"
    home.mkdir()
    run.mkdir()
    db = sqlite3.connect(home / "state.db")
    db.execute("create table messages (id integer primary key autoincrement, session_id text, role text, "
               "content text, tool_call_id text, tool_calls text, tool_name text)")
    calls = json.dumps([{"id": "call_1", "type": "function", "function": {
        "name": "write_file", "arguments": json.dumps({"path": "proof.txt", "content": "hi\n"})}}])
    db.executemany("insert into messages (session_id, role, content, tool_call_id, tool_calls, tool_name) "
                   "values (?, ?, ?, ?, ?, ?)", [
                       ("s1", "user", "write the file", None, None, None),
                       ("s1", "assistant", "I will write the file now.", None, calls, None),
                       ("s1", "tool", '{"bytes_written": 3}', "call_1", None, "write_file"),
                       ("s1", "assistant", "Done.", None, None, None),
                       ("s0", "assistant", "another session", None, None, None)])
    db.commit()
    (run / "usage.json").write_text(json.dumps({"input_tokens": 200, "output_tokens": 40, "total_tokens": 240,
                                                "api_calls": 2, "session_id": "s1", "completed": True}, indent=2))
    (run / "answer").write_text("Done.\n")
    done = subprocess.run(["python3", "-c", hermes_adapter.READ_SESSION, str(run)], capture_output=True, text=True,
                          env={"HERMES_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=20)
    assert done.returncode == 0, done.stderr
    events, output = fold(get("hermes"), done.stdout.splitlines())
    assert output == "Done."
    assert types(events) == ["message", "tool_use", "command_finished", "message", "message"]
    said, call, result, final, usage = (e.payload for e in events)
    assert (said["text"], final["text"]) == ("I will write the file now.", "Done.")
    assert call == {"id": "call_1", "name": "write_file", "input": {"path": "proof.txt", "content": "hi\n"}}
    assert (result["tool_use_id"], result["output"]) == ("call_1", '{"bytes_written": 3}')
    assert usage["usage"] == {"input_tokens": 200, "output_tokens": 40, "total_tokens": 240}


# --- the fake CLIs, end to end ----------------------------------------------------------------


def test_fake_clis_print_a_version_and_exit_zero() -> None:
    for binary, expected in (("claude", "Claude Code"), ("codex", "codex-cli")):
        shell = [SH, "sh"] if SH.endswith("busybox") else [SH]
        done = subprocess.run([*shell, str(FAKES / binary), "--version"], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0
        assert expected in done.stdout


def test_fake_cli_scripts_are_executable() -> None:
    for binary in ("claude", "codex"):
        path = FAKES / binary
        assert path.read_text().startswith("#!/bin/sh\n")
        assert path.stat().st_mode & 0o111


def test_claude_fake_prints_only_valid_json_lines() -> None:
    done = run_fake(get("claude-code"), "hello there")
    lines = done.stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["system", "assistant", "assistant", "user", "assistant", "result"]


def test_claude_stream_sets_output_to_final_result() -> None:
    done = run_fake(get("claude-code"), "fix the bug")
    assert done.returncode == 0, done.stderr
    events, output = fold(get("claude-code"), done.stdout.splitlines())
    assert output == "Done: fix the bug"
    assert types(events) == ["message", "tool_use", "command_started", "command_finished", "message", "message"]
    tool_use, started, finished = events[1], events[2], events[3]
    assert tool_use.payload["name"] == "Bash"
    assert tool_use.payload["input"]["command"] == "echo hello"
    assert started.payload["command"] == "echo hello"
    assert started.payload["tool_use_id"] == tool_use.payload["id"] == finished.payload["tool_use_id"]
    assert finished.payload["is_error"] is False
    assert finished.payload["output"] == "hello"
    assert events[4].payload["text"] == "Done: fix the bug"
    final = events[5].payload
    assert final["final"] is True and final["is_error"] is False
    assert final["num_turns"] == 3 and final["total_cost_usd"] == pytest.approx(0.0123)
    assert "Done: fix the bug" not in events[5].message


def test_claude_fake_reports_the_model_flag_in_its_init_line() -> None:
    done = run_fake(get("claude"), "hi", model="claude-opus-4-1")
    init = json.loads(done.stdout.splitlines()[0])
    assert init["subtype"] == "init" and init["model"] == "claude-opus-4-1"


def test_claude_fail_prompt_ends_with_an_error_result_and_no_output() -> None:
    done = run_fake(get("claude-code"), "please FAIL now")
    assert done.returncode == 1
    events, output = fold(get("claude-code"), done.stdout.splitlines())
    assert output is None
    assert types(events) == ["message", "message"]
    final = events[-1]
    assert final.payload["final"] is True and final.payload["is_error"] is True
    assert final.payload["subtype"] == "error_during_execution"
    assert "error_during_execution" in final.message


def test_claude_fake_refuses_stream_json_without_verbose_like_the_real_cli() -> None:
    shell = [SH, "sh"] if SH.endswith("busybox") else [SH]
    done = subprocess.run([*shell, str(FAKES / "claude"), "-p", "--output-format", "stream-json"],
                          input="hi", capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and "--verbose" in done.stderr


def test_prompts_with_quotes_backslashes_tabs_and_newlines_round_trip_through_the_fakes() -> None:
    prompt = 'say "hi"\\path\n\tindented\nlast line'
    for name in ("claude-code", "codex"):
        done = run_fake(get(name), prompt)
        assert done.returncode == 0, done.stderr
        _, output = fold(get(name), done.stdout.splitlines())
        assert output == f"Done: {prompt}"


def test_codex_stream_maps_commands_and_sets_output_to_the_agent_message() -> None:
    done = run_fake(get("codex"), "list files")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines][:2] == ["thread.started", "turn.started"]
    events, output = fold(get("codex"), lines)
    assert output == "Done: list files"
    assert types(events) == ["command_started", "command_finished", "message", "message"]
    started, finished, message, turn = events
    assert turn.payload["usage"]["output_tokens"] > 0
    assert started.payload["command"] == "echo hello"
    assert finished.payload["command"] == "echo hello"
    assert finished.payload["exit_code"] == 0
    assert finished.payload["output"] == "hello\n"
    assert message.payload["text"] == "Done: list files"


def test_codex_fake_reports_the_model_flag_in_thread_started() -> None:
    done = run_fake(get("codex"), "hi", model="o4-mini")
    first = json.loads(done.stdout.splitlines()[0])
    assert first["type"] == "thread.started" and first["model"] == "o4-mini"


def test_codex_fail_prompt_ends_with_turn_failed_as_an_error_message() -> None:
    done = run_fake(get("codex"), "FAIL please")
    assert done.returncode == 1
    assert json.loads(done.stdout.splitlines()[-1])["type"] == "turn.failed"
    events, output = fold(get("codex"), done.stdout.splitlines())
    assert output is None
    assert types(events) == ["message"]
    assert events[0].payload["error"] is True
    assert events[0].message == "fake failure requested"


# --- parsing details --------------------------------------------------------------------------


def test_codex_last_agent_message_wins() -> None:
    lines = [
        json.dumps({"type": "item.completed", "item": {"id": "a", "type": "agent_message", "text": "first"}}),
        json.dumps({"type": "item.completed", "item": {"id": "b", "type": "agent_message", "text": "second"}}),
    ]
    _, output = fold(get("codex"), lines)
    assert output == "second"


def test_codex_mcp_tool_call_becomes_tool_use_and_error_event_is_flagged() -> None:
    lines = [
        json.dumps({"type": "item.started", "item": {"id": "m", "type": "mcp_tool_call", "server": "docs",
                                                      "tool": "search", "arguments": {"q": "x"},
                                                      "status": "in_progress"}}),
        json.dumps({"type": "error", "message": "stream disconnected"}),
    ]
    events, _ = fold(get("codex"), lines)
    assert types(events) == ["tool_use", "message"]
    assert events[0].payload["name"] == "docs.search" and events[0].payload["input"] == {"q": "x"}
    assert events[1].payload["error"] is True and events[1].message == "stream disconnected"


def test_claude_tool_result_with_text_blocks_and_long_output_is_joined_and_truncated() -> None:
    long = "x" * 5000
    line = json.dumps({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": [{"type": "text", "text": long}, {"type": "text", "text": "tail"}]},
    ]}})
    events, _ = fold(get("claude-code"), [line])
    assert types(events) == ["command_finished"]
    payload = events[0].payload
    assert payload["is_error"] is True and payload["tool_use_id"] == "t1"
    assert payload["output"].startswith("x" * 4000)
    assert "tail" not in payload["output"]
    assert len(payload["output"]) < 4100


def test_long_assistant_text_is_summarized_in_message_and_kept_whole_in_payload() -> None:
    text = "word " * 100
    line = json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}})
    events, output = fold(get("claude-code"), [line])
    assert output is None
    assert len(events[0].message) <= 200
    assert events[0].payload["text"] == text


def test_non_bash_tool_use_is_not_a_command() -> None:
    line = json.dumps({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t2", "name": "Read", "input": {"file_path": "/a"}}]}})
    events, _ = fold(get("claude"), [line])
    assert types(events) == ["tool_use"]
    assert events[0].payload == {"id": "t2", "name": "Read", "input": {"file_path": "/a"}}


MALFORMED = [
    "",
    "   ",
    "not json at all",
    "{truncated",
    "[1, 2, 3]",
    "42",
    "null",
    '"just a string"',
    "{}",
    '{"type": 7}',
    '{"type": "assistant"}',
    '{"type": "assistant", "message": "text"}',
    '{"type": "assistant", "message": {"content": 5}}',
    '{"type": "assistant", "message": {"content": [1, null, {"type": "tool_use", "input": "x"}]}}',
    '{"type": "user", "message": {"content": "a plain user prompt"}}',
    '{"type": "user", "message": {"content": [{"type": "tool_result", "content": {"odd": true}}]}}',
    '{"type": "result", "result": 3, "num_turns": "many"}',
    '{"type": "item.completed"}',
    '{"type": "item.completed", "item": null}',
    '{"type": "item.completed", "item": {"type": "command_execution", "command": 5}}',
    '{"type": "item.completed", "item": {"type": "file_change", "changes": [1, {"path": 2}]}}',
    '{"type": "item.started", "item": {"type": "mcp_tool_call", "arguments": {"s": {1, 2}}}}',
    '{"type": "turn.failed", "error": "boom"}',
    '{"type": "error"}',
    "\x00\x1b[31mred\x1b[0m",
]


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_malformed_and_unknown_lines_never_raise(name: str) -> None:
    h = get(name)
    for line in MALFORMED:
        parsed = h.parse_line(line)
        for event in parsed.events:
            assert event.type in {"output", "message", "tool_use", "command_started", "command_finished"}


@pytest.mark.parametrize("name", ["claude-code", "codex"])
def test_non_json_lines_become_output_events_with_the_line(name: str) -> None:
    parsed = get(name).parse_line("Reading prompt from stdin...")
    assert parsed.output is None
    assert types(parsed.events) == ["output"]
    assert parsed.events[0].payload == {"line": "Reading prompt from stdin..."}


@pytest.mark.parametrize("line", [
    '{"type": "system", "subtype": "init", "model": "x"}',
    '{"type": "thread.started", "thread_id": "t"}',
    '{"type": "turn.started"}',
    '{"type": "item.completed", "item": {"type": "reasoning", "text": "hmm"}}',
    '{"type": "stream_event", "event": {}}',
    "[]",
])
def test_json_lines_of_unmapped_kinds_are_ignored(line: str) -> None:
    for name in ("claude-code", "codex"):
        parsed = get(name).parse_line(line)
        if line == "[]":
            assert types(parsed.events) == ["output"]
        else:
            assert parsed.events == [] and parsed.output is None


def test_an_error_subtype_counts_as_an_error_even_when_is_error_is_false() -> None:
    line = json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": False, "num_turns": 9,
                       "total_cost_usd": 0.5, "errors": ["max turns reached"]})
    events, output = fold(get("claude-code"), [line])
    assert output is None
    assert events[0].payload["is_error"] is True and events[0].payload["errors"] == ["max turns reached"]
    assert "max turns reached" in events[0].message


def test_a_parser_bug_on_an_unexpected_shape_keeps_the_line_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(obj: object) -> None:
        raise TypeError("unexpected shape")

    h = harness.CodexHarness()
    monkeypatch.setattr(h, "parse_object", boom)
    parsed = h.parse_line('{"type": "item.completed"}')
    assert types(parsed.events) == ["output"]
    assert parsed.events[0].payload == {"line": '{"type": "item.completed"}'}
