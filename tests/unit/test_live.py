"""The terminal display of a group (`show --watch`, `events --stream`): a progress bar of entries by status
and the latest events, with a run's control characters shown as escapes."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

from rich.console import Console

from engine.groups import models as gm
from mcp_server import live


def group(**counts: int) -> gm.Group:
    now = datetime.now(UTC)
    ec = gm.EntryCounts(total=sum(counts.values()), **counts)
    return gm.Group(id="grp_0123456789abcdef0123", name="fan", workspace_id=None, project_id=None,
                    concurrency_limit=2, expected_runs=10, metadata={}, status=gm.GroupStatus.running,
                    counts=gm.Counts(), entry_counts=ec, is_active=True, status_message="", cancel_requested=False,
                    idempotency_key=None, created_at=now, updated_at=now, finished_at=None)


def test_the_live_view_shows_entries_ended_out_of_the_expected_runs_the_counts_and_the_latest_events():
    event = gm.GroupEvent(id="ev_1", agent_run_group_id="grp_0123456789abcdef0123", agent_run_id="run_1",
                          sequence=7, type="output", message="\x1b]0;pwned\x07hi", payload={},
                          created_at=datetime.now(UTC))
    console = Console(record=True, width=120, color_system=None)
    console.print(live._view(group(queued=3, running=2, succeeded=4, failed=1), deque([live.line(event)])))
    text = console.export_text()
    assert "5/10 ended" in text
    assert "queued 3" in text and "running 2" in text and "succeeded 4" in text and "failed 1" in text
    assert "\x1b" not in text and "\\x1b]0;pwned" in text
