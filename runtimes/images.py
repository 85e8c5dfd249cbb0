"""Build agentdock's container images from local material only.

Each image is built by a module of its own:

* ``agentdock-small:latest`` (`small_image`): ``FROM scratch`` plus the host's static
  busybox and the fake agent CLIs from ``runtimes/fakes/``.  Builds in about a
  second; used by the fast tests.
* ``agentdock-full:latest`` (`full_image`): a real Debian bookworm userland (shell,
  python3, git, coreutils, util-linux).  Built ``FROM debian:bookworm-slim`` when a
  registry is reachable, otherwise from a ``debootstrap`` rootfs imported with
  ``docker import``.
* ``agentdock-agents:latest`` (`agents_image`, only with ``runtimes``): the full image
  plus the real agent CLIs.

What every build shares (the client, the inputs label, contexts) is in `image_build`.
Every image carries the label ``agentdock.inputs=<sha256 of its build inputs>``;
an existing image with the same label is reused unless ``force`` is given, so
``build()`` is cheap to call again.

    python -m runtimes.images [--small|--full|--all] [--force]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any, Callable, Iterable

import docker.errors

from engine import errors
from runtimes import agents_image, clis, full_image, image_build, small_image

_BUILDERS: dict[str, Callable[[Any, bool, image_build.Log], str]] = {
    "small": small_image.build,
    "full": full_image.build,
}


def build(
    which: Iterable[str] = ("small", "full"),
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    runtimes: list[str] | None = None,
) -> list[str]:
    """Build (or find up to date) the named images, and with `runtimes` the agents image holding those
    real CLIs; return their tags. Every failure is an `errors.ImageBuildFailed` (or `InvalidInput` for
    an unknown name) saying what to do."""
    names = list(which)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise errors.InvalidInput("images", f"unknown image(s) {unknown}; choose from {sorted(_BUILDERS)}")
    wanted = clis.parse(runtimes) if runtimes else []
    try:
        api = image_build.client()
        try:
            built = [_BUILDERS[n](api, force, log) for n in names]
            if wanted:
                built.append(agents_image.build(api, wanted, force, log))
            return built
        finally:
            api.close()
    except errors.EngineError:
        raise
    except docker.errors.DockerException as exc:
        raise image_build.ImageBuildError(f"the Docker engine failed a step of the build: {exc}",
                                          suggested_command="docker info",
                                          evidence={"type": type(exc).__name__}) from exc
    except subprocess.SubprocessError as exc:
        raise image_build.ImageBuildError(f"a build command failed: {exc}",
                                          suggested_command="agentdock image build --force",
                                          evidence={"type": type(exc).__name__}) from exc
    except OSError as exc:  # a tool that will not start, the disk, the Docker socket (requests' errors too)
        raise image_build.ImageBuildError(f"a build step could not run: {exc}", suggested_command="docker info",
                                          evidence={"type": type(exc).__name__}) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.images", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--small", action="store_const", const=("small",), dest="which", help="only the small image")
    group.add_argument("--full", action="store_const", const=("full",), dest="which", help="only the full image")
    group.add_argument("--all", action="store_const", const=("small", "full"), dest="which", help="both (default)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    which = args.which or ("small", "full")
    try:
        tags = build(which, force=args.force, log=lambda s: print(s, flush=True))
    except errors.EngineError as exc:
        print(f"images: error: {exc}", file=sys.stderr)
        if exc.suggested_command:
            print(f"images:   try: {exc.suggested_command}", file=sys.stderr)
        return 1
    print("images: ready: " + " ".join(tags), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
