"""Reading a node's own privacy ledger for a report (the demo's summary, an audit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_node.ledger import Ledger
from lepton_fl.config import FederationSpec
from lepton_fl.privacy import epsilon_spent


@dataclass(frozen=True)
class NodeLedgerReport:
    """A node's recorded history on one dataset and the epsilon it supports."""

    num_examples: int
    epsilon: float
    epsilon_budget: float
    history: list[dict[str, Any]]


def read_node_ledger(
    path: Path, fed: FederationSpec, *, dataset_id: str, budget: float
) -> NodeLedgerReport:
    """Recompute one dataset's epsilon from its recorded history, under the federation's
    accountant (the history is per dataset: that is what epsilon composes over)."""
    with Ledger(path, read_only=True) as ledger:
        entries = ledger.entries(dataset_id)
    history = [e.step for e in entries]
    epsilon = epsilon_spent(history, delta=fed.privacy.delta, accountant=fed.privacy.accountant)
    return NodeLedgerReport(
        num_examples=entries[-1].num_examples if entries else 0,
        epsilon=epsilon,
        epsilon_budget=budget,
        history=[
            {
                "run_id": e.run_id,
                "round": e.round,
                "noise_multiplier": e.noise_multiplier,
                "sample_rate": e.sample_rate,
                "steps": e.steps,
            }
            for e in entries
        ],
    )


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a node's own ledger (read-only), as `POST /ledger/nodes/{id}/reconcile`
    takes them."""
    with Ledger(path, read_only=True) as ledger:
        entries = ledger.entries()
    return [
        {
            "flower_run_id": str(e.run_id),
            "round": e.round,
            "noise_multiplier": e.noise_multiplier,
            "sample_rate": e.sample_rate,
            "steps": e.steps,
        }
        for e in entries
    ]
