"""order_hold: what a replacement parcel's reservation holds, told again when asked again

Revision ID: d4e5f6a7b8c9
Revises: 626b9fc4d7f5
Create Date: 2026-12-02 16:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "d4e5f6a7b8c9"
down_revision = "626b9fc4d7f5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order_hold", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allocations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("order_hold", schema=None) as batch_op:
        batch_op.drop_column("allocations")
