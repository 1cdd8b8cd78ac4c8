"""Ledger entries have a kind: a DP-SGD round ("train") or a scheduled evaluation's DP
release ("evaluate"), so the coordinator charges what every node charges.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="train")
        )
        batch.drop_constraint("uq_ledger_run_node_round", type_="unique")
        batch.create_unique_constraint(
            "uq_ledger_run_node_round_kind", ["run_id", "node_id", "round", "kind"]
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_constraint("uq_ledger_run_node_round_kind", type_="unique")
        batch.execute("DELETE FROM ledger_entries WHERE kind <> 'train'")
        batch.create_unique_constraint("uq_ledger_run_node_round", ["run_id", "node_id", "round"])
        batch.drop_column("kind")
