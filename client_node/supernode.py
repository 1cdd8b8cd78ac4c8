"""The node's Flower SuperNode: TLS to the SuperLink, authenticated with the node's key.

It runs with ``--isolation process``: the SuperNode only queues tasks on its Runtime API
(127.0.0.1, ``[flower] clientappio_port``) and starts no ClientApp process of its own. The
trainer's executor (`client_node.executor`) claims them, so no code from a Flower App Bundle
ever runs on the node. Claiming a task (``AcquireTask``) is signed with a secret that is new at
every start and readable only by the node's user (``--superexec-auth-secret-file``), so
another local process cannot steal the node's tasks.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from pathlib import Path

from client_node.settings import NodeSettings
from client_node.wake import WAKE_ENV, wake_socket_path
from lepton_fl.files import write_file
from lepton_fl.processes import ManagedProcess, flower_env, require_free_port

RUNTIME_HOST = "127.0.0.1"
SECRET_FILE = "superexec.secret"  # noqa: S105 - a file name, not a secret
PID_FILE = "supernode.pid"


def runtime_address(settings: NodeSettings) -> str:
    """Where the SuperNode serves its Runtime API (loopback only)."""
    return f"{RUNTIME_HOST}:{settings.flower.clientappio_port}"


def superexec_secret_path(settings: NodeSettings) -> Path:
    """The SuperExec secret file in the node's state directory."""
    return settings.node.state_dir / SECRET_FILE


def supernode_log_path(settings: NodeSettings) -> Path:
    """The SuperNode's log (every start appends to it)."""
    return settings.node.state_dir / "logs" / "supernode.log"


def new_superexec_secret(settings: NodeSettings) -> bytes:
    """Write a fresh random secret (mode 0600) for this start and return it."""
    path = superexec_secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # the previous start's secret; never reuse or widen it
    secret = secrets.token_bytes(32)
    write_file(path, secret, mode=0o600)
    return secret


def supernode_command(settings: NodeSettings) -> list[str]:
    """The exact `flower-supernode` command line for this node (Flower's own entry point,
    run through `client_node.supernode_launcher`, which shortens its fixed waits)."""
    return [
        sys.executable,
        "-m",
        "client_node.supernode_launcher",
        "--root-certificates",
        str(settings.superlink.root_certificates),
        "--superlink",
        settings.superlink.address,
        "--auth-supernode-private-key",
        str(settings.auth.private_key),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(superexec_secret_path(settings)),
        "--host",
        RUNTIME_HOST,
        "--port",
        str(settings.flower.clientappio_port),
        "--node-config",
        f'node-name="{settings.node.name}"',
    ]


def start_supernode(settings: NodeSettings, *, check_port: bool = True) -> ManagedProcess:
    """Start flower-supernode as a child process logging to the node's state directory.

    It dies with the trainer: a SuperNode whose trainer is gone (crashed, killed, out of
    memory) must leave the federation, not keep answering for a node that cannot train. Should
    one survive its trainer anyway, the next start stops it first (its pid file,
    ``state_dir/supernode.pid``: see `lepton_fl.processes.stop_orphan`).
    Call `new_superexec_secret` first. `check_port=False` when restarting it: the port its
    predecessor used lingers in TIME_WAIT, which our strict check (no SO_REUSEADDR) refuses
    but uvicorn binds through.
    """
    process = ManagedProcess(
        name=f"flower-supernode ({settings.node.name})",
        argv=supernode_command(settings),
        log_path=supernode_log_path(settings),
        env={
            **flower_env(settings.flwr_home),
            WAKE_ENV: str(wake_socket_path(settings.node.state_dir)),
        },
        cwd=settings.node.state_dir,
        die_with_parent=True,
        pid_file=settings.node.state_dir / PID_FILE,
    )
    process.stop_orphan()  # before the port check: an orphan would hold the port
    if check_port:
        port = settings.flower.clientappio_port
        require_free_port(RUNTIME_HOST, port, what="SuperNode runtime API")
    return process.start()
