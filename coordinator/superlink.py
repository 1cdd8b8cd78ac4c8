"""The coordinator's Flower SuperLink: TLS, SuperNode authentication, persistent state.

`SuperLink` starts `flower-superlink` as a child process and talks to it through the `flwr`
command line (register node keys, submit runs, read run status), with a FLWR_HOME of its
own so that no user-level Flower configuration is read or written.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lepton_fl.config import RunSpec
from lepton_fl.processes import (
    ManagedProcess,
    ProcessError,
    executable,
    flower_env,
    port_accepts,
    require_free_port,
    wait_until,
)

CONNECTION = "lepton"


class SuperLinkError(RuntimeError):
    """The SuperLink or the `flwr` CLI refused or failed an operation."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SuperLinkSettings:
    """Where the coordinator's SuperLink listens and which certificates it serves."""

    data_dir: Path
    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    host: str = "127.0.0.1"
    port: int = 9093

    @property
    def address(self) -> str:
        """host:port the nodes and the CLI connect to."""
        return f"{self.host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME for the SuperLink and every `flwr` CLI call made for it."""
        return self.data_dir / "flwr"

    @property
    def state_database(self) -> Path:
        """The SuperLink's persistent state (registered nodes, runs, messages)."""
        return self.data_dir / "superlink-state.db"

    def check_files(self) -> None:
        """Fail early, with the path, if a certificate or key is missing or unreadable."""
        for label, path in (
            ("CA certificate", self.ca_certificate),
            ("server certificate", self.server_certificate),
            ("server key", self.server_key),
        ):
            if not path.is_file():
                raise SuperLinkError(
                    f"The {label} {path} does not exist. Create the PKI with "
                    "`lepton certs init --dir DIR --node NAME ...` and pass its files.",
                    code="missing_certificate",
                )
            try:
                path.read_bytes()
            except OSError as err:
                raise SuperLinkError(
                    f"The {label} {path} cannot be read ({err.strerror}); fix its permissions.",
                    code="unreadable_certificate",
                ) from err


def fab_directory() -> Path:
    """The Flower app directory: only a pyproject naming installed components."""
    return Path(str(resources.files("coordinator.fl") / "fab"))


class SuperLink:
    """A running (or to-be-started) SuperLink and the `flwr` CLI bound to it."""

    def __init__(self, settings: SuperLinkSettings) -> None:
        self.settings = settings
        self.process: ManagedProcess | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The exact `flower-superlink` command line."""
        s = self.settings
        return [
            executable("flower-superlink"),
            "--ssl-ca-certfile",
            str(s.ca_certificate),
            "--ssl-certfile",
            str(s.server_certificate),
            "--ssl-keyfile",
            str(s.server_key),
            "--enable-supernode-auth",
            "--database",
            str(s.state_database),
            "--disable-runtime-dependency-installation",
            "--host",
            s.host,
            "--port",
            str(s.port),
        ]

    def start(self, *, timeout: float = 60.0) -> ManagedProcess:
        """Start flower-superlink and wait until its HTTPS port accepts connections."""
        s = self.settings
        s.check_files()
        require_free_port(s.host, s.port, what="SuperLink")
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_connection_config()
        self.process = ManagedProcess(
            name="flower-superlink",
            argv=self.command(),
            log_path=s.data_dir / "logs" / "superlink.log",
            env=flower_env(s.flwr_home),
            cwd=s.data_dir,
        ).start()
        wait_until(
            lambda: port_accepts(s.host, s.port),
            timeout=timeout,
            what=f"the SuperLink to listen on {s.address}",
            process=self.process,
        )
        return self.process

    def stop(self) -> None:
        """Stop the SuperLink we started (and the ServerApp processes it spawned)."""
        if self.process is not None:
            self.process.stop()

    def write_connection_config(self) -> Path:
        """Write FLWR_HOME/config.toml with a TLS connection to this SuperLink."""
        s = self.settings
        s.flwr_home.mkdir(parents=True, exist_ok=True)
        path = s.flwr_home / "config.toml"
        path.write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f"address = {json.dumps(s.address)}\n"
            f"root-certificates = {json.dumps(str(s.ca_certificate.resolve()))}\n",
            encoding="utf-8",
        )
        return path

    # -- the flwr CLI ---------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run `flwr ARGS --format json` against this SuperLink and return its JSON."""
        argv = [executable("flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                argv,
                env=flower_env(self.settings.flwr_home, {"COLUMNS": "200"}),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise SuperLinkError(
                f"`flwr {args[0]}` did not answer within {timeout:.0f} s; is the SuperLink at "
                f"{self.settings.address} up?",
                code="flwr_timeout",
            ) from err
        payload = _last_json_object(done.stdout)
        if done.returncode != 0 or payload is None or not payload.get("success", False):
            detail = (payload or {}).get("error-message") or done.stderr.strip() or done.stdout
            raise SuperLinkError(
                f"`flwr {' '.join(args[:2])}` failed (exit {done.returncode}): {detail}",
                code="flwr_failed",
            )
        return payload

    def register_node(self, public_key: Path, *, name: str) -> int:
        """Register a SuperNode's public key; return the node id the SuperLink assigned."""
        if not public_key.is_file():
            raise SuperLinkError(
                f"The node public key {public_key} does not exist.", code="missing_key"
            )
        payload = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name)
        return int(payload["node-id"])

    def unregister_node(self, node_id: int) -> None:
        """Unregister a node: its key can no longer connect (used when a node is revoked)."""
        self.flwr("supernode", "unregister", str(node_id), CONNECTION)

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (`flwr stop`)."""
        self.flwr("stop", str(run_id), CONNECTION)

    def submit_run(self, run: RunSpec, *, work_dir: Path) -> int:
        """Submit the Lepton Flower app for `run`; return Flower's run id."""
        work_dir.mkdir(parents=True, exist_ok=True)
        config_path = work_dir / f"run-{run.federation.name}-{time.time_ns()}.toml"
        config_path.write_text(f"lepton-run = {json.dumps(run.model_dump_json())}\n")
        payload = self.flwr(
            "run", str(fab_directory()), CONNECTION, "--run-config", str(config_path)
        )
        return int(payload["run-id"])


def _last_json_object(text: str) -> dict[str, Any] | None:
    """`flwr --format json` prints one JSON object, sometimes after other lines."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


__all__ = ["CONNECTION", "ProcessError", "SuperLink", "SuperLinkError", "SuperLinkSettings"]
