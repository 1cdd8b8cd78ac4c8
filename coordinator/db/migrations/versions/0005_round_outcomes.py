"""Each recorded round keeps how every member that is not in its aggregate left it: its
status (``refused``, ``error`` or ``dropped``) and the stable code the node or the ServerApp
gave (``budget_exhausted``, ``no_reply``, ``secagg_dropped``, ...), as canonical JSON
``{node id: [status, code]}``. ``refusals`` keeps the free-text reasons as before; the
metrics endpoint counts refusals by code and dropouts per round from this column. Rounds
recorded before it are NULL: their members are counted under status and code
``unrecorded``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_rounds") as batch:
        batch.add_column(sa.Column("outcomes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_rounds") as batch:
        batch.drop_column("outcomes")
