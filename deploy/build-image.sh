#!/usr/bin/env bash
# Build the server image (tag: $SECP_IMAGE, default secp-tuning-server:latest) from a base image and the
# host's wheelhouse.  The base is $SECP_BASE_IMAGE when set; otherwise python:3.11-slim when it is
# already present locally; otherwise, as root with debootstrap, secp-base:bookworm built by
# deploy/base-image.sh (what these machines, with no image registry, use); otherwise python:3.11-slim
# pulled from the registry.  Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${SECP_IMAGE:-secp-tuning-server:latest}
base=${SECP_BASE_IMAGE:-}
if [ -z "$base" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1; then
        base=python:3.11-slim
    elif [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then
        base=secp-base:bookworm
    else
        base=python:3.11-slim
        docker pull --quiet "$base" >/dev/null
    fi
fi
if [ "$base" = secp-base:bookworm ]; then
    deploy/base-image.sh "$base"
fi
deploy/wheelhouse.sh
# The legacy builder needs no buildx plugin (Debian's docker.io has none) and works on old daemons.
# The build stage is tagged too, so that its package layer stays cached across builds while the images
# each rebuild replaces are removed (a machine that builds often does not fill its disk).
id_of() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
cache=secp-tuning-build:cache
old_cache=$(id_of "$cache") old_image=$(id_of "$image")
export DOCKER_BUILDKIT=0
docker build --quiet --build-arg BASE_IMAGE="$base" --target build --tag "$cache" . >/dev/null
docker build --quiet --build-arg BASE_IMAGE="$base" --tag "$image" . >/dev/null
for old in "$old_cache" "$old_image"; do
    if [ -n "$old" ] && [ "$old" != "$(id_of "$cache")" ] && [ "$old" != "$(id_of "$image")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true  # still used by a container: left alone
    fi
done
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "image: $image from $base, $((size / 1000000)) MB" >&2
