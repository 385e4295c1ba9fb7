"""shipment: the tracking number of the lost parcel a parcel is sent instead of

Revision ID: e5f6a7b8c9d0
Revises: b7c1e2d3f405
Create Date: 2026-12-02 16:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "e5f6a7b8c9d0"
down_revision = "b7c1e2d3f405"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.drop_column("replaces")
