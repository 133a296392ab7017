# featurizer server image: non-root, registry mounted at /registry, health via the gRPC health
# protocol. CPU build by default; the GPU variant (deploy/compose/docker-compose.gpu.yml) builds
# with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (CUDA wheels of the same versions).
#   docker build -t featurizer .
#   docker run -p 50051:50051 -p 9090:9090 -v "$PWD/registry:/registry:ro" featurizer
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first: the biggest layer, and it changes least often.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple ${TORCH_PACKAGES}

WORKDIR /app
# The client carries the generated stubs and the `featurizer-client health` command.
COPY client/ client/
RUN pip install ./client
COPY pyproject.toml README.md ./
COPY service/ service/
RUN pip install . && rm -rf /app/build

RUN useradd --system --uid 10001 --gid 0 --no-create-home --home-dir /tmp featurizer \
    && mkdir -p /registry && chown 10001:0 /registry

# Settings come from FEATURIZER_* variables (see `featurizer serve --help`). HOME and
# MPLCONFIGDIR point at /tmp so a read-only root filesystem works (Kubernetes).
ENV FEATURIZER_REGISTRY=/registry \
    FEATURIZER_HOST=0.0.0.0 \
    FEATURIZER_PORT=50051 \
    FEATURIZER_METRICS_PORT=9090 \
    FEATURIZER_LOG_FORMAT=json \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

USER 10001
VOLUME ["/registry"]
EXPOSE 50051 9090

# SERVING only once the registry's models are loaded and warmed up (grpc.health.v1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["featurizer-client", "health", "--target", "127.0.0.1:50051"]

ENTRYPOINT ["featurizer"]
CMD ["serve"]
