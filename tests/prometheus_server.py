"""A throwaway Prometheus for tests: a temp config and storage dir, listening on 127.0.0.1.

Usage::

    binary = find_prometheus()          # None when Debian's `prometheus` is not installed
    with PrometheusServer(binary, root, scrape_configs) as prometheus:
        prometheus.query('lepton_ledger_epsilon_spent{node="site-a"}')

The server is a child process started here and stopped by its PID (`ManagedProcess`);
nothing else is touched. `make test` installs the package when it is missing and it runs as
root; otherwise the tests that need it are skipped, except under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx

from lepton_fl.processes import (
    QUIET_FLOWER_ENV,
    ManagedProcess,
    free_port,
    port_accepts,
    wait_until,
)

INSTALL_HINT: Final = (
    "install Debian's prometheus package (`apt-get install -y --no-install-recommends "
    "prometheus`; `make test` does this when run as root)"
)


def find_prometheus() -> Path | None:
    """The `prometheus` binary, or None."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    return Path(found) if found else None


class PrometheusServer:
    """One Prometheus scraping `scrape_configs` every second, until stopped."""

    def __init__(self, binary: Path, root: Path, scrape_configs: list[dict[str, Any]]) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "prometheus.yml"
        # JSON is YAML: no YAML writer needed
        self.config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": scrape_configs,
                },
                indent=2,
            )
        )
        self.process = ManagedProcess(
            name="prometheus",
            argv=[
                str(binary),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log_path=root / "prometheus.log",
            env={**os.environ, **QUIET_FLOWER_ENV},  # as every process we start
            die_with_parent=True,
        )

    def start(self) -> PrometheusServer:
        """Start and wait until its HTTP API answers."""
        self.process.start()
        wait_until(
            lambda: port_accepts("127.0.0.1", self.port),
            timeout=60,
            what="Prometheus",
            process=self.process,
        )
        return self

    def stop(self) -> None:
        """Stop the process we started (by its PID)."""
        self.process.stop()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: the result vector."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with their health and last error."""
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def log_tail(self) -> str:
        """The end of its log, for failure messages."""
        return self.process.log_tail()
