"""The real agent CLIs an image can hold: which package each comes from, the pinned version, and how it
is fetched on the host into the cache, so the image build itself needs no network.

    claude-code  npm @anthropic-ai/claude-code-linux-<arch>  a native binary (`claude`)
    codex        npm @openai/codex@<v>-linux-<arch>          a static binary (`codex`, with its `rg`)
    pi           npm @mariozechner/pi-coding-agent           a Node program; the host's `node` (>= 20.6) goes with it
    hermes       PyPI hermes-agent                           a Python package, installed for the image's python3.11

Each is prepared once under `$AGENTDOCK_CACHE` (default `$AGENTDOCK_HOME/cache`, then `~/.agentdock/cache`)
as `runtimes/<name>-<version>/root/`, the tree that goes to `/opt/agentdock/<name>` in the image, plus a
launcher for `/usr/local/bin/<binary>`.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import errors

Log = Callable[[str], None]
OPT = "/opt/agentdock"
MARKER = ".agentdock-complete"
FETCH_TIMEOUT = 900
NODE_MIN = (20, 6)


@dataclass(frozen=True)
class CLI:
    runtime: str
    binary: str
    package: str
    version: str
    registry: str
    secrets: tuple[str, ...]
    """The credential it reads (the secret to set), best first."""


CATALOG: dict[str, CLI] = {c.runtime: c for c in (
    CLI("claude-code", "claude", "@anthropic-ai/claude-code", "2.1.332", "npm", ("ANTHROPIC_API_KEY",)),
    CLI("codex", "codex", "@openai/codex", "0.171.0", "npm", ("CODEX_API_KEY", "OPENAI_API_KEY")),
    CLI("pi", "pi", "@mariozechner/pi-coding-agent", "0.73.1", "npm", ("ANTHROPIC_API_KEY", "GEMINI_API_KEY")),
    CLI("hermes", "hermes", "hermes-agent", "0.19.0", "pypi", ("OPENROUTER_API_KEY", "OPENAI_API_KEY")),
)}
ALIASES = {"claude": "claude-code"}


def parse(names: str | list[str]) -> list[str]:
    """`claude-code,codex` (or a list) as catalog names, in catalog order; `InvalidInput` naming `runtimes`."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in items if ALIASES.get(n, n) not in CATALOG]
    if unknown:
        raise errors.InvalidInput("runtimes", f"unknown runtime(s) {', '.join(map(repr, unknown))}; an image can "
                                              f"hold {', '.join(CATALOG)}")
    wanted = {ALIASES.get(n, n) for n in items}
    return [n for n in CATALOG if n in wanted]


def cache_dir() -> Path:
    if os.environ.get("AGENTDOCK_CACHE"):
        return Path(os.environ["AGENTDOCK_CACHE"])
    home = os.environ.get("AGENTDOCK_HOME")
    return (Path(home) if home else Path.home() / ".agentdock") / "cache"


def _arch() -> tuple[str, str]:
    """(npm's arch, Rust's target triple) of this host."""
    machine = platform.machine()
    if machine in ("x86_64", "amd64"):
        return "x64", "x86_64-unknown-linux-musl"
    if machine in ("aarch64", "arm64"):
        return "arm64", "aarch64-unknown-linux-musl"
    raise errors.ImageBuildFailed(f"no agent CLI packages for this machine ({machine}); x86_64 and arm64 only")


def _run(argv: list[str], cwd: Path, what: str) -> None:
    tool = shutil.which(argv[0]) if not argv[0].startswith("/") else argv[0]
    if tool is None:
        raise errors.ImageBuildFailed(f"{what} needs `{argv[0]}` on the host to fetch its package",
                                      suggested_command="apt-get install npm")
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=FETCH_TIMEOUT)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise errors.ImageBuildFailed(f"fetching {what} failed ({' '.join(argv[:3])} exit {done.returncode}):\n{tail}",
                                      suggested_command="npm ping", evidence={"runtime": what})


def _npm_pack(spec: str, into: Path, what: str) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    before = set(into.glob("*.tgz"))
    _run(["npm", "pack", "--silent", "--pack-destination", str(into), spec], into, what)
    new = sorted(set(into.glob("*.tgz")) - before) or sorted(into.glob("*.tgz"))
    if not new:
        raise errors.ImageBuildFailed(f"npm pack {spec} produced no tarball")
    return new[-1]


def _extract(tgz: Path, member: str, to: Path) -> None:
    with tarfile.open(tgz) as tar:
        src = tar.extractfile(member)
        if src is None:
            raise errors.ImageBuildFailed(f"{tgz.name} has no {member}")
        to.parent.mkdir(parents=True, exist_ok=True)
        with open(to, "wb") as out:
            shutil.copyfileobj(src, out)
    to.chmod(0o755)


def _claude(cli: CLI, work: Path, root: Path) -> str:
    arch, _ = _arch()
    tgz = _npm_pack(f"{cli.package}-linux-{arch}@{cli.version}", work, cli.runtime)
    _extract(tgz, "package/claude", root / "claude")
    return f'#!/bin/sh\nexec {OPT}/claude-code/claude "$@"\n'


def _codex(cli: CLI, work: Path, root: Path) -> str:
    arch, triple = _arch()
    tgz = _npm_pack(f"{cli.package}@{cli.version}-linux-{arch}", work, cli.runtime)
    _extract(tgz, f"package/vendor/{triple}/bin/codex", root / "codex")
    _extract(tgz, f"package/vendor/{triple}/codex-path/rg", root / "path" / "rg")
    # the npm launcher puts its bundled ripgrep on PATH; so does this one
    return f'#!/bin/sh\nPATH="$PATH:{OPT}/codex/path" exec {OPT}/codex/codex "$@"\n'


def host_node() -> tuple[Path, str]:
    """The host's `node` (copied into the image for pi) and its version; refused when too old."""
    node = shutil.which("node")
    if node is None:
        raise errors.ImageBuildFailed(f"pi needs Node.js >= {NODE_MIN[0]}.{NODE_MIN[1]} on the host (its binary is "
                                      "copied into the image)", suggested_command="apt-get install nodejs")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
    if not m or (int(m[1]), int(m[2])) < NODE_MIN:
        raise errors.ImageBuildFailed(f"pi needs Node.js >= {NODE_MIN[0]}.{NODE_MIN[1]}; the host has {version or 'none'}",
                                      suggested_command="node --version")
    return Path(node).resolve(), version.lstrip("v")


def _pi(cli: CLI, work: Path, root: Path) -> str:
    _run(["npm", "install", "--prefix", str(root), "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
          "--no-package-lock", f"{cli.package}@{cli.version}"], work, cli.runtime)
    node, _ = host_node()
    (root / "node").mkdir(exist_ok=True)
    shutil.copy2(node, root / "node" / "node")
    return (f'#!/bin/sh\nexec {OPT}/pi/node/node {OPT}/pi/node_modules/{cli.package}/dist/cli.js "$@"\n')


def _hermes(cli: CLI, work: Path, root: Path) -> str:
    arch = "x86_64" if _arch()[0] == "x64" else "aarch64"
    platforms = [f"manylinux_2_{n}_{arch}" for n in (17, 28, 34)] + [f"manylinux2014_{arch}", f"linux_{arch}"]
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
            str(root / "lib"), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            *(a for p in platforms for a in ("--platform", p)), f"{cli.package}=={cli.version}"]
    _run(argv, work, cli.runtime)
    return ('#!/bin/sh\nPYTHONPATH=' + OPT + '/hermes/lib exec python3 -c '
            '\'import sys; sys.argv[0] = "hermes"; from hermes_cli.main import main; sys.exit(main())\' "$@"\n')


FETCHERS = {"claude-code": _claude, "codex": _codex, "pi": _pi, "hermes": _hermes}


def prepare(runtime: str, log: Log) -> tuple[Path, str]:
    """The prepared tree of `runtime` (fetched once into the cache) and its launcher script."""
    cli = CATALOG[runtime]
    base = cache_dir() / "runtimes" / f"{runtime}-{cli.version}"
    root, launcher = base / "root", base / "launcher"
    if (base / MARKER).is_file() and launcher.is_file():
        log(f"images: reusing {cli.package}@{cli.version} from {base}")
        return root, launcher.read_text()
    if base.exists():
        shutil.rmtree(base)
    work = base / "download"
    root.mkdir(parents=True)
    work.mkdir()
    log(f"images: fetching {cli.package}@{cli.version} ({cli.registry})")
    text = FETCHERS[runtime](cli, work, root)
    shutil.rmtree(work, ignore_errors=True)
    launcher.write_text(text)
    (base / MARKER).write_text(cli.version + "\n")
    return root, text
