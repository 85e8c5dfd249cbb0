"""The one mapping from exceptions to MCP tool errors."""

from __future__ import annotations

from engine import errors
from mcp_server import mcp_tools


def test_an_engine_error_inside_a_task_group_is_mapped_as_that_error_not_as_an_internal_one():
    grouped = ExceptionGroup("unhandled errors in a TaskGroup",
                             [errors.SandboxUnavailable("the daemon went away", suggested_command="agentdock daemon start")])

    result = mcp_tools.error_result(grouped)

    assert result.is_error
    diag = result.structured_content["diagnostic"]
    assert (diag["code"], diag["message"], diag["suggested_command"]) == (
        "sandbox_unavailable", "the daemon went away", "agentdock daemon start")


def test_an_unexpected_error_is_a_generic_diagnostic_without_its_internals():
    result = mcp_tools.error_result(ExceptionGroup("two", [KeyError("secret-key"), ValueError("x")]))

    diag = result.structured_content["diagnostic"]
    assert diag["code"] == "internal_error" and diag["id"].startswith("diag_")
    assert "secret-key" not in result.content[0].text
