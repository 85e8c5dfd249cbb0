"""The full image, ``agentdock-full``: a real Debian bookworm userland (shell, python3, git, coreutils,
util-linux). Built ``FROM debian:bookworm-slim`` when a registry is reachable, otherwise from a
``debootstrap`` rootfs (cached under the home) imported with ``docker import``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import docker

from runtimes import image_build

FULL_IMAGE = "agentdock-full:latest"
FULL_BASE_IMAGE = "agentdock-full-base:latest"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_INCLUDE = "python3,ca-certificates,git,procps"
ROOTFS_MARKER = ".agentdock-rootfs-complete"

# The non-root user and workspace every full image ends with, whichever way its base was made.
AGENT_USER_STEPS = """\
RUN groupadd -g 1000 agent \\
 && useradd -m -u 1000 -g 1000 -d /home/agent -s /bin/bash agent \\
 && mkdir -p /workspace && chown 1000:1000 /workspace
ENV HOME=/home/agent
WORKDIR /workspace
USER 1000:1000
"""

FULL_REGISTRY_DOCKERFILE = """\
FROM debian:bookworm-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 git ca-certificates procps \\
 && rm -rf /var/lib/apt/lists/*
""" + AGENT_USER_STEPS

FULL_BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["/bin/bash"]',
)

FULL_FALLBACK_DOCKERFILE = f"""\
FROM {FULL_BASE_IMAGE}
""" + AGENT_USER_STEPS


def _debootstrap_args(target: Path) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={DEBOOTSTRAP_INCLUDE}",
        DEBIAN_SUITE,
        str(target),
        DEBIAN_MIRROR,
    ]


def agentdock_home() -> Path:
    return Path(os.environ.get("AGENTDOCK_HOME") or Path.home() / ".agentdock")


def rootfs_dir() -> Path:
    return agentdock_home() / "cache" / f"rootfs-{DEBIAN_SUITE}"


def _full_inputs() -> str:
    return image_build.sha256(
        image_build.RECIPE_VERSION,
        FULL_REGISTRY_DOCKERFILE,
        FULL_FALLBACK_DOCKERFILE,
        json.dumps(_debootstrap_args(Path("ROOTFS"))),
        json.dumps(FULL_BASE_CHANGES),
    )


def _base_inputs() -> str:
    return image_build.sha256(image_build.RECIPE_VERSION, json.dumps(_debootstrap_args(Path("ROOTFS"))),
                              json.dumps(FULL_BASE_CHANGES))


def _try_registry_build(api: docker.APIClient, digest: str, log: image_build.Log) -> bool:
    t0 = time.monotonic()
    try:
        for line in image_build.stream_build(api, image_build.context(FULL_REGISTRY_DOCKERFILE), FULL_IMAGE,
                                             {image_build.INPUTS_LABEL: digest}):
            if line.startswith("Step "):
                log(f"images:   {line}")
    except image_build.ImageBuildError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        log(
            f"images: FROM debian:bookworm-slim unavailable ({time.monotonic() - t0:.1f}s: "
            f"{first[:160]}); falling back to debootstrap"
        )
        return False
    return True


def _ensure_rootfs(log: image_build.Log) -> Path:
    target = rootfs_dir()
    marker = target / ROOTFS_MARKER
    want = _base_inputs()
    if marker.is_file() and marker.read_text().strip() == want:
        log(f"images: reusing debootstrap rootfs at {target}")
        return target
    if shutil.which("debootstrap") is None:
        raise image_build.ImageBuildError(
            "debootstrap is missing; the offline build of the full image needs it: "
            "run `apt-get install debootstrap`", suggested_command="apt-get install debootstrap"
        )
    if os.geteuid() != 0:
        raise image_build.ImageBuildError("debootstrap must run as root to build the full image rootfs",
                                          suggested_command="sudo agentdock image build --full")
    if target.exists():
        log(f"images: removing incomplete or outdated rootfs at {target}")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    args = _debootstrap_args(target)
    log(f"images: {' '.join(args)} (takes about a minute)")
    t0 = time.monotonic()
    logfile = target.parent / f"debootstrap-{DEBIAN_SUITE}.log"
    tail: list[str] = []
    # debootstrap prints one "I: Retrieving/Validating/Unpacking/... <pkg>" line per
    # package; collapse those into one line per phase.
    phases = {"Retrieving": "downloading", "Validating": "downloading", "Extracting": "extracting",
              "Unpacking": "unpacking", "Configuring": "configuring"}
    seen: set[str] = set()
    with open(logfile, "w") as lf:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for raw in proc.stdout:
            lf.write(raw)
            line = raw.strip()
            tail.append(line)
            del tail[:-30]
            if not line.startswith("I: "):
                continue
            words = line[3:].split()
            phase = phases.get(words[0] if words else "")
            if phase is None:
                if line.startswith(("I: Installing", "I: Base system", "I: Checking component")):
                    log(f"images:   debootstrap: {line[3:]} ({time.monotonic() - t0:.0f}s)")
            elif phase not in seen:
                seen.add(phase)
                log(f"images:   debootstrap: {phase} packages ({time.monotonic() - t0:.0f}s)")
        rc = proc.wait()
    if rc != 0:
        raise image_build.ImageBuildError(
            f"debootstrap failed (exit {rc}; full log in {logfile}; it needs {DEBIAN_MIRROR} "
            "unless its cache is complete):\n" + "\n".join(tail),
            suggested_command=f"cat {logfile}",
        )
    # apt caches are not needed in the image
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = target / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and (p.suffix == ".deb" or sub.endswith("lists")):
                    p.unlink()
    marker.write_text(want + "\n")
    log(f"images: debootstrap finished in {time.monotonic() - t0:.0f}s")
    return target


def _import_base(api: docker.APIClient, force: bool, log: image_build.Log) -> None:
    want = _base_inputs()
    if not force and image_build.image_label(api, FULL_BASE_IMAGE) == want:
        log(f"images: {FULL_BASE_IMAGE} is up to date")
        return
    root = _ensure_rootfs(log)
    if shutil.which("docker") is None:
        raise image_build.ImageBuildError(
            "the docker CLI is missing (needed for `docker import`): apt-get install docker.io",
            suggested_command="apt-get install docker.io")
    t0 = time.monotonic()
    log(f"images: importing {root} as {FULL_BASE_IMAGE}")
    cmd = ["docker", "import"]
    for change in (*FULL_BASE_CHANGES, f"LABEL {image_build.INPUTS_LABEL}={want}"):
        cmd += ["--change", change]
    cmd += ["-", FULL_BASE_IMAGE]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--exclude", f"./{ROOTFS_MARKER}", "-C", str(root), "-c", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    imp = subprocess.run(cmd, stdin=tar.stdout, capture_output=True, text=True)
    assert tar.stdout is not None
    tar.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    tar_rc = tar.wait()
    if tar_rc != 0 or imp.returncode != 0:
        raise image_build.ImageBuildError(
            f"importing the rootfs failed (tar exit {tar_rc}, docker import exit {imp.returncode}):\n"
            f"{tar_err.strip()}\n{imp.stderr.strip()}",
            suggested_command="agentdock image build --full --force",
        )
    log(f"images: imported {FULL_BASE_IMAGE} in {time.monotonic() - t0:.1f}s")


def build(api: docker.APIClient, force: bool, log: image_build.Log) -> str:
    digest = _full_inputs()
    if not force and image_build.image_label(api, FULL_IMAGE) == digest:
        log(f"images: {FULL_IMAGE} is up to date")
        return FULL_IMAGE
    t0 = time.monotonic()
    log(f"images: building {FULL_IMAGE}")
    if os.environ.get("AGENTDOCK_OFFLINE_ONLY") or not _try_registry_build(api, digest, log):
        _import_base(api, force, log)
        image_build.run_build(api, image_build.context(FULL_FALLBACK_DOCKERFILE), FULL_IMAGE,
                              {image_build.INPUTS_LABEL: digest}, log)
    log(f"images: built {FULL_IMAGE} in {time.monotonic() - t0:.1f}s")
    return FULL_IMAGE
