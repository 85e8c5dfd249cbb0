"""The operation table is the one declaration: the permission list, the manifest, the README's table,
the HTTP routes, the CLI and the live `tools/list` all agree with it."""

from __future__ import annotations

import argparse
import json
import types

import anyio
import pytest

from engine import errors, lineage, models
from engine.runs import models as rm
from engine.settings import Settings
from mcp_server import areas, cli, http, mcp_app, ops, reference
from mcp_server.api import InProcessAPI


@pytest.fixture(scope="module")
def live() -> list[dict]:
    return anyio.run(reference.live_tools)


def test_the_manifest_and_the_readme_table_are_made_from_the_live_tools(live):
    manifest, readme = reference.rendered(live)
    assert reference.MANIFEST.read_text() == manifest, "manifest.json is stale: run python -m mcp_server.reference"
    assert reference.README.read_text() == readme, "README's tools table is stale: run python -m mcp_server.reference"


def test_the_permission_list_names_exactly_each_areas_tools_in_their_order(live):
    listed = [t["name"] for t in live]
    by_area = {}
    for name in listed:
        by_area.setdefault(lineage.TOOLSET_OF[name], []).append(name)
    for area in areas.AREAS:
        assert tuple(by_area.get(area.NAME, [])) == tuple(
            t for t in lineage.TOOLS_BY_TOOLSET[area.NAME] if t not in lineage.SESSIONS_ONLY), area.NAME
    assert len(listed) == len(set(listed))


def test_every_row_is_one_unique_name_and_route():
    rows = areas.all_ops()
    assert len({op.name for op in rows}) == len(rows)
    routes = [(op.method, op.path) for op in rows]
    assert len(set(routes)) == len(routes)
    for op in rows:
        assert op.toolset in {a.NAME for a in areas.AREAS}
        for field in op.path_fields:
            assert field in op.input.model_fields, f"{op.name}: path field {field} is not an input field"
        for field in op.args:
            assert field in op.input.model_fields, f"{op.name}: argument {field} is not an input field"
        if op.wait:
            assert op.wait in op.input.model_fields, op.name


def test_every_routed_row_is_served_at_its_path_with_its_method(tmp_path):
    engine = types.SimpleNamespace(settings=Settings(home=tmp_path), groups=None, runs=None)  # routes only
    served = {(e.path, m) for e in areas.endpoints(engine) for m in e.methods}  # type: ignore[arg-type]
    for op in areas.all_ops():
        route = op.path.replace("}", ":id}")
        assert (route, op.method) in served, op.name


def test_every_cli_row_is_a_command_with_a_flag_or_argument_per_input_field():
    parser = cli.parser()
    for op in areas.all_ops():
        if op.cli is None:
            continue
        words = op.cli.split()
        sub = parser
        for w in words:
            action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
            sub = action.choices[w]
        dests = {a.dest for a in sub._actions}
        for field in op.input.model_fields:
            assert field in dests, f"agentdock {op.cli}: no argument for {field}"
        assert sub.description or any(a.help for a in action._choices_actions if a.dest == words[-1]), op.cli


def test_a_wait_past_the_mcp_bound_is_cut_to_it(tmp_path):
    seen = []

    class Recorder(InProcessAPI):
        async def call(self, op, inp=None, /, **fields):  # type: ignore[no-untyped-def]
            seen.append(getattr(op.parse(inp, **fields), op.wait))
            raise errors.NotFound("run", "run_" + "0" * 20)

    tool = ops.tool(areas.runs.GET, Recorder(None, None), 45)  # type: ignore[arg-type]
    result = anyio.run(tool.fn, {"run_id": "run_" + "0" * 20, "wait_seconds": 3000}, None)
    assert result.is_error and seen == [45]


def test_the_http_input_takes_the_seed_names_the_schema_does_not_advertise():
    run = models.parse(rm.RunCreate, {"prompt": "p", "sandbox_id": "sbx_" + "a" * 20})
    assert run.sandbox_id == "sbx_" + "a" * 20
    schema = json.dumps(mcp_app.AgentRunInput.model_json_schema())
    assert "sandbox_id" not in schema and "computer_id" not in schema and "agent_profile_id" not in schema
    assert models.parse(areas.runs.EventsInput, {"run_id": "run_" + "0" * 20, "after": 3, "wait": 1}).after_sequence == 3
    assert http.MAX_WAIT_SECONDS >= 50
