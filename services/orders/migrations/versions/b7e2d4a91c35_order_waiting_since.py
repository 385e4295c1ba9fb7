"""order: since when the saga waits for one answer (dashboard's saga-deadline warning)

Revision ID: b7e2d4a91c35
Revises: 0f042a7a38b6
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "b7e2d4a91c35"
down_revision = "0f042a7a38b6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_order_waiting_since"), ["waiting_since"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_waiting_since"))
        batch_op.drop_column("waiting_since")
