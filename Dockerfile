# One image for every cluster server (compute party or 2pc dealer): secp-server, secp-cluster health.
#
# The servers need the engine and the cluster code only: no torch, no transformers (those are the
# model owner's and data owner's).  The gRPC modules are generated at build time.  The container runs
# as an unprivileged user; mount certificates and share files read-only (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

RUN pip install \
        "numpy>=2.0" "grpcio>=1.60" "grpcio-tools>=1.60" "grpcio-health-checking>=1.60" "protobuf>=5.0" \
        "pydantic>=2.5" "pyyaml>=6.0" "cryptography>=42" "click>=8.1" "safetensors>=0.4"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mpc_core ./mpc_core
COPY proto ./proto
COPY contract ./contract
COPY server ./server
COPY cluster_ops ./cluster_ops
COPY data_owner/__init__.py data_owner/client.py ./data_owner/
RUN python -m proto.build && pip install --no-deps . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin secp
USER secp
WORKDIR /tmp

EXPOSE 50051 50052 50053
ENTRYPOINT ["secp-server"]
CMD ["--help"]
