"""Reading a node's own privacy ledger for a report (the demo's summary, an audit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_node.ledger import Ledger, LedgerEntry
from lepton_fl.config import AccountantName, FederationSpec
from lepton_fl.privacy import epsilon_spent


@dataclass(frozen=True)
class NodeLedgerReport:
    """A node's recorded history on one dataset and the epsilon it supports.

    ``epsilon`` composes every charge (DP-SGD rounds and evaluation releases);
    ``epsilon_training`` the DP-SGD rounds alone, so ``epsilon - epsilon_training`` is what
    evaluation added. ``num_examples`` is the training-set size of the latest round.
    """

    num_examples: int
    epsilon: float
    epsilon_budget: float
    history: list[dict[str, Any]]
    epsilon_training: float = 0.0


def read_node_ledger(
    path: Path, fed: FederationSpec, *, dataset_id: str, budget: float
) -> NodeLedgerReport:
    """Recompute one dataset's epsilon from its recorded history, under the federation's
    accountant (the history is per dataset: that is what epsilon composes over)."""
    with Ledger(path, read_only=True) as ledger:
        entries = ledger.entries(dataset_id)
    delta, accountant = fed.privacy.delta, fed.privacy.accountant
    epsilon = epsilon_spent([e.step for e in entries], delta=delta, accountant=accountant)
    trained = [e for e in entries if e.kind == "train"]
    training = epsilon_spent([e.step for e in trained], delta=delta, accountant=accountant)
    return NodeLedgerReport(
        num_examples=trained[-1].num_examples if trained else 0,
        epsilon=epsilon,
        epsilon_budget=budget,
        history=[
            {
                "run_id": e.run_id,
                "round": e.round,
                "kind": e.kind,
                "noise_multiplier": e.noise_multiplier,
                "sample_rate": e.sample_rate,
                "steps": e.steps,
            }
            for e in entries
        ],
        epsilon_training=training,
    )


def epsilon_by_federation(
    entries: Sequence[LedgerEntry], *, delta: float, accountant: AccountantName
) -> list[dict[str, Any]]:
    """Epsilon per (dataset, federation) and per dataset, training and evaluation apart.

    Each row: ``dataset_id``, ``federation`` (``None`` for the dataset's whole history, and
    for entries recorded before ledgers named federations), ``epsilon`` (every charge),
    ``epsilon_training`` (DP-SGD rounds only) and ``evaluations`` (releases counted)."""
    rows: list[dict[str, Any]] = []
    for dataset in dict.fromkeys(e.dataset_id for e in entries):
        mine = [e for e in entries if e.dataset_id == dataset]
        groups: list[tuple[str | None, list[LedgerEntry]]] = [
            (name, [e for e in mine if e.federation == name])
            for name in dict.fromkeys(e.federation for e in mine)
        ]
        for federation, group in [*groups, ("*", mine)]:
            rows.append(
                {
                    "dataset_id": dataset,
                    "federation": federation,
                    "epsilon": epsilon_spent(
                        [e.step for e in group], delta=delta, accountant=accountant
                    ),
                    "epsilon_training": epsilon_spent(
                        [e.step for e in group if e.kind == "train"],
                        delta=delta,
                        accountant=accountant,
                    ),
                    "evaluations": sum(1 for e in group if e.kind == "evaluate"),
                }
            )
    return rows


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a node's own ledger (read-only), training rounds and evaluation releases,
    as `POST /ledger/nodes/{id}/reconcile` takes them."""
    with Ledger(path, read_only=True) as ledger:
        entries = ledger.entries()
        commitments = ledger.row_commitments()
    return [
        {
            "flower_run_id": str(e.run_id),
            "round": e.round,
            "noise_multiplier": e.noise_multiplier,
            "sample_rate": e.sample_rate,
            "steps": e.steps,
            "kind": e.kind,
            "delta": e.delta,
            "accountant": e.accountant,
            "epsilon_after": e.epsilon_after,
            "row_commitment": commitments.get((e.dataset_id, e.run_id, e.round, e.kind)),
        }
        for e in entries
    ]
