"""The small image, ``agentdock-small``: ``FROM scratch`` plus the host's static busybox and the fake agent
CLIs from ``runtimes/fakes/``. Builds in about a second; used by the fast tests."""

from __future__ import annotations

import time
from pathlib import Path

import docker

from runtimes import image_build

SMALL_IMAGE = "agentdock-small:latest"
BUSYBOX_PATH = Path("/bin/busybox")
FAKES_DIR = Path(__file__).resolve().parent / "fakes"

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
        raise image_build.ImageBuildError(
            f"{BUSYBOX_PATH} is missing; the small image needs a static busybox: "
            "run `apt-get install busybox-static`", suggested_command="apt-get install busybox-static"
        )
    busybox = BUSYBOX_PATH.read_bytes()
    if not _is_static_elf(busybox):
        raise image_build.ImageBuildError(
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
    digest = image_build.sha256(
        image_build.RECIPE_VERSION,
        SMALL_DOCKERFILE,
        *(f"{name}:{mode:o}" for name, (_, mode) in sorted(files.items())),
        *(data for _, (data, _) in sorted(files.items())),
    )
    return digest, files


def small_tag() -> str:
    """The small image's tag for these inputs (`agentdock-small:<digest>`): stable while the fakes are,
    so checkouts with different fakes on one Docker engine do not take `latest` from each other's tests."""
    return f"{SMALL_IMAGE.split(':')[0]}:{_small_inputs()[0][:16]}"


def build(api: docker.APIClient, force: bool, log: image_build.Log) -> str:
    digest, files = _small_inputs()
    pinned = f"{SMALL_IMAGE.split(':')[0]}:{digest[:16]}"
    if not force and image_build.image_label(api, SMALL_IMAGE) == digest:
        if image_build.image_label(api, pinned) != digest:
            api.tag(SMALL_IMAGE, pinned.split(":")[0], pinned.split(":")[1])
        log(f"images: {SMALL_IMAGE} is up to date")
        return SMALL_IMAGE
    t0 = time.monotonic()
    log(f"images: building {SMALL_IMAGE} ({len(files) - 3} fake CLI(s))")
    ctx = image_build.context(
        SMALL_DOCKERFILE,
        files,
        dirs=("rootfs", "rootfs/etc", "rootfs/tmp", "rootfs/home", "rootfs/home/agent",
              "rootfs/workspace", "rootfs/usr", "rootfs/usr/local", "rootfs/usr/local/bin"),
    )
    image_build.run_build(api, ctx, SMALL_IMAGE, {image_build.INPUTS_LABEL: digest}, log)
    api.tag(SMALL_IMAGE, pinned.split(":")[0], pinned.split(":")[1])
    log(f"images: built {SMALL_IMAGE} in {time.monotonic() - t0:.1f}s")
    return SMALL_IMAGE
