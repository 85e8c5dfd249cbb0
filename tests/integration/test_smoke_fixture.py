import anyio
import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_custom_run_in_a_sandbox_records_stdout_stderr_and_exit_code(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="echo out; echo err >&2; exit 3"))
    with anyio.fail_after(30):
        run = await engine.runs.wait(ROOT, run.id, 30)
    assert (run.status, run.exit_code, run.output, run.stderr, run.failure_kind) == (
        "failed", 3, "out\n", "err\n", "nonzero_exit")
