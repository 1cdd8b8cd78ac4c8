"""The ClientApp *name* the Lepton FAB gives: ``client_node.relay:app``. Nothing loads it.

The coordinator's Flower App Bundle (``coordinator/fl/fab/pyproject.toml``) must name a
ClientApp component, and it names this one. A node never loads it: its SuperNode runs with
``--isolation process`` and the trainer's executor (`client_node.executor`) answers every task
in the trainer process, after checking that the bundle names exactly this component and ships
no code (`client_node.fab_check`). The name is what the node checks; this module only keeps it
importable.

Should anything load it anyway (a SuperNode started by hand in Flower's default subprocess
mode), it refuses every message rather than reaching the trainer by some other path.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

REFUSAL = (
    "client_node.relay is a name only: a Lepton node answers messages in its trainer's "
    "executor (start it with `lepton node start`), never in a Flower-spawned ClientApp."
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Refuse: see the module docstring."""
    return refuse(msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Refuse: see the module docstring."""
    return refuse(msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Refuse: see the module docstring."""
    return refuse(msg)


def refuse(msg: Message) -> Message:
    """An error reply naming why this ClientApp does not serve messages."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=REFUSAL), reply_to=msg)
