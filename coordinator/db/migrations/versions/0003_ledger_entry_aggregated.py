"""Ledger entries say whether the charge entered an aggregate: a node charges its ledger
before its update leaves it, so a round that fails after the updates were sent (a secure
round that could not be unmasked) still cost the node, and the coordinator records that
charge as "charged, not aggregated". ``source`` says where the coordinator learnt the
charge: the run journal, or a node's own ledger (a reconcile repair). ``node_ledger_row`` is
the node's commitment (an HMAC of the row hash) to the charge's row in its hash-chained
ledger, as the node reported it with the charge: a node ledger rewritten afterwards no
longer gives it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(
            sa.Column("aggregated", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="journal")
        )
        batch.add_column(sa.Column("node_ledger_row", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("node_ledger_row")
        batch.drop_column("source")
        batch.drop_column("aggregated")
