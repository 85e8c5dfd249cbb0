"""The run wrapper (wrapper.sh): how it is launched (its command line and environment), and the trailer
it writes last on stderr, read off the end of a run's stream."""

from __future__ import annotations

import re
from importlib import resources

from engine.ports import Chunk, RunLaunch
from runtimes import naming

SCRIPT = resources.files("runtimes").joinpath("wrapper.sh").read_text()
TRAILER_MARK = b"\x1eagentdock-end "
TRAILER = re.compile(rb"\x1eagentdock-end (\d+) (\d+) (-?\d+)\x1e")
"""What the wrapper writes last on stderr: the offsets it emitted up to, and the run's exit code."""


def command(launch: RunLaunch) -> list[str]:
    return ["/bin/sh", "-c", SCRIPT, "agentdock-run", *launch.argv]


def environment(launch: RunLaunch, stdout_offset: int, stderr_offset: int) -> dict[str, str]:
    """The exec's environment. Secrets go only here, in an exec's environment, never into a
    container's configuration (which `docker inspect` shows): see `RunFollow._follow_ephemeral_exec`."""
    run_dir = f"{naming.RUNS_DIR}/{launch.run_id}"
    return {
        # A HOME of its own, in its directory (removed with it): a HOME shared with the runs beside
        # it would let one plant a ~/.bashrc or ~/.gitconfig that runs as the next. No passwd entry
        # names its uid: these say who it is to the tools that ask.
        "HOME": f"{run_dir}/home", "USER": "agent", "LOGNAME": "agent",
        **launch.env,
        **launch.secret_env,
        "AGENTDOCK_RUN_ID": launch.run_id,
        "AGENTDOCK_RUN_DIR": run_dir,
        "AGENTDOCK_CWD": launch.cwd,
        "AGENTDOCK_PROMPT": launch.prompt,
        "AGENTDOCK_REQUIRE": launch.require or "",
        "AGENTDOCK_STDOUT_OFFSET": str(stdout_offset),
        "AGENTDOCK_STDERR_OFFSET": str(stderr_offset),
        "AGENTDOCK_STDOUT_CAP": str(launch.stdout_cap),
        "AGENTDOCK_STDERR_CAP": str(launch.stderr_cap),
        "AGENTDOCK_ARTIFACTS": "\n".join(launch.artifact_paths),
        "AGENTDOCK_ARTIFACT_MAX": str(launch.artifact_max_bytes),
    }


class Trailer:
    """Holds back what may be the start of the wrapper's trailer at the end of stderr, and reads it
    once the stream ends. The run cannot pass off its own text as the trailer: the wrapper writes the
    real one after all the run's output, and only the stream's very last bytes are taken for it."""

    def __init__(self) -> None:
        self.held = b""
        self.found: tuple[int, int, int] | None = None

    def take(self, chunk: Chunk) -> list[Chunk]:
        if chunk.stream != "stderr":
            return [chunk]
        data = self.held + chunk.data
        cut = data.rfind(TRAILER_MARK)
        if cut < 0 or len(data) - cut > 64:
            cut = len(data)
            for n in range(min(len(TRAILER_MARK) - 1, len(data)), 0, -1):  # a mark split across chunks
                if data.endswith(TRAILER_MARK[:n]):
                    cut = len(data) - n
                    break
        self.held = data[cut:]
        return [Chunk(stream="stderr", data=data[:cut])] if cut else []

    def end(self) -> list[Chunk]:
        match = TRAILER.fullmatch(self.held)
        if match is not None:
            self.found = (int(match[1]), int(match[2]), int(match[3]))
            self.held = b""
            return []
        held, self.held = self.held, b""
        return [Chunk(stream="stderr", data=held)] if held else []

    def says(self, offsets: dict[str, int]) -> int | None:
        """The run's exit code, when the trailer came and its offsets are what arrived."""
        if self.found is None or (self.found[0], self.found[1]) != (offsets["stdout"], offsets["stderr"]):
            return None
        return self.found[2]
