"""The agents image, ``agentdock-agents``: the full image plus the real agent CLIs (see `runtimes.clis`),
fetched on the host and labelled with their versions."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import docker
import docker.errors

from runtimes import clis, full_image, image_build

AGENTS_IMAGE = "agentdock-agents:latest"
"""The full image plus the real agent CLIs (`images.build(..., runtimes=[...])`, see `runtimes.clis`)."""
RUNTIMES_LABEL = "agentdock.runtimes"
"""On the agents image: `claude-code=2.1.332,codex=0.171.0`: which CLIs it holds, at which versions."""


def _agents_dockerfile(names: list[str], binaries: dict[str, str]) -> str:
    lines = [f"FROM {full_image.FULL_IMAGE}", "USER 0:0"]
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
        image_build.add_bytes(tar, "Dockerfile", dockerfile.encode())
        for name, root in trees.items():
            tar.add(root, arcname=f"rt/{name}", filter=_world_readable)
        image_build.add_dir(tar, "bin")
        for binary, text in launchers.items():
            image_build.add_bytes(tar, f"bin/{binary}", text.encode(), 0o755)


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


def build(api: docker.APIClient, names: list[str], force: bool, log: image_build.Log) -> str:
    full_image.build(api, False, log)
    base = image_build.image_label(api, full_image.FULL_IMAGE) or ""
    versions = {n: clis.CATALOG[n].version for n in names}
    node = clis.host_node()[1] if "pi" in names else ""
    binaries = {n: clis.CATALOG[n].binary for n in names}
    dockerfile = _agents_dockerfile(names, binaries)
    launchers_src = Path(clis.__file__).read_text()  # how each CLI is fetched and launched
    digest = image_build.sha256(image_build.RECIPE_VERSION, base, json.dumps(versions), node, dockerfile,
                                launchers_src)
    if not force and image_build.image_label(api, AGENTS_IMAGE) == digest:
        log(f"images: {AGENTS_IMAGE} is up to date ({', '.join(f'{n} {v}' for n, v in versions.items())})")
        return AGENTS_IMAGE
    t0 = time.monotonic()
    trees, launchers = {}, {}
    for n in names:
        trees[n], launchers[binaries[n]] = clis.prepare(n, log)
    labels = {image_build.INPUTS_LABEL: digest, RUNTIMES_LABEL: ",".join(f"{n}={v}" for n, v in versions.items())}
    if node:
        labels["agentdock.node"] = node
    ctx_path = clis.cache_dir() / "runtimes" / "context.tar"
    log(f"images: building {AGENTS_IMAGE} with {', '.join(names)}")
    _agents_context(ctx_path, dockerfile, trees, launchers)
    try:
        with open(ctx_path, "rb") as ctx:
            image_build.run_build(api, ctx, AGENTS_IMAGE, labels, log)  # type: ignore[arg-type]
    finally:
        ctx_path.unlink(missing_ok=True)
    log(f"images: built {AGENTS_IMAGE} in {time.monotonic() - t0:.1f}s")
    return AGENTS_IMAGE


def inspect_runtimes(tag: str) -> dict[str, str] | None:
    """The agent CLIs an image holds (name -> version); None when there is no such image."""
    api = image_build.client()
    try:
        try:
            info = api.inspect_image(tag)
        except docker.errors.ImageNotFound:
            return None
        return runtime_versions((info.get("Config") or {}).get("Labels") or {})
    finally:
        api.close()
