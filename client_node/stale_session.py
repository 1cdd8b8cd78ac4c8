"""End this node's own previous SuperLink session, left open by a crash, so a restart is
activated at once.

A SuperNode killed without its goodbye (SIGKILL, OOM, power loss) stays ONLINE at the
SuperLink until its heartbeat lapses (`client_node.supernode_launcher.STALE_SESSION_S`), and
the SuperLink refuses to activate the same key meanwhile (flower-supernode exit 305). The
goodbye a clean shutdown sends is Flower's Fleet `DeactivateNode`, signed with the node's
own key; a restarted node can send it on behalf of its dead predecessor. The SuperLink's node
authentication accepts it only when the signing key is the one registered for that node id, so
a node can end no session but its own.

The node id is the one Flower logged when it last activated this node ("SuperNode ID: N" in
the node's own supernode.log): a fresh state directory has none, and the node then waits for
the stale session to lapse as before.
"""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from client_node.settings import NodeSettings

log = logging.getLogger("lepton.node")

_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
"""What flwr 1.42 logs once the SuperLink activated the node (`ACTIVATED_MARK`)."""
CALL_TIMEOUT_S = 5.0


def previous_node_id(log_path: Path) -> int | None:
    """The node id of the last activation recorded in the SuperNode's log, if any."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = _NODE_ID.findall(text)
    return int(found[-1]) if found else None


def end_previous_session(settings: NodeSettings, node_id: int) -> bool:
    """Send the SuperLink the goodbye the dead predecessor could not; True when accepted.

    Never raises: a refusal (the session already lapsed, the SuperLink is down, the key is not
    that node's) only means the node waits for the lapse, as without this call."""
    try:
        private_key = load_ssh_private_key(settings.auth.private_key.read_bytes(), None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            return False
        client = FleetHttpClient(
            f"https://{settings.superlink.address}",
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                NodeAuthHttpInterceptor(private_key, private_key.public_key()),
            ],
            verify=ssl.create_default_context(cafile=str(settings.superlink.root_certificates)),
            timeout=CALL_TIMEOUT_S,
        )
        with client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
    except (OSError, ValueError, httpx.HTTPError) as err:
        log.info(
            "node %s: could not end its previous session (node id %d) at the SuperLink: %s",
            settings.node.name,
            node_id,
            err,
        )
        return False
    log.info(
        "node %s: ended its previous session (node id %d), left open by a crash",
        settings.node.name,
        node_id,
    )
    return True
