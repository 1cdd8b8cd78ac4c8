"""The coordinator's Flower SuperLink: TLS, SuperNode authentication, persistent state.

`SuperLink` starts `flower-superlink` as a child process **on loopback only**, with a TLS
certificate of its own (a throwaway CA made at every start, `loopback-pki/`), and the public
Fleet front (`coordinator.fleet_front`, nginx) that forwards only Flower's Fleet routes from
the public port to it. Flower's Control and Runtime APIs (register node keys, submit and stop
runs, claim run tasks) are therefore reachable from the coordinator host only. The `flwr`
command line talks to the loopback SuperLink, with a FLWR_HOME of its own so that no
user-level Flower configuration is read or written.

The SuperLink runs with ``--isolation process``: it starts no ServerApp itself. The
coordinator's own launcher (`coordinator.fl.launcher`) claims ServerApp tasks and runs only
the installed `coordinator.fl.server_app`, whatever a submitted app bundle names.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import (  # pylint: disable=E0611
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
)
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from coordinator.fleet_front import FrontSettings, front_process
from lepton_fl.config import RunSpec
from lepton_fl.crypto import create_pki
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
LOOPBACK = "127.0.0.1"


class SuperLinkError(RuntimeError):
    """The SuperLink or the `flwr` CLI refused or failed an operation."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SuperLinkSettings:
    """Where the coordinator's public Fleet port and its loopback SuperLink listen.

    ``host:port`` is the public Fleet front (nodes connect there, with ``ca_certificate``);
    the SuperLink itself listens on ``127.0.0.1:superlink_port`` only.
    """

    data_dir: Path
    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    host: str = "127.0.0.1"
    port: int = 9093
    superlink_port: int = 9091

    @property
    def address(self) -> str:
        """host:port the nodes connect to (the Fleet front)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback_address(self) -> str:
        """The SuperLink's own address: Control, Runtime and Fleet APIs, loopback only."""
        return f"{LOOPBACK}:{self.superlink_port}"

    @property
    def loopback_pki(self) -> Path:
        """The throwaway CA and certificate of the loopback SuperLink (made at every start)."""
        return self.data_dir / "loopback-pki"

    @property
    def loopback_ca(self) -> Path:
        """What loopback clients (the flwr CLI, the ServerApp launcher, the front) trust."""
        return self.loopback_pki / "ca.pem"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME for the SuperLink and every `flwr` CLI call made for it."""
        return self.data_dir / "flwr"

    @property
    def registrations_path(self) -> Path:
        """The node keys registered at the SuperLink and their node ids
        (`SuperLink.register_again` registers them anew at every start)."""
        return self.data_dir / "node-registrations.json"

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
        self.front: ManagedProcess | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The exact `flower-superlink` command line (loopback, process isolation): Flower's
        own entry point, run through `coordinator.superlink_launcher`, whose pulls wait for
        what they ask for instead of being polled."""
        s = self.settings
        pki = s.loopback_pki
        return [
            sys.executable,
            "-m",
            "coordinator.superlink_launcher",
            "--ssl-ca-certfile",
            str(pki / "ca.pem"),
            "--ssl-certfile",
            str(pki / "server.pem"),
            "--ssl-keyfile",
            str(pki / "server.key"),
            "--enable-supernode-auth",
            "--database",
            FLWR_IN_MEMORY_DB_NAME,
            "--disable-runtime-dependency-installation",
            "--isolation",
            "process",
            "--host",
            LOOPBACK,
            "--port",
            str(s.superlink_port),
        ]

    def front_settings(self) -> FrontSettings:
        """The public Fleet front's settings."""
        s = self.settings
        return FrontSettings(
            listen_host=s.host,
            listen_port=s.port,
            upstream_port=s.superlink_port,
            server_certificate=s.server_certificate.resolve(),
            server_key=s.server_key.resolve(),
            ca_certificate=s.loopback_ca.resolve(),
            directory=(s.data_dir / "front").resolve(),
            log_dir=(s.data_dir / "logs").resolve(),
        )

    def start(self, *, timeout: float = 60.0) -> ManagedProcess:
        """Start flower-superlink on loopback, then the public Fleet front; wait for both."""
        s = self.settings
        s.check_files()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        front = front_process(self.front_settings())  # fails early when nginx is missing
        superlink = ManagedProcess(
            name="flower-superlink",
            argv=self.command(),
            log_path=s.data_dir / "logs" / "superlink.log",
            env=flower_env(s.flwr_home),
            cwd=s.data_dir,
            die_with_parent=True,
            pid_file=s.data_dir / "flower-superlink.pid",
        )
        # A front or SuperLink that outlived a crashed coordinator holds the ports: stop it
        # (only if its pid file shows it is ours) before checking them.
        front.stop_orphan()
        superlink.stop_orphan()
        require_free_port(s.host, s.port, what="Fleet front")
        require_free_port(LOOPBACK, s.superlink_port, what="SuperLink (loopback)")
        create_pki(s.loopback_pki, node_names=[], hosts=(LOOPBACK, "localhost"), overwrite=True)
        self.write_connection_config()
        self.process = superlink.start()
        wait_until(
            lambda: port_accepts(LOOPBACK, s.superlink_port),
            timeout=timeout,
            what=f"the SuperLink to listen on {s.loopback_address}",
            process=self.process,
        )
        self.front = front.start()
        wait_until(
            lambda: port_accepts(s.host, s.port),
            timeout=timeout,
            what=f"the Fleet front to listen on {s.address}",
            process=self.front,
        )
        return self.process

    def processes(self) -> list[ManagedProcess]:
        """The processes this object started (to watch them)."""
        return [p for p in (self.process, self.front) if p is not None]

    def stop(self) -> None:
        """Stop the front, then the SuperLink we started."""
        if self.front is not None:
            self.front.stop()
        if self.process is not None:
            self.process.stop()

    def write_connection_config(self) -> Path:
        """Write FLWR_HOME/config.toml with a TLS connection to the loopback SuperLink."""
        s = self.settings
        s.flwr_home.mkdir(parents=True, exist_ok=True)
        path = s.flwr_home / "config.toml"
        path.write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f"address = {json.dumps(s.loopback_address)}\n"
            f"root-certificates = {json.dumps(str(s.loopback_ca.resolve()))}\n",
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
                f"{self.settings.loopback_address} up?",
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
        node_id = int(payload["node-id"])
        text = public_key.read_text(encoding="utf-8").strip()
        with self._registrations_lock():
            kept = [r for r in self.registrations() if r.node_id != node_id]
            self._keep_registrations([*kept, Registration(name, text, node_id)])
        return node_id

    def unregister_node(self, node_id: int) -> None:
        """Unregister a node: its key can no longer connect (used when a node is revoked)."""
        self.flwr("supernode", "unregister", str(node_id), CONNECTION)
        with self._registrations_lock():
            self._keep_registrations([r for r in self.registrations() if r.node_id != node_id])

    # -- node registrations across restarts -----------------------------------------------

    def registrations(self) -> list[Registration]:
        """The node keys registered through this object's data directory (empty if none)."""
        path = self.settings.registrations_path
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise SuperLinkError(
                f"The node registrations {path} cannot be read ({err}). Restore it from a "
                "backup, or register the nodes' keys again.",
                code="registrations_unreadable",
            ) from err
        return [Registration(str(r["name"]), str(r["public_key"]), int(r["node_id"])) for r in rows]

    def register_again(self, registrations: Sequence[Registration]) -> dict[int, int]:
        """Register every key again at a SuperLink that just started (its state is in
        memory: it starts empty); keep the new node ids; return old id -> new id.

        Over the loopback Control API in this process: a `flwr supernode register` per key
        costs about a second of CPU, too much at every start of a coordinator with many
        nodes."""
        again: list[Registration] = []
        moved: dict[int, int] = {}
        with self._control() as client:
            for old in registrations:
                key = load_ssh_public_key(old.public_key.encode("ascii"))
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise SuperLinkError(
                        f"The registered key of node {old.name} is not an EC key.",
                        code="invalid_key",
                    )
                request = RegisterNodeRequest(public_key=public_key_to_bytes(key), name=old.name)
                node_id = int(client.RegisterNode(request).node_id)
                again.append(Registration(old.name, old.public_key, node_id))
                moved[old.node_id] = node_id
        with self._registrations_lock():
            self._keep_registrations(again)
        return moved

    @contextmanager
    def _registrations_lock(self) -> Iterator[None]:
        """One writer of the registrations file at a time, across threads and processes
        (the API's enrollments, `lepton coordinator register-node`)."""
        path = self.settings.registrations_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.with_name(path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _keep_registrations(self, registrations: Sequence[Registration]) -> None:
        path = self.settings.registrations_path
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        rows = [dataclasses.asdict(r) for r in registrations]
        temporary.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        temporary.replace(path)

    @contextmanager
    def _control(self) -> Iterator[ControlHttpClient]:
        """A client of the SuperLink's loopback Control API, as the `flwr` CLI makes one."""
        try:
            client = ControlHttpClient.from_server_address(
                server_address=self.settings.loopback_address,
                insecure=False,
                root_certificates=self.settings.loopback_ca.read_bytes(),
                interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
            )
            with client:
                yield client
        except (OSError, httpx.HTTPError) as err:
            raise SuperLinkError(
                f"The SuperLink's Control API at {self.settings.loopback_address} failed: {err}",
                code="control_failed",
            ) from err

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (`flwr stop`)."""
        self.flwr("stop", str(run_id), CONNECTION)

    def run_statuses(self) -> dict[int, FlowerRunStatus]:
        """Every run the SuperLink knows, by Flower run id: what `flwr ls` lists, asked over
        the same loopback Control API in this process.

        The reconciler asks every `RECONCILE_INTERVAL_S` while a run is active; a `flwr ls`
        process costs about 1.2 s of CPU (importing the CLI), this call a few milliseconds.
        ``tests/test_run_reconcile.py`` checks that both give the same statuses."""
        with self._control() as client:
            response = client.ListRuns(ListRunsRequest())
        found: dict[int, FlowerRunStatus] = {}
        for proto in response.run_dict.values():
            run = run_from_proto(proto)
            found[run.run_id] = FlowerRunStatus(
                run.run_id, run.status.status, run.status.sub_status, run.status.details
            )
        return found

    def node_sessions(self) -> dict[int, NodeSession]:
        """Every node the SuperLink knows, by node id: its status (``online``, ``offline``,
        ``registered``) and the heartbeat interval it keeps for the node (Control API)."""
        with self._control() as client:
            response = client.ListNodes(ListNodesRequest())
        return {
            int(info.node_id): NodeSession(
                int(info.node_id), info.status, float(info.heartbeat_interval)
            )
            for info in response.nodes_info
        }

    def submit_run(self, run: RunSpec, *, work_dir: Path) -> int:
        """Submit the Lepton Flower app for `run`; return Flower's run id."""
        work_dir.mkdir(parents=True, exist_ok=True)
        config_path = work_dir / f"run-{run.federation.name}-{time.time_ns()}.toml"
        config_path.write_text(f"lepton-run = {json.dumps(run.model_dump_json())}\n")
        payload = self.flwr(
            "run", str(fab_directory()), CONNECTION, "--run-config", str(config_path)
        )
        return int(payload["run-id"])


def key_text(public_key: str) -> str:
    """An OpenSSH public key without its comment: ``<type> <base64>``."""
    return " ".join(public_key.split()[:2])


@dataclass(frozen=True)
class NodeSession:
    """A node as the SuperLink sees it."""

    node_id: int
    status: str
    heartbeat_interval: float


@dataclass(frozen=True)
class Registration:
    """A node key registered at the SuperLink: the name it was registered under, the key
    (OpenSSH text) and the node id the SuperLink gave it."""

    name: str
    public_key: str
    node_id: int


@dataclass(frozen=True)
class FlowerRunStatus:
    """One run as the SuperLink reports it: Flower's status (``pending``, ``starting``,
    ``running``, ``finished``), and for a finished run its sub-status (``completed``,
    ``failed``, ``stopped``) and the SuperLink's details (why it failed)."""

    run_id: int
    status: str
    sub_status: str = ""
    details: str = ""

    @property
    def finished(self) -> bool:
        """Whether the SuperLink has ended the run (it will send its nodes nothing more)."""
        return self.status == "finished"

    def describe(self) -> str:
        """``finished:failed (No heartbeat received from the task.)`` and the like."""
        text = f"{self.status}:{self.sub_status}" if self.sub_status else self.status
        return f"{text} ({self.details})" if self.details else text

    @classmethod
    def from_ls_row(cls, row: object) -> FlowerRunStatus | None:
        """A row of `flwr ls --format json` (``None`` when it is not one)."""
        if not isinstance(row, dict):
            return None
        try:
            run_id = int(str(row["run-id"]))
        except (KeyError, ValueError):
            return None
        status, _, sub_status = str(row.get("status", "")).partition(":")
        details = row.get("status-details")
        if not isinstance(details, str) or details == "N/A":  # the CLI's rendering of none
            details = ""
        return cls(run_id, status, sub_status, details)


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


__all__ = [
    "CONNECTION",
    "FlowerRunStatus",
    "NodeSession",
    "ProcessError",
    "Registration",
    "key_text",
    "SuperLink",
    "SuperLinkError",
    "SuperLinkSettings",
]
