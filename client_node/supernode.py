"""The node's Flower SuperNode: TLS to the SuperLink, authenticated with the node's key."""

from __future__ import annotations

from client_node.settings import NodeSettings
from lepton_fl.processes import ManagedProcess, executable, flower_env, require_free_port


def supernode_command(settings: NodeSettings) -> list[str]:
    """The exact `flower-supernode` command line for this node."""
    node_config = (
        f'trainer-socket="{settings.trainer_socket}" '
        f"trainer-timeout={settings.flower.trainer_timeout_s} "
        f'node-name="{settings.node.name}"'
    )
    return [
        executable("flower-supernode"),
        "--root-certificates",
        str(settings.superlink.root_certificates),
        "--superlink",
        settings.superlink.address,
        "--auth-supernode-private-key",
        str(settings.auth.private_key),
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.flower.clientappio_port),
        "--node-config",
        node_config,
    ]


def start_supernode(settings: NodeSettings) -> ManagedProcess:
    """Start flower-supernode as a child process logging to the node's state directory.

    It dies with the trainer: a SuperNode whose trainer is gone (crashed, killed, out of
    memory) must leave the federation, not keep answering for a node that cannot train.
    """
    require_free_port("127.0.0.1", settings.flower.clientappio_port, what="SuperNode runtime API")
    return ManagedProcess(
        name=f"flower-supernode ({settings.node.name})",
        argv=supernode_command(settings),
        log_path=settings.node.state_dir / "logs" / "supernode.log",
        env=flower_env(settings.flwr_home),
        cwd=settings.node.state_dir,
        die_with_parent=True,
    ).start()
