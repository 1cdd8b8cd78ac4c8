"""The node's trainer as Flower's default path runs a ClientApp: a new process per message.

For `bench/round_overhead.py` only. Flower's `flower-superexec` spawns `flwr-clientapp`, which
installs the run's bundle and imports the ClientApp it names (``client_node.relay:app``,
which `sitecustomize` beside this file maps here) for every message; the module then does
what a Lepton node does once at start (read node.toml, load and check the data, open the
ledger, build the trainer) and answers with the same handler the node's executor calls. The
stages of each message go to ``stock-stages.jsonl`` in the node's state directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

_IMPORTS_STARTED = time.time()

import torch  # noqa: E402 - what a ClientApp imports is part of what it costs
from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from client_node.executor import MESSAGE_KINDS  # noqa: E402
from client_node.ledger import Ledger  # noqa: E402
from client_node.runner import load_site_data  # noqa: E402
from client_node.settings import load_node_settings  # noqa: E402
from client_node.trainer.core import NodeTrainer  # noqa: E402
from client_node.trainer.secure import SecureAggregation  # noqa: E402
from client_node.trainer.service import handle_message  # noqa: E402
from lepton_fl.wire import Envelope, pack, unpack  # noqa: E402

_IMPORTED = time.time()

app = ClientApp()


def _process_started() -> float:
    """When this process started (wall clock), from /proc (10 ms resolution)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _serve(msg: Message, context: Context) -> Message:
    entered = time.time()
    settings = load_node_settings(Path(str(context.node_config["lepton-config"])))
    torch.set_num_threads(settings.node.torch_threads)
    split, data_error = load_site_data(settings)
    with Ledger(settings.ledger_path) as ledger:
        trainer = NodeTrainer(
            settings=settings,
            split=split,
            ledger=ledger,
            device=torch.device("cpu"),
            data_error=data_error,
        )
        built = time.time()
        envelope = Envelope(
            kind=MESSAGE_KINDS[msg.metadata.message_type],
            run_id=msg.metadata.run_id,
            message_id=msg.metadata.message_id,
            node_id=context.node_id,
        )
        reply = handle_message(trainer, SecureAggregation(trainer), envelope, unpack(msg.content))
    handled = time.time()
    stages = {
        "message_type": msg.metadata.message_type,
        "created": msg.metadata.created_at,
        "process_started": _process_started(),
        "imports_started": _IMPORTS_STARTED,
        "imported": _IMPORTED,
        "entered": entered,
        "trainer_built": built,
        "handled": handled,
    }
    with (settings.node.state_dir / "stock-stages.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(stages) + "\n")
    return Message(pack(reply, per_record=False), reply_to=msg)


app.train()(_serve)
app.evaluate()(_serve)
app.query()(_serve)
