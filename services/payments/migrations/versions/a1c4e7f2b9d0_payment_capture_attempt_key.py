"""payment: the capture attempt's provider idempotency key (write-ahead)

Revision ID: a1c4e7f2b9d0
Revises: 5db9a22d4212
Create Date: 2026-12-02 11:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a1c4e7f2b9d0"
down_revision = "5db9a22d4212"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.drop_column("idempotency_key")
