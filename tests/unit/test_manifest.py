"""The MCP bundle manifest (manifest.json) describes the server that `agentdock serve` really is."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from engine.settings import Settings
from mcp_server import cli, mcp_app
from mcp_server.client import DaemonClient

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifest.json"
MANIFEST_VERSION = "0.3"  # the current MCPB spec (modelcontextprotocol/mcpb MANIFEST.md)
MCPB_CLI = "@anthropic-ai/mcpb@2.1.2"  # pinned: the version this manifest was validated with
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "network", "fetch failed")


@pytest.fixture
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


@pytest.fixture
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_manifest_has_the_required_fields_for_its_spec_version(manifest):
    assert manifest["manifest_version"] == MANIFEST_VERSION
    assert manifest["name"] == "agentdock"
    assert manifest["version"] == "0.1.0"
    assert isinstance(manifest["description"], str) and manifest["description"].strip()
    assert manifest["author"] == {"name": "agentdock"}
    server = manifest["server"]
    assert server["type"] == "python"
    assert server["entry_point"] == "mcp_server/cli.py"
    assert set(server["mcp_config"]) <= {"command", "args", "env", "platform_overrides"}


def test_manifest_version_matches_the_package_version(manifest, pyproject):
    assert manifest["version"] == pyproject["project"]["version"]


def test_manifest_launches_the_stdio_server_of_the_installed_command(manifest, pyproject):
    server = manifest["server"]
    assert (ROOT / server["entry_point"]).is_file()
    config = server["mcp_config"]
    assert config["command"] == "agentdock"
    assert pyproject["project"]["scripts"]["agentdock"] == "mcp_server.cli:main"
    assert config["args"] == ["serve"]
    args = cli.parser().parse_args(config["args"])
    assert args.fn is cli.cmd_serve


def test_every_user_config_reference_names_a_declared_option(manifest):
    options = manifest["user_config"]
    env = manifest["server"]["mcp_config"]["env"]
    assert env == {"AGENTDOCK_HOME": "${user_config.home}"}
    referenced = set(re.findall(r"\$\{user_config\.([A-Za-z0-9_]+)\}", json.dumps(manifest["server"])))
    assert referenced == {"home"}
    assert referenced <= set(options)
    home = options["home"]
    assert home["type"] == "directory"
    assert home["default"] == "${HOME}/.agentdock"
    assert home["title"].strip() and home["description"].strip()


def test_manifest_targets_linux_and_the_python_the_package_requires(manifest, pyproject):
    compat = manifest["compatibility"]
    assert compat["platforms"] == ["linux"]
    assert compat["runtimes"] == {"python": pyproject["project"]["requires-python"]}
    assert compat["runtimes"]["python"] == ">=3.11"


@pytest.mark.anyio
async def test_manifest_tools_are_exactly_the_tools_the_server_registers(manifest, tmp_path):
    # The daemon client is never used: listing tools does not reach the daemon.
    settings = Settings(home=tmp_path)
    async with DaemonClient(settings) as daemon_client:
        server = mcp_app.build(daemon_client, settings)
        with anyio.fail_after(10):
            async with Client(server) as client:
                registered = {t.name: t for t in (await client.list_tools()).tools}

    listed = [t["name"] for t in manifest["tools"]]
    assert len(listed) == len(set(listed)), "a tool is listed twice"
    assert set(listed) == set(registered)
    assert len(listed) == 17
    for tool in manifest["tools"]:
        assert set(tool) == {"name", "description"}
        assert tool["description"].strip(), tool["name"]


def test_mcpb_cli_validates_the_manifest():
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not installed; the schema checks above still ran")
    try:
        proc = subprocess.run([npx, "--yes", MCPB_CLI, "validate", str(MANIFEST)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npx {MCPB_CLI} validate` did not finish in 300 s: is the npm registry reachable?")
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(marker in output for marker in NETWORK_ERRORS):
        pytest.fail(f"could not fetch {MCPB_CLI} from the npm registry (network error), so the manifest was not "
                    f"validated:\n{output}")
    assert proc.returncode == 0, f"mcpb validate rejected manifest.json:\n{output}"
    assert "Manifest schema validation passes" in output
