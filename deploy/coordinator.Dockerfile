# syntax=docker/dockerfile:1.7
# Lepton FL: the coordinator (flower-superlink with TLS, SuperNode authentication and a state
# database, on loopback only; nginx as the public Fleet front on 9093, forwarding only the
# Fleet API; the ServerApp runs from the installed `coordinator` package, never from a FAB;
# the admin API on 9080).
#
# Build from the REPOSITORY ROOT (the context must be the repo, not deploy/), with Docker
# semantics (podman/buildah: `--format docker`, or the OCI format silently drops HEALTHCHECK):
#   docker build -f deploy/coordinator.Dockerfile -t lepton-coordinator:0.1.0 .
#   podman build --format docker -f deploy/coordinator.Dockerfile \
#       --ignorefile deploy/coordinator.Dockerfile.dockerignore -t lepton-coordinator:0.1.0 .
# BuildKit reads deploy/coordinator.Dockerfile.dockerignore for that context (podman needs
# --ignorefile); a deploy/.dockerignore would not be read. The ignore file is an allow-list:
# no key or state file can enter the image. deploy/ci/e2e.py builds it this way.
#
# No torch: the coordinator never trains. Initial weights are built with numpy
# (lepton_fl/model_init.py) and every epsilon is computed by Opacus's own accountant files,
# loaded without torch (lepton_fl/privacy/opacus_accountants.py): opacus is installed with
# --no-deps, at the version of the project's `node` extra, and the build refuses an image in
# which torch can be imported. No package index is named here: packages come from
#   * a wheel directory, given to pip as `--find-links /wheels`: deploy/wheels/ by default, or
#     any directory with `--build-context wheels=/path/to/wheelhouse`;
#   * and/or the build's pip configuration: a pip.conf passed as a build secret,
#     `--secret id=pip.conf,src=/path/to/pip.conf`, mounted at /etc/pip.conf for the install
#     steps only (it never lands in a layer, so index credentials stay out).
# It carries no demo data (only nodes read data).
#
# Run (see deploy/README.md): state volume at /var/lib/lepton/coordinator, the PKI files
# (ca.pem, server.pem, server.key; node *.pub only; never ca.key) read-only under
# /etc/lepton/pki, read-only root file system with a tmpfs at /tmp.

ARG PYTHON_IMAGE=python:3.11-slim

# Default wheel directory: deploy/wheels/ (override with --build-context wheels=DIR).
FROM scratch AS wheels
COPY deploy/wheels/ /

# The dependency list alone, from pyproject.toml: the slow layer below is keyed by its content,
# so it is rebuilt only when the dependencies change (not the version, extras or tool config).
# requirements.txt: the core dependencies; opacus.txt: Opacus's line of the `node` extra.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; spec = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; open('/requirements.txt', 'w').write(''.join(d + chr(10) for d in spec['dependencies'])); open('/opacus.txt', 'w').write(''.join(d + chr(10) for d in spec['optional-dependencies']['node'] if d.startswith('opacus')))" \
 && grep -q '^opacus' /opacus.txt

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# binutils: `strip` for the shared libraries below (build stage only).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/lepton
ENV PATH=/opt/lepton/bin:$PATH
WORKDIR /src
# The core dependencies, then Opacus alone (its own dependency is torch, which the coordinator
# never imports: only its accountant files are used).
COPY --from=requirements /requirements.txt /opacus.txt ./
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --no-compile --find-links /wheels -r requirements.txt \
 && pip install --no-compile --no-deps --find-links /wheels -r opacus.txt
# What a runtime never uses: tests (also the suites shipped under other names, and Opacus's
# top-level benchmarks/ and examples/), headers, static libraries, type stubs, debug symbols
# (not in the wheels' *.libs folders: auditwheel patched those, and strip breaks them), and uv,
# which flwr brings only to install an app's dependencies at run time (we never do); files that
# two wheels vendor identically (numpy's and scipy's libgfortran) become one, hard-linked; then
# bytecode (unchecked-hash .pyc files stay valid on the read-only root file system).
RUN SP=/opt/lepton/lib/python3.11/site-packages \
 && find "$SP" -type d -name tests -prune -exec rm -rf {} + \
 && find "$SP"/dp_accounting "$SP"/tree -type f -name '*_test.py' -delete \
 && rm -rf "$SP"/Crypto/SelfTest "$SP"/sqlalchemy/testing "$SP"/alembic/testing "$SP"/mako/testing \
      "$SP"/absl/testing "$SP"/benchmarks "$SP"/examples \
 && rm -rf "$SP"/numpy/_core/include "$SP"/scipy/_lib/_uarray/include \
 && find "$SP" -type f \( -name '*.a' -o -name '*.pyi' -o -name '*.pxd' -o -name '*.h' \) -delete \
 && find "$SP" -name '*.so*' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && rm -f /opt/lepton/bin/uv /opt/lepton/bin/uvx \
 && hardlink --ignore-time --quiet /opt/lepton \
 && python -c "import importlib.util, sys; sys.exit('torch is installed: the coordinator image must not carry it' if importlib.util.find_spec('torch') else 0)" \
 && python -c "import flwr, fastapi, sqlalchemy.dialects.postgresql.psycopg, alembic.command, scipy.signal, scipy.integrate, scipy.stats, dp_accounting.pld, dp_accounting.rdp, Crypto.Cipher.AES" \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash "$SP" > /dev/null
# The project's own code goes to /opt/lepton-app (the `app` stage below), its own small layer:
# a .pth file puts it on this environment's path (for every process, whatever its
# environment), and `lepton` on PATH points at its console script.
RUN echo /opt/lepton-app > /opt/lepton/lib/python3.11/site-packages/lepton-app.pth \
 && ln -s /opt/lepton-app/bin/lepton /opt/lepton/bin/lepton

# The project itself, in its own stage and its own small runtime layer: a code change rebuilds
# only this (seconds), never the environment above.
FROM build AS app
COPY pyproject.toml README.md ./
COPY lepton ./lepton
COPY lepton_fl ./lepton_fl
COPY lepton_demo ./lepton_demo
COPY coordinator ./coordinator
COPY client_node ./client_node
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --no-compile --no-deps --find-links /wheels --target /opt/lepton-app . \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/lepton-app \
 && lepton coordinator start --help > /dev/null \
 && python -c "import importlib.util, sys; from lepton_fl.privacy.accounting import AccountantStep, epsilon_spent; epsilon_spent([AccountantStep(1.0, 0.01, 100)], delta=1e-5, accountant='prv'); import coordinator.fl.server_app, coordinator.api.app; sys.exit('torch was imported' if 'torch' in sys.modules else 0)"

# The runtime environment: the build's, without the installers (pip, setuptools): nothing is
# installed at run time.
FROM build AS venv
RUN python -m pip uninstall --yes --quiet pip setuptools \
 && python -c "import importlib.util, sys; sys.exit('an installer is left' if importlib.util.find_spec('pip') else 0)" \
 && python -c "import flwr, fastapi, uvicorn, sqlalchemy, alembic, psycopg, scipy.signal, dp_accounting, typer, rich"

FROM ${PYTHON_IMAGE} AS runtime
ARG LEPTON_UID=10001
ARG LEPTON_GID=10001
# nginx-light: the public Fleet front (Debian's package; its config is generated at start).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# The image must not run as root, whatever the build arguments say.
RUN test "${LEPTON_UID}" != 0 && test "${LEPTON_GID}" != 0 \
 && groupadd --system --gid "${LEPTON_GID}" lepton \
 && useradd --system --uid "${LEPTON_UID}" --gid lepton --home-dir /var/lib/lepton/coordinator \
      --no-create-home --shell /usr/sbin/nologin lepton \
 && install -d -m 0700 -o lepton -g lepton /var/lib/lepton/coordinator \
 && install -d -m 0755 /etc/lepton /etc/lepton/pki
COPY --from=venv /opt/lepton /opt/lepton
COPY --from=app /opt/lepton-app /opt/lepton-app
# Nothing phones home: Flower telemetry and update checks are off (lepton sets them for its
# children too; here they also cover `docker exec ... lepton coordinator create-admin-key`),
# and the Hugging Face libraries never look for a hub.
ENV PATH=/opt/lepton/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/lepton/coordinator \
    LEPTON_HEALTH_PORT=9093 \
    LEPTON_API_PORT=9080
# SuperLink state database, its FLWR_HOME, logs, run journals, model checkpoints and the
# admin database (admin.db, unless --database-url names a PostgreSQL).
VOLUME ["/var/lib/lepton/coordinator"]
# 9093: the Fleet front (nodes). 9080: the admin API (plain HTTP, every call but enrollment
# and the signing key authenticated by API key: publish it on 127.0.0.1 only, or behind a
# TLS proxy of your own).
EXPOSE 9093 9080
USER ${LEPTON_UID}:${LEPTON_GID}
WORKDIR /var/lib/lepton/coordinator
# Healthy = the Fleet front's HTTPS port and the admin API's port accept TCP connections.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; [socket.create_connection(('127.0.0.1', int(os.environ[v])), timeout=3).close() for v in ('LEPTON_HEALTH_PORT', 'LEPTON_API_PORT')]"]
ENTRYPOINT ["lepton"]
# The admin API binds to the container's interface (--api-host 0.0.0.0) so that a port can be
# published for it; publish it on 127.0.0.1 only (compose.yaml does).
CMD ["coordinator", "start", "--data-dir", "/var/lib/lepton/coordinator", "--pki-dir", "/etc/lepton/pki", "--host", "0.0.0.0", "--port", "9093", "--api-host", "0.0.0.0", "--api-port", "9080"]
