"""payment: the provider that took it, and the customer's action (QR code, redirect) with its window

Revision ID: c5f81a2d7e34
Revises: e0eeea142a6c
Create Date: 2026-12-02 16:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "c5f81a2d7e34"
down_revision = "e0eeea142a6c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("provider", sa.String(length=20), server_default="sandbox", nullable=False)
        )
        batch_op.add_column(sa.Column("action_type", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("action_url", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_payment_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_expires_at"))
        batch_op.drop_column("expires_at")
        batch_op.drop_column("action_url")
        batch_op.drop_column("action_type")
        batch_op.drop_column("provider")
