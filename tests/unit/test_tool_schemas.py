"""The tool list a client reads: lean, portable, described, in a fixed order, within its byte budget; and
every tool's real result validates against its lean output schema (the MCP client checks it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp_types import ListToolsResult, Tool

from engine.channels import models as cm
from engine import errors, lineage
from engine.app import Engine
from engine.callers import ROOT
from engine.settings import Settings
from mcp_server import areas, cli, mcp_app
from mcp_server.api import InProcessAPI
from runtimes import adapters
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio

ALL_BYTES_AIM = 80_000
COORDINATOR_BYTES_AIM = 25_000
CONSTRAINING = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "not")


def engine_for(tmp_path) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest"), backend=FakeBackend(), harnesses=adapters.get)


async def listed(tmp_path, toolsets: list[str] | None = None) -> ListToolsResult:
    async with engine_for(tmp_path).running() as engine:
        with anyio.fail_after(20):
            async with Client(mcp_app.build(InProcessAPI(engine, ROOT), engine.settings, toolsets)) as client:
                return await client.list_tools()


def wire_bytes(result: ListToolsResult) -> int:
    """The size of `tools/list`'s result as the server sends it (compact JSON, unset fields left out)."""
    return len(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True),
                          separators=(",", ":")).encode())


def nodes(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema with its path (`properties.runs.items.properties.prompt`)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in ("properties", "$defs", "patternProperties"):
        for name, sub in (schema.get(key) or {}).items():
            yield from nodes(sub, f"{path}.{key}.{name}".lstrip("."))
    for key in ("items", "additionalProperties", "not", "contains"):
        yield from nodes(schema.get(key), f"{path}.{key}".lstrip("."))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key) or []):
            yield from nodes(sub, f"{path}.{key}[{i}]".lstrip("."))


def described(prop: dict[str, Any], defs: dict[str, Any]) -> bool:
    ref = prop.get("$ref", "").removeprefix("#/$defs/")
    return bool(prop.get("description") or defs.get(ref, {}).get("description"))


async def test_every_input_parameter_has_a_description(tmp_path):
    tools = (await listed(tmp_path, ["all"])).tools
    missing = [f"{tool.name}: {path}.properties.{name}".replace(": .", ": ")
               for tool in tools for path, node in nodes(tool.input_schema)
               for name, prop in (node.get("properties") or {}).items()
               if not described(prop, tool.input_schema.get("$defs", {}))]
    assert missing == []
    assert len(tools) >= 40


async def test_every_schema_is_valid_and_portable_every_value_typed_and_one_type_per_schema(tmp_path):
    """What the Inspector's `--strict` checks: a schema with no keyword (anything goes) or a `type` array
    is legal JSON Schema but is dropped or refused by clients mapping onto a single-type dialect."""
    tools = (await listed(tmp_path, ["all"])).tools
    untyped, type_lists, dangling = [], [], []
    for tool in tools:
        for kind, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            assert schema is not None and schema["type"] == "object", (tool.name, kind)
            Draft202012Validator.check_schema(schema)
            for path, node in nodes(schema):
                where = f"{tool.name} {kind} {path}"
                if not any(k in node for k in CONSTRAINING):
                    untyped.append(where)
                if isinstance(node.get("type"), list):
                    type_lists.append(where)
                ref = node.get("$ref")
                if ref is not None and ref.removeprefix("#/$defs/") not in schema.get("$defs", {}):
                    dangling.append(where)
    assert (untyped, type_lists, dangling) == ([], [], [])


async def test_input_schemas_are_lean_and_keep_what_a_caller_needs(tmp_path):
    by_name = {t.name: t for t in (await listed(tmp_path, ["all"])).tools}
    fat = [f"{name} {path}" for name, tool in by_name.items() for path, node in nodes(tool.input_schema)
           if "title" in node or ("default" in node and node["default"] is None)
           or ({"type": "null"} in node.get("anyOf", []) and len(node["anyOf"]) == 2)]
    assert fat == []
    assert not any("$defs" in t.input_schema for t in by_name.values() if t.name != "channel_send"
                   and t.name != "channel_reply"), "a definition used once is written where it is used"

    run = by_name["agent_run"].input_schema
    assert run["additionalProperties"] is False and run["required"] == ["prompt"]
    assert run["properties"]["target_id"]["pattern"] == "^(?:sbx|cmp)_[0-9a-f]{20}$"
    assert {"sandbox_id", "computer_id", "agent_profile_id"}.isdisjoint(run["properties"])  # one name each
    assert run["properties"]["provider"]["enum"][-1] == "custom" and run["properties"]["provider"]["type"] == "string"
    assert run["properties"]["timeout"]["default"] == 1800
    assert run["properties"]["metadata"]["type"] == "object"
    item = by_name["group_dispatch"].input_schema["properties"]["runs"]
    assert (item["minItems"], item["maxItems"], item["items"]["required"]) == (1, 1000, ["prompt"])
    body = by_name["channel_send"].input_schema["properties"]["body"]
    assert body["description"].startswith("Any JSON")


async def test_output_schemas_name_each_top_level_field_with_its_types_and_no_more(tmp_path):
    by_name = {t.name: t for t in (await listed(tmp_path, ["all"])).tools}
    run = by_name["agent_run_get"].output_schema
    assert set(run) == {"type", "properties"}
    props = run["properties"]
    assert props["status"] == {"type": "string"} and props["timeout"] == {"type": "integer"}
    assert props["exit_code"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["metadata"] == {"type": "object"} and props["secrets"] == {"type": "array"}
    me = by_name["agent_me"].output_schema["properties"]
    assert me["self"] == {"type": "object"} and "self_" not in me  # the names the record is sent with
    assert not any("description" in node or "title" in node
                   for t in by_name.values() for _, node in nodes(t.output_schema))


async def test_the_tool_list_stays_within_its_byte_budget(tmp_path, capsys):
    everything = await listed(tmp_path, ["all"])
    coordinator = await listed(tmp_path, ["coordinator"])
    figures = {"all": (len(everything.tools), wire_bytes(everything)),
               "coordinator": (len(coordinator.tools), wire_bytes(coordinator))}
    with capsys.disabled():
        print(f"\ntools/list: {figures['all'][0]} tools, {figures['all'][1]:,} bytes; `--toolsets coordinator`: "
              f"{figures['coordinator'][0]} tools, {figures['coordinator'][1]:,} bytes")
    assert figures["all"][1] < ALL_BYTES_AIM, figures
    assert figures["coordinator"][1] < COORDINATOR_BYTES_AIM, figures
    assert [t.name for t in coordinator.tools] == [t.name for t in everything.tools if t.name in mcp_app.COORDINATOR]


async def test_tools_are_listed_in_toolset_order_then_declaration_order_every_time(tmp_path):
    first = [t.name for t in (await listed(tmp_path)).tools]
    again = [t.name for t in (await listed(tmp_path / "again", list(reversed(mcp_app.TOOLSETS)))).tools]
    async with engine_for(tmp_path / "declared").running() as engine:
        declared = [t.name for area in areas.AREAS
                    for t in areas.tools(area, InProcessAPI(engine, ROOT), engine.settings)
                    if t.name not in lineage.SESSIONS_ONLY]
    assert first == again == declared
    toolsets = [mcp_app.TOOLSETS.index(lineage.TOOLSET_OF[name]) for name in first]
    assert toolsets == sorted(toolsets) and len(first) >= 40


async def test_toolsets_take_presets_and_single_tools_and_refuse_unknown_names(tmp_path):
    mixed = [t.name for t in (await listed(tmp_path, ["soul", "agent_run_get", "devices"])).tools]
    assert mixed == ["sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete", "agent_run_get",
                     "soul_get", "soul_validate"]
    assert len((await listed(tmp_path / "all", ["all"])).tools) == len((await listed(tmp_path / "none")).tools)
    with pytest.raises(errors.InvalidInput, match="unknown toolset or tool 'runz'"):
        mcp_app.chosen_tools(["runs", "runz"])


def test_serve_refuses_an_unknown_toolset_before_starting_a_daemon(tmp_path, capsys):
    home = tmp_path / "home"
    assert cli.main(["serve", "--home", str(home), "--toolsets", "runs,runz"]) == 1
    assert "unknown toolset or tool 'runz'" in capsys.readouterr().err
    assert not home.exists()


async def test_the_instructions_say_what_each_toolset_is_for_how_waits_go_on_and_how_to_choose(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        async with Client(mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)) as client:
            said = client.instructions
    assert said == mcp_app.INSTRUCTIONS
    assert all(f"- {toolset}:" in said for toolset in mcp_app.TOOLSETS if lineage.TOOLS_BY_TOOLSET[toolset])
    assert "after_sequence" in said and "--toolsets" in said and "bounded" in said


# ---------------------------------------------------------------- real results against the lean schemas


async def call(client: Client, name: str, args: dict[str, Any], done: set[str]) -> dict[str, Any]:
    """A call that must succeed; the client has checked its structured content against the tool's output
    schema (it raises otherwise)."""
    result = await client.call_tool(name, args)
    assert not result.is_error, (name, result.content)
    assert result.structured_content is not None
    Draft202012Validator(tool_schemas[name]).validate(result.structured_content)
    done.add(name)
    return result.structured_content


tool_schemas: dict[str, dict[str, Any]] = {}


async def test_every_tools_real_result_validates_against_its_lean_output_schema(tmp_path):
    done: set[str] = set()
    async with engine_for(tmp_path).running() as engine:
        with anyio.fail_after(60):
            async with Client(mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)) as client:
                tools: list[Tool] = (await client.list_tools()).tools
                tool_schemas.update({t.name: t.output_schema for t in tools if t.output_schema})
                sid = (await call(client, "sandbox_create", {}, done))["id"]
                await call(client, "sandbox_list", {}, done)
                await call(client, "sandbox_get", {"sandbox_id": sid}, done)
                run = await call(client, "agent_run", {"prompt": "p", "command": "out=hi", "sandbox_id": sid}, done)
                assert run["status"] == "succeeded", run
                for name in ("agent_run_get", "agent_run_events", "agent_run_artifacts"):
                    await call(client, name, {"run_id": run["id"]}, done)
                await call(client, "agent_run_list", {}, done)
                blocked = await call(client, "agent_run", {"prompt": "p", "command": "block", "sandbox_id": sid,
                                                           "async": True}, done)
                await call(client, "agent_run_cancel", {"run_id": blocked["id"]}, done)

                group = await call(client, "group_create", {"name": "g", "metadata": {"k": 1}}, done)
                await call(client, "group_dispatch", {"group_id": group["id"],
                                                      "runs": [{"prompt": "p", "command": "out=x"}]}, done)
                for name in ("group_get", "group_runs", "group_events"):
                    await call(client, name, {"group_id": group["id"]}, done)
                await call(client, "group_list", {}, done)
                waiting = await call(client, "group_create", {"name": "h", "expected_runs": 1}, done)
                await call(client, "group_cancel", {"group_id": waiting["id"]}, done)

                for name in ("agent_me", "agent_context", "coordinator_config", "soul_get", "channel_list",
                             "task_list", "profile_list", "approval_list"):
                    await call(client, name, {}, done)
                await call(client, "soul_validate", {"content": "---\nrole: r\n---\nbody\n"}, done)
                child = await call(client, "agent_spawn", {"agent_name": "w", "ttl_seconds": 600}, done)

                task = await call(client, "task_create", {"title": "t", "payload": {"n": 1}}, done)
                await call(client, "task_get", {"task_id": task["id"]}, done)
                claimed = (await call(client, "task_claim_next", {}, done))["claim"]
                holding = {"task_run_id": claimed["run"]["id"], "claim_token": claimed["claim_token"]}
                await call(client, "task_heartbeat", holding, done)
                await call(client, "task_complete", {**holding, "result": ["done"]}, done)
                for ending in ("task_fail", "task_release"):
                    await call(client, "task_create", {"title": ending}, done)
                    claimed = (await call(client, "task_claim_next", {}, done))["claim"]
                    holding = {"task_run_id": claimed["run"]["id"], "claim_token": claimed["claim_token"]}
                    await call(client, ending, {**holding, **({"error": "no"} if ending == "task_fail" else {})},
                               done)

                channels = (await call(client, "channel_list", {}, done))["channels"]
                channel = next(c["id"] for c in channels if c["channel"].startswith("family:"))
                await call(client, "channel_send", {"channel_id": channel, "body": {"hello": [1, None]}}, done)
                worker = await engine.sessions.authenticate(child["token"])
                await engine.channels.send(worker, cm.Send(channel_id=channel, body="from the child"))
                got = await call(client, "channel_recv", {"channel_id": channel}, done)
                await call(client, "channel_reply", {"reply_to_message_id": got["messages"][0]["message_id"],
                                                     "body": "ok"}, done)
                await call(client, "agent_stop", {"session_id": child["session"]["id"]}, done)

                profile = await call(client, "profile_create", {"name": "p", "runtime": "custom"}, done)
                await call(client, "profile_get", {"profile_id": profile["id"]}, done)
                await call(client, "profile_update", {"profile_id": profile["id"], "description": "d"}, done)
                await call(client, "profile_delete", {"profile_id": profile["id"]}, done)
                await call(client, "sandbox_delete", {"sandbox_id": sid}, done)

    asked_only_of_a_person = {"approval_get", "approval_review"}  # need a pending approval, or elicitation
    assert {t.name for t in tools} - done == asked_only_of_a_person


async def test_annotations_say_only_what_the_protocols_defaults_do_not(tmp_path):
    hints = {t.name: t.annotations.model_dump(by_alias=True, exclude_none=True)
             for t in (await listed(tmp_path)).tools if t.annotations}
    assert hints["agent_run_get"] == {"readOnlyHint": True, "openWorldHint": False}
    assert hints["sandbox_delete"] == {"destructiveHint": True, "idempotentHint": True, "openWorldHint": False}
    assert hints["task_create"] == {"destructiveHint": False, "openWorldHint": False}
    assert hints["agent_run"] == {"destructiveHint": False, "openWorldHint": True}
    assert len(hints) >= 40 and all("destructiveHint" in h or h.get("readOnlyHint") for h in hints.values())
