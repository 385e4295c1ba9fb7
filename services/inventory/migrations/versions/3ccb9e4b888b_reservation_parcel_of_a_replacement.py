"""reservation: the replacement parcel a reservation was made for, so its release is its own

Revision ID: 3ccb9e4b888b
Revises: d4e5f6a7b8c9
Create Date: 2026-12-02 19:35:00
"""

import sqlalchemy as sa
from alembic import op

revision = "3ccb9e4b888b"
down_revision = "d4e5f6a7b8c9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parcel", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reservation", schema=None) as batch_op:
        batch_op.drop_column("parcel")
