"""console: indexes for order search by e-mail, phone and tracking number

Revision ID: b7c4e19a2d05
Revises: 52d23487a33a
Create Date: 2026-12-02 11:35:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "b7c4e19a2d05"
down_revision = "52d23487a33a"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_order_customer_email": "lower(customer ->> 'email')",
    "ix_order_customer_phone": "(customer ->> 'phone')",
    "ix_order_tracking_number": "(shipment ->> 'tracking_number')",
}


def upgrade() -> None:
    for name, expression in INDEXES.items():
        op.create_index(name, "order", [sa.text(expression)], unique=False)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="order")
