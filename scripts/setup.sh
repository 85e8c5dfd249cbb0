#!/usr/bin/env bash
# Idempotent setup for agentdock on Debian (fresh machine, developer box or CI).
#
#   * installs missing system packages with apt (one `apt-get update` at most):
#     python3/python3-venv, docker.io, busybox-static, debootstrap, postgresql (for the suite's second store),
#     chromium (for the dashboard's browser tests)
#   * starts the Docker engine when `docker info` fails
#   * creates .venv and `pip install -e '.[dev]'` (skipped while pyproject.toml is unchanged)
#   * builds the agentdock images (skipped while their inputs are unchanged)
#
# Needs no stdin. Runs as root (or with passwordless sudo for the system steps).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi
as_root() { "${SUDO[@]}" "$@"; }

DOCKERD_LOG=/var/log/agentdock-dockerd.log
DOCKER_PIDFILE=/var/run/docker.pid

# --------------------------------------------------------------------------
# 1. System packages (collected first so apt-get update runs at most once)
# --------------------------------------------------------------------------
pick_python() {
  local c
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

docker_ok() { docker info >/dev/null 2>&1; }

apt_pkgs=()
PY=$(pick_python || true)
if [ -z "$PY" ]; then
  apt_pkgs+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_pkgs+=(python3-venv)
fi
if ! docker_ok && { ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; }; then
  apt_pkgs+=(docker.io)
fi
# the small image needs a *static* busybox (ldd exits 0 only for dynamic executables)
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  apt_pkgs+=(busybox-static)
fi
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  apt_pkgs+=(debootstrap)
fi
# the suite's PostgreSQL pass starts its own throwaway cluster with initdb and pg_ctl (tests/pgcluster.py)
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  apt_pkgs+=(postgresql)
fi
# the dashboard's tests drive Debian's chromium, headless, with Playwright (which downloads no browser)
if ! command -v chromium >/dev/null 2>&1; then
  apt_pkgs+=(chromium fonts-liberation)
fi

if [ ${#apt_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${apt_pkgs[*]} and no apt-get to install them"
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "missing ${apt_pkgs[*]}; run as root (or install them yourself)"
  fi
  log "apt-get install ${apt_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${apt_pkgs[@]}" >/dev/null
  PY=$(pick_python) || die "no python >= 3.11 available after installing python3"
else
  log "system packages present"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --------------------------------------------------------------------------
# 2. Python virtualenv
# --------------------------------------------------------------------------
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  log "removing broken .venv"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
if [ -f .venv/.installed ] && [ "$(cat .venv/.installed)" = "$want" ]; then
  log "python dependencies up to date"
else
  log "pip install -e '.[dev]'"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-input -e '.[dev]'
  echo "$want" > .venv/.installed
fi

# --------------------------------------------------------------------------
# 3. Docker engine
# --------------------------------------------------------------------------
pid_is_live_dockerd() {
  # A killed dockerd can linger as a zombie: a pid that exists is not enough.
  local pid=$1 state comm
  [ -r "/proc/$pid/stat" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)
  [ "$comm" = dockerd ] && [ "$state" != Z ] && [ "$state" != X ]
}

wait_docker() {
  local i
  for i in $(seq 1 120); do
    docker_ok && return 0
    sleep 0.5
  done
  return 1
}

if docker_ok; then
  log "docker engine is running"
else
  command -v dockerd >/dev/null 2>&1 || die "dockerd not found (apt-get install docker.io)"
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "the docker engine is not reachable and starting it needs root"
  fi
  started=0
  if [ -f "$DOCKER_PIDFILE" ]; then
    oldpid=$(cat "$DOCKER_PIDFILE" 2>/dev/null || true)
    if [ -n "$oldpid" ] && pid_is_live_dockerd "$oldpid"; then
      log "dockerd (pid $oldpid) is starting; waiting for it"
      started=1
    else
      log "removing stale $DOCKER_PIDFILE"
      as_root rm -f "$DOCKER_PIDFILE"
    fi
  fi
  if [ "$started" -eq 0 ]; then
    log "starting dockerd (log: $DOCKERD_LOG)"
    as_root sh -c "setsid nohup dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null &"
  fi
  if ! wait_docker; then
    tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
    die "docker engine did not come up within 60 s (see $DOCKERD_LOG)"
  fi
  log "docker engine is up"
fi

# --------------------------------------------------------------------------
# 4. Images
# --------------------------------------------------------------------------
log "images"
.venv/bin/python -m runtimes.images --all

log "done ($ROOT)"
