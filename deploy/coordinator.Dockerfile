# syntax=docker/dockerfile:1.7
# Lepton FL: the coordinator (flower-superlink with TLS, SuperNode authentication and a state
# database, on loopback only; nginx as the public Fleet front on 9093, forwarding only the
# Fleet API; the ServerApp runs from the installed `coordinator` package, never from a FAB).
#
# Build from the REPOSITORY ROOT (the context must be the repo, not deploy/):
#   docker build -f deploy/coordinator.Dockerfile -t lepton-coordinator:0.1.0 .
# BuildKit reads deploy/coordinator.Dockerfile.dockerignore for that context; a
# deploy/.dockerignore would not be read (Docker only looks for .dockerignore at the root of
# the context). The ignore file is an allow-list: no key or state file can enter the image.
#
# torch: no package index is named here. The torch 2.13.0 CPU wheel must come from
#   * a wheel directory, given to pip as `--find-links /wheels`: drop the wheel into
#     deploy/wheels/, or pass any directory with `--build-context wheels=/path/to/wheelhouse`;
#   * and/or the build's pip configuration: a pip.conf passed as a BuildKit secret,
#     `--secret id=pip.conf,src=/path/to/pip.conf`, mounted at /etc/pip.conf for the two
#     install steps only (it never lands in a layer, so index credentials stay out).
# The coordinator never trains, so the build refuses a CUDA torch build.
#
# Run (see deploy/README.md): state volume at /var/lib/lepton/coordinator, the PKI files
# (ca.pem, server.pem, server.key; node *.pub only; never ca.key) read-only under
# /etc/lepton/pki.

ARG PYTHON_IMAGE=python:3.11-slim

# Default wheel directory: deploy/wheels/ (override with --build-context wheels=DIR).
FROM scratch AS wheels
COPY deploy/wheels/ /

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lepton
ENV PATH=/opt/lepton/bin:$PATH
# torch first, pinned, so that installing the project never resolves a different build.
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --find-links /wheels "${TORCH_SPEC}" \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else f'torch {torch.__version__} is a CUDA build: supply the CPU wheel')"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lepton ./lepton
COPY lepton_fl ./lepton_fl
COPY coordinator ./coordinator
COPY client_node ./client_node
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --find-links /wheels ".[demo]" \
 && lepton coordinator start --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG LEPTON_UID=10001
ARG LEPTON_GID=10001
# The image must not run as root, whatever the build arguments say.
# nginx-light: the public Fleet front (Debian's package; its config is generated at start).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
RUN test "${LEPTON_UID}" != 0 && test "${LEPTON_GID}" != 0 \
 && groupadd --system --gid "${LEPTON_GID}" lepton \
 && useradd --system --uid "${LEPTON_UID}" --gid lepton --home-dir /var/lib/lepton/coordinator \
      --no-create-home --shell /usr/sbin/nologin lepton \
 && install -d -m 0700 -o lepton -g lepton /var/lib/lepton/coordinator \
 && install -d -m 0755 /etc/lepton /etc/lepton/pki
COPY --from=build /opt/lepton /opt/lepton
# Nothing phones home: Flower telemetry and update checks are off (lepton sets them for its
# children too; here they also cover `docker exec ... lepton coordinator register-node`).
ENV PATH=/opt/lepton/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/lepton/coordinator \
    LEPTON_HEALTH_PORT=9093
# SuperLink state database, its FLWR_HOME, logs, run journals and model checkpoints.
VOLUME ["/var/lib/lepton/coordinator"]
EXPOSE 9093
USER ${LEPTON_UID}:${LEPTON_GID}
WORKDIR /var/lib/lepton/coordinator
# Healthy = the Fleet front's HTTPS port accepts TCP connections (no certificate needed).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['LEPTON_HEALTH_PORT'])), timeout=3).close()"]
ENTRYPOINT ["lepton"]
CMD ["coordinator", "start", "--data-dir", "/var/lib/lepton/coordinator", "--pki-dir", "/etc/lepton/pki", "--host", "0.0.0.0", "--port", "9093"]
