"""The adapters' failure classification, fed what the real CLIs printed on this machine without a
credential, or with a key the (scripted) API refused with a 401 (claude-code 2.1.332, pi 0.73.1,
hermes-agent 0.19.0; lines trimmed of unrelated fields)."""

from __future__ import annotations

from engine.ports import Failure
from runtimes.adapters import get, resolver
from engine.settings import Settings

CLAUDE_NO_CREDENTIAL = [
    '{"type":"system","subtype":"init","cwd":"/workspace","session_id":"ae75","tools":["Bash"],"model":"claude-opus-5-5","apiKeySource":"none","claude_code_version":"2.1.332"}',
    '{"type":"assistant","message":{"id":"ddd9","model":"<synthetic>","role":"assistant","stop_reason":"stop_sequence","type":"message","content":[{"type":"text","text":"Not logged in · Please run /login"}]},"parent_tool_use_id":null,"session_id":"ae75","error":"authentication_failed","is_api_error_message":true}',
    '{"duration_api_ms":0,"stop_reason":"stop_sequence","session_id":"ae75","total_cost_usd":0,"permission_denials":[],"terminal_reason":"api_error","is_error":true,"num_turns":1,"subtype":"success","result":"Not logged in · Please run /login","type":"result","duration_ms":141}',
]
CLAUDE_REFUSED_KEY = [
    '{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":609,"error_status":401,"error":"authentication_failed","session_id":"5c3a"}',
    '{"type":"assistant","message":{"id":"27f4","model":"<synthetic>","role":"assistant","stop_reason":"stop_sequence","type":"message","content":[{"type":"text","text":"Invalid API key · Fix external API key"}]},"session_id":"5c3a","error":"authentication_failed"}',
    '{"duration_api_ms":0,"stop_reason":"stop_sequence","session_id":"5c3a","total_cost_usd":0,"is_error":true,"num_turns":1,"subtype":"success","api_error_status":401,"result":"Invalid API key · Fix external API key","type":"result","terminal_reason":"api_error"}',
]
PI_REFUSED_KEY = [
    '{"type":"message_end","message":{"role":"assistant","content":[],"api":"anthropic-messages","provider":"anthropic","model":"claude-opus-4-7","usage":{"input":0,"output":0,"cacheRead":0,"cacheWrite":0,"totalTokens":0},"stopReason":"error","errorMessage":"401 {\\"type\\":\\"error\\",\\"error\\":{\\"type\\":\\"authentication_error\\",\\"message\\":\\"invalid x-api-key\\"}}"}}',
    '{"type":"agent_end","messages":[{"role":"user","content":[{"type":"text","text":"go"}]},{"role":"assistant","content":[],"usage":{"input":0,"output":0,"cacheRead":0,"cacheWrite":0},"stopReason":"error"}]}',
]
PI_NO_KEY = ("No API key found for the selected model.\n\nUse /login to log into a provider via OAuth or API key. See:\n"
             "  /opt/agentdock/pi/node_modules/@mariozechner/pi-coding-agent/docs/providers.md\n")
HERMES_NO_PROVIDER = ("hermes -z: agent failed: No inference provider configured. Run 'hermes model' to choose a "
                      "provider and model, or set an API key (OPENROUTER_API_KEY, OPENAI_API_KEY, etc.) in "
                      "~/.hermes/.env.\n")


def fold_failure(provider: str, lines: list[str]) -> tuple[Failure | None, str | None]:
    h = get(provider)
    failure, output = None, None
    for line in lines:
        parsed = h.parse_line(line)
        failure = parsed.failure or failure
        output = parsed.output if parsed.output is not None else output
    return failure, output


def test_claude_not_logged_in_is_auth_required_naming_anthropic_api_key() -> None:
    hint, output = fold_failure("claude-code", CLAUDE_NO_CREDENTIAL)
    failure = get("claude-code").classify(1, "", hint)
    assert failure is not None and failure.kind == "auth_required"
    assert "agentdock secrets set ANTHROPIC_API_KEY" in failure.message and "Not logged in" in failure.message
    assert output == "Not logged in · Please run /login"


def test_claude_refused_key_is_auth_required_and_each_retry_an_error_event() -> None:
    retry = get("claude-code").parse_line(CLAUDE_REFUSED_KEY[0])
    assert [(e.type, e.payload["error"], e.payload["status"], e.payload["attempt"]) for e in retry.events] == [
        ("message", True, 401, 1)]
    hint, output = fold_failure("claude-code", CLAUDE_REFUSED_KEY)
    failure = get("claude-code").classify(1, "", hint)
    assert failure is not None and failure.kind == "auth_required" and "Invalid API key" in failure.message
    assert output == "Invalid API key · Fix external API key"


def test_pi_refused_key_in_its_last_message_is_auth_required() -> None:
    hint, output = fold_failure("pi", PI_REFUSED_KEY)
    failure = get("pi").classify(1, "", hint)
    assert failure is not None and failure.kind == "auth_required" and "invalid x-api-key" in failure.message
    assert output is None


def test_pi_and_hermes_no_key_on_stderr_is_auth_required() -> None:
    pi = get("pi").classify(1, PI_NO_KEY, None)
    hermes = get("hermes").classify(1, HERMES_NO_PROVIDER, None)
    assert pi is not None and pi.kind == "auth_required" and "ANTHROPIC_API_KEY" in pi.message
    assert hermes is not None and hermes.kind == "auth_required" and "OPENROUTER_API_KEY" in hermes.message


def test_codex_refused_key_in_its_error_events_is_auth_required() -> None:
    lines = ['{"type":"thread.started","thread_id":"t"}', '{"type":"turn.started"}',
             '{"type":"error","message":"unexpected status 401 Unauthorized: Incorrect API key provided"}',
             '{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized"}}']
    hint, _ = fold_failure("codex", lines)
    failure = get("codex").classify(1, "", hint)
    assert failure is not None and failure.kind == "auth_required" and "CODEX_API_KEY" in failure.message


def test_codex_own_credential_check_line_is_auth_required() -> None:
    failure = get("codex").classify(78, "agentdock: codex: no credential: set one of CODEX_API_KEY, OPENAI_API_KEY\n",
                                    None)
    assert failure is not None and failure.kind == "auth_required"


def test_an_ordinary_failure_is_not_classified() -> None:
    for provider in ("claude-code", "codex", "pi", "hermes", "osa", "custom"):
        assert get(provider).classify(1, "Traceback: ZeroDivisionError\nsomething else broke\n", None) is None


def test_the_osa_template_comes_from_the_setting_with_its_first_word_as_the_binary(tmp_path) -> None:
    osa = resolver(Settings(home=tmp_path, osa_command="osa-agent run --json"))("osa")
    assert osa.binary == "osa-agent"
    assert osa.argv(type("R", (), {"model": "m", "prompt": "p", "command": None, "cwd": "/workspace"})()) == [
        "sh", "-c", "osa-agent run --json", "osa", "m"]
    assert resolver(Settings(home=tmp_path))("osa").argv(None) == ["osa"]  # type: ignore[arg-type]
