"""Build agentdock's container images from local material only.

Two images:

* ``agentdock-small:latest``: ``FROM scratch`` plus the host's static busybox and
  the fake agent CLIs from ``runtimes/fakes/``.  Builds in about a second; used by
  the fast tests.
* ``agentdock-full:latest``: a real Debian bookworm userland (shell, python3, git,
  coreutils, util-linux).  Built ``FROM debian:bookworm-slim`` when a registry is
  reachable, otherwise from a ``debootstrap`` rootfs imported with
  ``docker import``.

Every image carries the label ``agentdock.inputs=<sha256 of its build inputs>``;
an existing image with the same label is reused unless ``force`` is given, so
``build()`` is cheap to call again.

    python -m runtimes.images [--small|--full|--all] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import docker
import docker.errors

from engine import errors
from runtimes import clis

SMALL_IMAGE = "agentdock-small:latest"
FULL_IMAGE = "agentdock-full:latest"
AGENTS_IMAGE = "agentdock-agents:latest"
"""The full image plus the real agent CLIs (`build(..., runtimes=[...])`, see `runtimes.clis`)."""
RUNTIMES_LABEL = "agentdock.runtimes"
"""On the agents image: `claude-code=2.1.332,codex=0.171.0`: which CLIs it holds, at which versions."""
FULL_BASE_IMAGE = "agentdock-full-base:latest"

INPUTS_LABEL = "agentdock.inputs"
RECIPE_VERSION = "1"  # bump to invalidate every existing image

BUSYBOX_PATH = Path("/bin/busybox")
FAKES_DIR = Path(__file__).resolve().parent / "fakes"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_INCLUDE = "python3,ca-certificates,git,procps"
ROOTFS_MARKER = ".agentdock-rootfs-complete"

_BUILD_TIMEOUT = 1800  # seconds, for the docker API client

Log = Callable[[str], None]


class ImageBuildError(errors.ImageBuildFailed):
    """An image could not be built; the message says why, `suggested_command` what to do. Every other
    failure of a build (docker-py, a subprocess, the file system) is translated into one by `build()`."""


# --------------------------------------------------------------------------- #
# Recipes
# --------------------------------------------------------------------------- #

SMALL_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
COPY rootfs/ /
RUN mkdir -p /tmp /home/agent /workspace /usr/local/bin \\
 && chmod 1777 /tmp \\
 && chown -R 1000:1000 /home/agent /workspace \\
 && chmod 0755 /home/agent /workspace \\
 && chmod 0644 /etc/passwd /etc/group \\
 && (for f in /usr/local/bin/*; do [ -f "$f" ] && chmod 0755 "$f"; done; true)
ENV PATH=/usr/local/bin:/bin HOME=/home/agent
WORKDIR /workspace
USER 1000:1000
"""

SMALL_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "agent:x:1000:1000:agent:/home/agent:/bin/sh\n"
)
SMALL_GROUP = "root:x:0:\nagent:x:1000:\n"

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


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def agentdock_home() -> Path:
    return Path(os.environ.get("AGENTDOCK_HOME") or Path.home() / ".agentdock")


def rootfs_dir() -> Path:
    return agentdock_home() / "cache" / f"rootfs-{DEBIAN_SUITE}"


def _sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def _client() -> docker.APIClient:
    try:
        client = docker.from_env(timeout=_BUILD_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(
            f"cannot reach the Docker engine ({exc}); start it (scripts/setup.sh does)",
            suggested_command="docker info",
        ) from exc
    return client.api


def _image_label(api: docker.APIClient, tag: str) -> str | None:
    """The inputs label of ``tag``; None if the image does not exist."""
    try:
        info = api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(INPUTS_LABEL, "")


def _fake_files() -> list[Path]:
    if not FAKES_DIR.is_dir():
        return []
    out = []
    for p in sorted(FAKES_DIR.iterdir()):
        if p.name == "__init__.py" or p.name.startswith(".") or p.name.endswith(".pyc"):
            continue
        if p.is_file():
            out.append(p)
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0  # deterministic context
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = 0
    tar.addfile(info)


def _context(
    dockerfile: str, files: dict[str, tuple[bytes, int]] | None = None, dirs: Iterable[str] = ()
) -> io.BytesIO:
    files = files or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
        for d in dirs:
            _add_dir(tar, d)
        for name, (data, mode) in files.items():
            _add_bytes(tar, name, data, mode)
    buf.seek(0)
    return buf


def _stream_build(
    api: docker.APIClient, context: io.BytesIO, tag: str, labels: dict[str, str], *, pull: bool = False
) -> Iterator[str]:
    """Run a build; yield output lines; raise ImageBuildError on failure."""
    tail: list[str] = []
    try:
        chunks = api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            labels=labels,
            pull=pull,
            decode=True,
        )
        for chunk in chunks:
            if "error" in chunk or "errorDetail" in chunk:
                msg = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message", "")
                raise ImageBuildError(
                    f"building {tag} failed: {str(msg).strip()}\n" + "".join(tail[-20:]),
                    suggested_command="agentdock image build --force",
                )
            line = chunk.get("stream")
            if line:
                tail.append(line)
                yield line.rstrip("\n")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}\n" + "".join(tail[-20:]),
                              suggested_command="docker info") from exc
    if _image_label(api, tag) is None:
        raise ImageBuildError(f"building {tag} produced no image:\n" + "".join(tail[-20:]),
                              suggested_command="agentdock image build --force")


def _run_build(api: docker.APIClient, context: io.BytesIO, tag: str, labels: dict[str, str], log: Log) -> None:
    for line in _stream_build(api, context, tag, labels):
        if line.startswith("Step "):
            log(f"images:   {line}")


# --------------------------------------------------------------------------- #
# Small image
# --------------------------------------------------------------------------- #


def _is_static_elf(data: bytes) -> bool:
    """True when ``data`` is an ELF executable without a PT_INTERP (dynamic loader)."""
    if data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    order = "little" if data[5] == 1 else "big"

    def num(off: int, size: int) -> int:
        return int.from_bytes(data[off:off + size], order)

    phoff, phentsize, phnum = (num(0x20, 8), num(0x36, 2), num(0x38, 2)) if is64 else \
        (num(0x1C, 4), num(0x2A, 2), num(0x2C, 2))
    for i in range(phnum):
        if num(phoff + i * phentsize, 4) == 3:  # PT_INTERP
            return False
    return True


def _small_inputs() -> tuple[str, dict[str, tuple[bytes, int]]]:
    if not BUSYBOX_PATH.is_file():
        raise ImageBuildError(
            f"{BUSYBOX_PATH} is missing; the small image needs a static busybox: "
            "run `apt-get install busybox-static`", suggested_command="apt-get install busybox-static"
        )
    busybox = BUSYBOX_PATH.read_bytes()
    if not _is_static_elf(busybox):
        raise ImageBuildError(
            f"{BUSYBOX_PATH} is dynamically linked and cannot run in a FROM-scratch image: "
            "run `apt-get install busybox-static`", suggested_command="apt-get install busybox-static"
        )
    files: dict[str, tuple[bytes, int]] = {
        "busybox": (busybox, 0o755),
        "rootfs/etc/passwd": (SMALL_PASSWD.encode(), 0o644),
        "rootfs/etc/group": (SMALL_GROUP.encode(), 0o644),
    }
    for fake in _fake_files():
        files[f"rootfs/usr/local/bin/{fake.name}"] = (fake.read_bytes(), 0o755)
    digest = _sha256(
        RECIPE_VERSION,
        SMALL_DOCKERFILE,
        *(f"{name}:{mode:o}" for name, (_, mode) in sorted(files.items())),
        *(data for _, (data, _) in sorted(files.items())),
    )
    return digest, files


def small_tag() -> str:
    """The small image's tag for these inputs (`agentdock-small:<digest>`): stable while the fakes are,
    so checkouts with different fakes on one Docker engine do not take `latest` from each other's tests."""
    return f"{SMALL_IMAGE.split(':')[0]}:{_small_inputs()[0][:16]}"


def _build_small(api: docker.APIClient, force: bool, log: Log) -> str:
    digest, files = _small_inputs()
    pinned = f"{SMALL_IMAGE.split(':')[0]}:{digest[:16]}"
    if not force and _image_label(api, SMALL_IMAGE) == digest:
        if _image_label(api, pinned) != digest:
            api.tag(SMALL_IMAGE, pinned.split(":")[0], pinned.split(":")[1])
        log(f"images: {SMALL_IMAGE} is up to date")
        return SMALL_IMAGE
    t0 = time.monotonic()
    log(f"images: building {SMALL_IMAGE} ({len(files) - 3} fake CLI(s))")
    ctx = _context(
        SMALL_DOCKERFILE,
        files,
        dirs=("rootfs", "rootfs/etc", "rootfs/tmp", "rootfs/home", "rootfs/home/agent",
              "rootfs/workspace", "rootfs/usr", "rootfs/usr/local", "rootfs/usr/local/bin"),
    )
    _run_build(api, ctx, SMALL_IMAGE, {INPUTS_LABEL: digest}, log)
    api.tag(SMALL_IMAGE, pinned.split(":")[0], pinned.split(":")[1])
    log(f"images: built {SMALL_IMAGE} in {time.monotonic() - t0:.1f}s")
    return SMALL_IMAGE


# --------------------------------------------------------------------------- #
# Full image
# --------------------------------------------------------------------------- #


def _full_inputs() -> str:
    return _sha256(
        RECIPE_VERSION,
        FULL_REGISTRY_DOCKERFILE,
        FULL_FALLBACK_DOCKERFILE,
        json.dumps(_debootstrap_args(Path("ROOTFS"))),
        json.dumps(FULL_BASE_CHANGES),
    )


def _base_inputs() -> str:
    return _sha256(RECIPE_VERSION, json.dumps(_debootstrap_args(Path("ROOTFS"))), json.dumps(FULL_BASE_CHANGES))


def _try_registry_build(api: docker.APIClient, digest: str, log: Log) -> bool:
    t0 = time.monotonic()
    try:
        for line in _stream_build(api, _context(FULL_REGISTRY_DOCKERFILE), FULL_IMAGE, {INPUTS_LABEL: digest}):
            if line.startswith("Step "):
                log(f"images:   {line}")
    except ImageBuildError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        log(
            f"images: FROM debian:bookworm-slim unavailable ({time.monotonic() - t0:.1f}s: "
            f"{first[:160]}); falling back to debootstrap"
        )
        return False
    return True


def _ensure_rootfs(log: Log) -> Path:
    target = rootfs_dir()
    marker = target / ROOTFS_MARKER
    want = _base_inputs()
    if marker.is_file() and marker.read_text().strip() == want:
        log(f"images: reusing debootstrap rootfs at {target}")
        return target
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is missing; the offline build of the full image needs it: "
            "run `apt-get install debootstrap`", suggested_command="apt-get install debootstrap"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap must run as root to build the full image rootfs",
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
        raise ImageBuildError(
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


def _import_base(api: docker.APIClient, force: bool, log: Log) -> None:
    want = _base_inputs()
    if not force and _image_label(api, FULL_BASE_IMAGE) == want:
        log(f"images: {FULL_BASE_IMAGE} is up to date")
        return
    root = _ensure_rootfs(log)
    if shutil.which("docker") is None:
        raise ImageBuildError("the docker CLI is missing (needed for `docker import`): apt-get install docker.io",
                              suggested_command="apt-get install docker.io")
    t0 = time.monotonic()
    log(f"images: importing {root} as {FULL_BASE_IMAGE}")
    cmd = ["docker", "import"]
    for change in (*FULL_BASE_CHANGES, f"LABEL {INPUTS_LABEL}={want}"):
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
        raise ImageBuildError(
            f"importing the rootfs failed (tar exit {tar_rc}, docker import exit {imp.returncode}):\n"
            f"{tar_err.strip()}\n{imp.stderr.strip()}",
            suggested_command="agentdock image build --full --force",
        )
    log(f"images: imported {FULL_BASE_IMAGE} in {time.monotonic() - t0:.1f}s")


def _build_full(api: docker.APIClient, force: bool, log: Log) -> str:
    digest = _full_inputs()
    if not force and _image_label(api, FULL_IMAGE) == digest:
        log(f"images: {FULL_IMAGE} is up to date")
        return FULL_IMAGE
    t0 = time.monotonic()
    log(f"images: building {FULL_IMAGE}")
    if os.environ.get("AGENTDOCK_OFFLINE_ONLY") or not _try_registry_build(api, digest, log):
        _import_base(api, force, log)
        _run_build(api, _context(FULL_FALLBACK_DOCKERFILE), FULL_IMAGE, {INPUTS_LABEL: digest}, log)
    log(f"images: built {FULL_IMAGE} in {time.monotonic() - t0:.1f}s")
    return FULL_IMAGE


# --------------------------------------------------------------------------- #
# Agents image: the full image plus real agent CLIs, fetched on the host
# --------------------------------------------------------------------------- #


def _agents_dockerfile(names: list[str], binaries: dict[str, str]) -> str:
    lines = [f"FROM {FULL_IMAGE}", "USER 0:0"]
    lines += [f"COPY rt/{n}/ {clis.OPT}/{n}/" for n in names]
    lines.append("COPY bin/ /usr/local/bin/")
    checks = []
    for n in names:
        b = binaries[n]
        checks.append({"pi": f"{clis.OPT}/pi/node/node --version",
                       "hermes": f"PYTHONPATH={clis.OPT}/hermes/lib python3 -c 'import hermes_cli.main'"}
                      .get(n, f"{b} --version"))
    # Modes are set in the context (a chmod here would copy every file into one more layer). The checks
    # run with a throwaway HOME: a CLI that creates its state directory on start must not leave it
    # behind owned by root in the run user's home.
    lines.append("RUN export HOME=/tmp/agentdock-build-home && " + " && ".join(checks)
                 + " && rm -rf /tmp/agentdock-build-home")
    lines.append("USER 1000:1000")
    return "\n".join(lines) + "\n"


def _agents_context(path: Path, dockerfile: str, trees: dict[str, Path], launchers: dict[str, str]) -> None:
    with tarfile.open(path, "w") as tar:
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
        for name, root in trees.items():
            tar.add(root, arcname=f"rt/{name}", filter=_world_readable)
        _add_dir(tar, "bin")
        for binary, text in launchers.items():
            _add_bytes(tar, f"bin/{binary}", text.encode(), 0o755)


def _world_readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root, readable (and, where executable or a directory, enterable) by the run's user."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    exec_bits = 0o111 if info.isdir() or info.mode & 0o100 else 0
    info.mode = (info.mode & 0o755) | 0o444 | exec_bits
    return info


def runtime_versions(labels: dict[str, str]) -> dict[str, str]:
    """An image's agent CLIs and their versions, from its labels."""
    text = labels.get(RUNTIMES_LABEL) or ""
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _build_agents(api: docker.APIClient, names: list[str], force: bool, log: Log) -> str:
    _build_full(api, False, log)
    base = _image_label(api, FULL_IMAGE) or ""
    versions = {n: clis.CATALOG[n].version for n in names}
    node = clis.host_node()[1] if "pi" in names else ""
    binaries = {n: clis.CATALOG[n].binary for n in names}
    dockerfile = _agents_dockerfile(names, binaries)
    launchers_src = Path(clis.__file__).read_text()  # how each CLI is fetched and launched
    digest = _sha256(RECIPE_VERSION, base, json.dumps(versions), node, dockerfile, launchers_src)
    if not force and _image_label(api, AGENTS_IMAGE) == digest:
        log(f"images: {AGENTS_IMAGE} is up to date ({', '.join(f'{n} {v}' for n, v in versions.items())})")
        return AGENTS_IMAGE
    t0 = time.monotonic()
    trees, launchers = {}, {}
    for n in names:
        trees[n], launchers[binaries[n]] = clis.prepare(n, log)
    labels = {INPUTS_LABEL: digest, RUNTIMES_LABEL: ",".join(f"{n}={v}" for n, v in versions.items())}
    if node:
        labels["agentdock.node"] = node
    ctx_path = clis.cache_dir() / "runtimes" / "context.tar"
    log(f"images: building {AGENTS_IMAGE} with {', '.join(names)}")
    _agents_context(ctx_path, dockerfile, trees, launchers)
    try:
        with open(ctx_path, "rb") as ctx:
            _run_build(api, ctx, AGENTS_IMAGE, labels, log)  # type: ignore[arg-type]
    finally:
        ctx_path.unlink(missing_ok=True)
    log(f"images: built {AGENTS_IMAGE} in {time.monotonic() - t0:.1f}s")
    return AGENTS_IMAGE


def inspect_runtimes(tag: str) -> dict[str, str] | None:
    """The agent CLIs an image holds (name -> version); None when there is no such image."""
    api = _client()
    try:
        try:
            info = api.inspect_image(tag)
        except docker.errors.ImageNotFound:
            return None
        return runtime_versions((info.get("Config") or {}).get("Labels") or {})
    finally:
        api.close()


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #

_BUILDERS: dict[str, Callable[[Any, bool, Log], str]] = {
    "small": _build_small,
    "full": _build_full,
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
        api = _client()
        try:
            built = [_BUILDERS[n](api, force, log) for n in names]
            if wanted:
                built.append(_build_agents(api, wanted, force, log))
            return built
        finally:
            api.close()
    except errors.EngineError:
        raise
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"the Docker engine failed a step of the build: {exc}",
                              suggested_command="docker info", evidence={"type": type(exc).__name__}) from exc
    except subprocess.SubprocessError as exc:
        raise ImageBuildError(f"a build command failed: {exc}", suggested_command="agentdock image build --force",
                              evidence={"type": type(exc).__name__}) from exc
    except OSError as exc:  # a tool that will not start, the disk, the Docker socket (requests' errors too)
        raise ImageBuildError(f"a build step could not run: {exc}", suggested_command="docker info",
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
