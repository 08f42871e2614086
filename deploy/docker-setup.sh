#!/usr/bin/env bash
# Make Docker usable on a Debian machine where we are root (CI and these development machines): install
# docker.io, debootstrap and docker-compose when missing, start dockerd in the background when no daemon
# answers, and wait for it.  Exits non-zero, saying why, if the daemon cannot start; the container tests
# then skip with that reason.  Does nothing that needs root when Docker already works.
set -euo pipefail
log=${SECP_DOCKERD_LOG:-/var/log/secp-dockerd.log}

if docker info >/dev/null 2>&1 && { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "docker-setup: Docker is not usable and we are not root; nothing done" >&2
    exit 1
fi
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    echo "docker-setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "docker-setup: starting dockerd (log: $log)" >&2
    nohup dockerd >"$log" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi
if ! docker info >/dev/null 2>&1; then
    echo "docker-setup: dockerd did not start; the last lines of $log:" >&2
    tail -5 "$log" >&2 || true
    exit 1
fi
echo "docker-setup: Docker $(docker info --format '{{.ServerVersion}}') is running" >&2
