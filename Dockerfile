# One image for every cluster server (compute party or 2pc dealer): secp-server and secp-cluster health.
#
#   deploy/wheelhouse.sh                      # the wheels of deploy/requirements-server.txt, on the host
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t secp-tuning-server .
#
# The servers run the engine's real fast path: torch (a CPU build) for the exact int64 ring GEMM
# (mpc_core/ring.py), no transformers, cma or matplotlib.  Python packages come only from the wheelhouse
# in the build context (deploy/wheelhouse/, made on the host), never from an index inside the build, so
# the image builds where no registry is reachable.  BASE_IMAGE is any image with Python 3.11 and its venv
# module: python:3.11-slim where a registry is reachable, or the Debian minbase image that
# deploy/base-image.sh builds with debootstrap where none is.  The container runs as an unprivileged user
# on a read-only root; certificates and share files are mounted read-only (docker-compose.yml).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY deploy/requirements-server.txt /tmp/requirements-server.txt
COPY deploy/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/secp \
    && /opt/secp/bin/pip install --no-index --find-links /tmp/wheelhouse -r /tmp/requirements-server.txt \
        setuptools wheel
WORKDIR /src
COPY . .
# Generated gRPC modules at build time; then the package itself, without dependencies (all present).
# Dropped to keep the image lean (about 120 MB): torch's C++ headers and CMake files (extension builds
# only) and sympy, mpmath and networkx, which torch needs for torch.compile/fx only; the servers use eager
# CPU kernels (ring GEMM, erf).  The import below and the container tests check what remains.
RUN /opt/secp/bin/python -m proto.build \
    && /opt/secp/bin/pip install --no-index --no-deps --no-build-isolation . \
    && /opt/secp/bin/pip uninstall --yes setuptools wheel sympy mpmath networkx \
    && rm -rf /opt/secp/lib/python3.11/site-packages/torch/include \
        /opt/secp/lib/python3.11/site-packages/torch/share/cmake \
    && /opt/secp/bin/python -c "import server.party_service, mpc_core.ring, torch; \
mpc_core.ring.check_matmul_wraps(); print('torch', torch.__version__, 'ring GEMM exact')"

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PATH=/opt/secp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=build /opt/secp /opt/secp
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin secp \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/secp
# /var/lib/secp: the server's state_dir (its checkpoints of shares); compose mounts a named volume there,
# which Docker initialises with this owner and mode, so the read-only root keeps one writable place.
USER 10001:10001
WORKDIR /tmp

EXPOSE 50051 50052 50053
ENTRYPOINT ["secp-server"]
CMD ["--help"]
