"""order_parcel: every parcel's tracking number, so the search finds an order by any of them

Revision ID: c3d9e4f5a6b7
Revises: b7c4e19a2d05
Create Date: 2026-12-02 16:30:00
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "c3d9e4f5a6b7"
down_revision = "b7c4e19a2d05"
branch_labels = None
depends_on = None


def _numbers(shipment) -> set[str]:
    """The tracking numbers an order's stored shipment names: each parcel's, and the one at the top
    of an order recorded before orders had parcels."""
    if isinstance(shipment, str):
        shipment = json.loads(shipment)
    if not shipment:
        return set()
    found = {p.get("tracking_number") for p in shipment.get("parcels", [])} | {
        shipment.get("tracking_number")
    }
    return {n for n in found if n}


def upgrade() -> None:
    op.create_table(
        "order_parcel",
        sa.Column("tracking_number", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["order.id"]),
        sa.PrimaryKeyConstraint("tracking_number"),
    )
    with op.batch_alter_table("order_parcel", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_parcel_order_id"), ["order_id"], unique=False)
    bind = op.get_bind()
    rows = bind.execute(sa.text('SELECT id, shipment FROM "order" WHERE shipment IS NOT NULL'))
    parcels = [
        {"tracking_number": n, "order_id": order_id}
        for order_id, shipment in rows
        for n in _numbers(shipment)
    ]
    if parcels:
        bind.execute(
            sa.text(
                "INSERT INTO order_parcel (tracking_number, order_id) VALUES (:tracking_number, :order_id)"
            ),
            parcels,
        )
    op.drop_index("ix_order_tracking_number", table_name="order")


def downgrade() -> None:
    op.create_index(
        "ix_order_tracking_number", "order", [sa.text("(shipment ->> 'tracking_number')")], unique=False
    )
    with op.batch_alter_table("order_parcel", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_parcel_order_id"))
    op.drop_table("order_parcel")
