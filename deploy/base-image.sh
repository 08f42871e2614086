#!/usr/bin/env bash
# Build the Debian base image secp-base:bookworm (Python 3.11 and its venv module, nothing else) with
# debootstrap, for machines where no image registry is reachable; the Dockerfile then uses it as
# BASE_IMAGE.  About a minute on two cores; the root file system is kept as a tarball under $SECP_CACHE
# (default /var/cache/secp-tuning) and re-imported from there next time.  Needs root and debootstrap.
set -euo pipefail
image=${1:-secp-base:bookworm}
mirror=${SECP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache_root=${SECP_CACHE:-/var/cache/secp-tuning}
tarball=$cache_root/base-bookworm.tar

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image: $image is present" >&2
    exit 0
fi
mkdir -p "$cache_root"
if [ ! -s "$tarball" ]; then
    root=$(mktemp -d /var/tmp/secp-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "base image: debootstrap --variant=minbase bookworm into $root" >&2
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >&2
    # What a server never uses: package lists and caches, documentation, manual pages, locales.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["python3"]' "$tarball" "$image" >/dev/null
echo "base image: $image imported from $tarball ($(du -sh "$tarball" | cut -f1))" >&2
