# syntax=docker/dockerfile:1.7
# Lepton FL: one institution's node (trainer daemon + flower-supernode) in one container.
#
# Build from the REPOSITORY ROOT (the context must be the repo, not deploy/):
#   docker build -f deploy/node.Dockerfile -t lepton-node:0.1.0 .
# BuildKit reads deploy/node.Dockerfile.dockerignore for that context; a deploy/.dockerignore
# would not be read (Docker only looks for .dockerignore at the root of the context). The
# ignore file is an allow-list, so no key, ledger or data file can end up in the image.
#
# torch: no package index is named here. The torch 2.13.0 CPU wheel must come from
#   * a wheel directory, given to pip as `--find-links /wheels`: drop the wheel into
#     deploy/wheels/, or pass any directory with `--build-context wheels=/path/to/wheelhouse`;
#   * and/or the build's pip configuration: a pip.conf passed as a BuildKit secret,
#     `--secret id=pip.conf,src=/path/to/pip.conf`, mounted at /etc/pip.conf for the two
#     install steps only (it never lands in a layer, so index credentials stay out).
# An index that only has the multi-GB CUDA build of torch would silently pull it: the build
# refuses a CUDA torch unless TORCH_VARIANT=cuda (set that, with a CUDA wheel, for images
# meant for GPU nodes; `device = "auto"` then uses the GPU).
#
# Run (see deploy/README.md): state volume at /var/lib/lepton/node, node.toml at
# /etc/lepton/node.toml, CA + node key under /etc/lepton/pki, site data read-only at /data.

ARG PYTHON_IMAGE=python:3.11-slim

# Default wheel directory: deploy/wheels/ (override with --build-context wheels=DIR).
FROM scratch AS wheels
COPY deploy/wheels/ /

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lepton
ENV PATH=/opt/lepton/bin:$PATH
# torch first, pinned, so that installing the project never resolves a different build.
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --find-links /wheels "${TORCH_SPEC}" \
 && python -c "import sys, torch; cuda = torch.version.cuda; want = sys.argv[1]; sys.exit(0 if (cuda is None) == (want == 'cpu') else f'torch {torch.__version__} (CUDA {cuda}) does not match TORCH_VARIANT={want}: supply the matching wheel')" "${TORCH_VARIANT}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lepton ./lepton
COPY lepton_fl ./lepton_fl
COPY coordinator ./coordinator
COPY client_node ./client_node
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --find-links /wheels ".[demo]" \
 && lepton node start --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG LEPTON_UID=10001
ARG LEPTON_GID=10001
# The image must not run as root, whatever the build arguments say.
RUN test "${LEPTON_UID}" != 0 && test "${LEPTON_GID}" != 0 \
 && groupadd --system --gid "${LEPTON_GID}" lepton \
 && useradd --system --uid "${LEPTON_UID}" --gid lepton --home-dir /var/lib/lepton/node \
      --no-create-home --shell /usr/sbin/nologin lepton \
 && install -d -m 0700 -o lepton -g lepton /var/lib/lepton/node \
 && install -d -m 0755 /etc/lepton /etc/lepton/pki /data
COPY --from=build /opt/lepton /opt/lepton
# Nothing phones home: Flower telemetry and update checks are off (lepton sets them for its
# children too; here they also cover anything run with `docker exec`).
ENV PATH=/opt/lepton/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/lepton/node \
    LEPTON_HEALTH_SOCKET=/var/lib/lepton/node/trainer.sock
# The node's state: privacy ledger (ledger.db), trainer socket, SuperNode FLWR_HOME, logs.
# node.toml must set state_dir to this path (or change LEPTON_HEALTH_SOCKET to match).
VOLUME ["/var/lib/lepton/node"]
USER ${LEPTON_UID}:${LEPTON_GID}
WORKDIR /var/lib/lepton/node
# Healthy = the trainer daemon's Unix socket exists and accepts connections (the process
# exits, and the container stops, when flower-supernode dies).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, socket; s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(os.environ['LEPTON_HEALTH_SOCKET']); s.close()"]
ENTRYPOINT ["lepton"]
CMD ["node", "start", "--config", "/etc/lepton/node.toml"]
