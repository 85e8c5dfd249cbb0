"""What every image build uses: the Docker client, the inputs label (an image is reused while its label
matches the digest of its inputs), a build context in memory, and a build streamed, its failure said."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Callable, Iterable, Iterator

import docker
import docker.errors

from engine import errors

INPUTS_LABEL = "agentdock.inputs"
RECIPE_VERSION = "1"  # bump to invalidate every existing image

BUILD_TIMEOUT = 1800  # seconds, for the docker API client

Log = Callable[[str], None]


class ImageBuildError(errors.ImageBuildFailed):
    """An image could not be built; the message says why, `suggested_command` what to do. Every other
    failure of a build (docker-py, a subprocess, the file system) is translated into one by `images.build()`."""


def sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def client() -> docker.APIClient:
    try:
        client = docker.from_env(timeout=BUILD_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(
            f"cannot reach the Docker engine ({exc}); start it (scripts/setup.sh does)",
            suggested_command="docker info",
        ) from exc
    return client.api


def image_label(api: docker.APIClient, tag: str) -> str | None:
    """The inputs label of ``tag``; None if the image does not exist."""
    try:
        info = api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(INPUTS_LABEL, "")


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0  # deterministic context
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = 0
    tar.addfile(info)


def context(
    dockerfile: str, files: dict[str, tuple[bytes, int]] | None = None, dirs: Iterable[str] = ()
) -> io.BytesIO:
    files = files or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_bytes(tar, "Dockerfile", dockerfile.encode())
        for d in dirs:
            add_dir(tar, d)
        for name, (data, mode) in files.items():
            add_bytes(tar, name, data, mode)
    buf.seek(0)
    return buf


def stream_build(
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
    if image_label(api, tag) is None:
        raise ImageBuildError(f"building {tag} produced no image:\n" + "".join(tail[-20:]),
                              suggested_command="agentdock image build --force")


def run_build(api: docker.APIClient, context: io.BytesIO, tag: str, labels: dict[str, str], log: Log) -> None:
    for line in stream_build(api, context, tag, labels):
        if line.startswith("Step "):
            log(f"images:   {line}")
