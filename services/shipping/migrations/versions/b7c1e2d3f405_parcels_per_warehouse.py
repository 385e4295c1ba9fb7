"""several parcels per order: parcel name, items, status_since

Revision ID: b7c1e2d3f405
Revises: a2b79d434136
Create Date: 2026-12-02 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "b7c1e2d3f405"
down_revision = "a2b79d434136"
branch_labels = None
depends_on = None

# The first migration left the order id's unique constraint unnamed: its name is PostgreSQL's
# default there, and batch mode on SQLite needs a naming convention to find it.
_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _order_id_unique() -> str:
    return "shipment_order_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_shipment_order_id"


def upgrade() -> None:
    with op.batch_alter_table("shipment", schema=None, naming_convention=_CONVENTION) as batch_op:
        batch_op.add_column(sa.Column("parcel", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("items", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("status_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(_order_id_unique(), type_="unique")
    op.execute("UPDATE shipment SET parcel = warehouse, status_since = updated_at")
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.alter_column("parcel", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_index(batch_op.f("ix_shipment_order_id"), ["order_id"], unique=False)
        batch_op.create_unique_constraint("uq_shipment_order_id_parcel", ["order_id", "parcel"])


def downgrade() -> None:
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.drop_constraint("uq_shipment_order_id_parcel", type_="unique")
        batch_op.drop_index(batch_op.f("ix_shipment_order_id"))
        batch_op.create_unique_constraint("shipment_order_id_key", ["order_id"])
        batch_op.drop_column("status_since")
        batch_op.drop_column("items")
        batch_op.drop_column("parcel")
