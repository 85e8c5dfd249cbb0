"""How big a bench runs: its full size, or with `--quick` a tiny one that only shows the bench still runs
end to end and prints its figures (which then mean nothing). Each size can also be set by its
AGENTDOCK_BENCH_* variable, named in the bench."""

from __future__ import annotations

import argparse
import functools
import sys


@functools.cache
def quick() -> bool:
    """Whether the command line asked for the tiny size; `--help` says so, anything else is an error."""
    main = sys.modules["__main__"]
    parser = argparse.ArgumentParser(prog=f"python bench/{sys.argv[0].rsplit('/', 1)[-1]}",
                                     description=(main.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny size: checks the bench runs and prints its figures; the figures mean nothing")
    return parser.parse_args().quick

