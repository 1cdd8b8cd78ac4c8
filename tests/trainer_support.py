"""Building in-process `NodeTrainer`s for tests: one breast-cancer partition, a real ledger
per trainer, every ledger closed when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from client_node.ledger import Ledger
from client_node.settings import NodeSettings
from client_node.trainer.core import NodeTrainer
from lepton_fl.datasets import load_partition
from lepton_fl.wire import Envelope, MessageKind


class TrainerFactory:
    """Makes trainers on site-0-of-3 of breast cancer; remembers their ledgers."""

    def __init__(self) -> None:
        self.ledgers: list[Ledger] = []

    def trainer(self, settings: NodeSettings, *, restart: bool = False) -> NodeTrainer:
        """A trainer over `settings`; ``restart`` first closes the earlier ledgers (one
        writer per ledger file, as a restarted node)."""
        if restart:
            self.close()
        ledger = Ledger(settings.ledger_path)
        self.ledgers.append(ledger)
        split = load_partition("breast_cancer", "site-0-of-3")
        return NodeTrainer(
            settings=settings, split=split, ledger=ledger, device=torch.device("cpu")
        )

    def close(self) -> None:
        """Close every ledger made so far."""
        for ledger in self.ledgers:
            ledger.close()
        self.ledgers.clear()


@contextmanager
def trainer_factory() -> Iterator[TrainerFactory]:
    """A `TrainerFactory` whose ledgers are closed at the end of the block."""
    factory = TrainerFactory()
    try:
        yield factory
    finally:
        factory.close()


def envelope(run_id: int = 1, *, kind: MessageKind = "train", node_id: int = 9) -> Envelope:
    """The envelope of a message as the executor hands it to the trainer."""
    return Envelope(kind=kind, run_id=run_id, message_id="m", node_id=node_id)
