#!/usr/bin/env bash
# Put the wheels of deploy/requirements-server.txt (and setuptools/wheel, to build the package) into
# deploy/wheelhouse/, the Dockerfile's only package source.  pip runs here, on the host, with the host's
# index settings (on these machines torch==2.13.0 resolves to a local CPU wheel; elsewhere point pip at a
# CPU build of torch, never a CUDA one).  Wheels are for CPython 3.11 on x86_64 Linux, whatever the host.
# A copy is kept under $SECP_CACHE (default /var/cache/secp-tuning, or ~/.cache/secp-tuning when that is
# not writable) and reused while the requirements file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=deploy/requirements-server.txt
out=deploy/wheelhouse
cache_root=${SECP_CACHE:-/var/cache/secp-tuning}
mkdir -p "$cache_root" 2>/dev/null && [ -w "$cache_root" ] || cache_root=$HOME/.cache/secp-tuning
cache=$cache_root/wheelhouse
key=$(sha256sum "$requirements" | cut -c1-16)
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python

if [ "$(cat "$cache/.key" 2>/dev/null)" != "$key" ]; then
    echo "wheelhouse: downloading into $cache" >&2
    rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
    "$python" -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any --dest "$cache.tmp" -r "$requirements" setuptools wheel
    ls "$cache.tmp"/torch-*+cpu-*.whl >/dev/null 2>&1 || {
        echo "wheelhouse: pip did not find a CPU build of torch (refusing a CUDA one); see docs/deploy.md" >&2
        exit 1
    }
    echo "$key" > "$cache.tmp/.key"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
rm -rf "$out" && mkdir -p "$out"
cp -l "$cache"/*.whl "$out"/ 2>/dev/null || cp "$cache"/*.whl "$out"/
echo "wheelhouse: $(ls "$out" | wc -l) wheels in $out ($(du -sh "$out" | cut -f1))" >&2
