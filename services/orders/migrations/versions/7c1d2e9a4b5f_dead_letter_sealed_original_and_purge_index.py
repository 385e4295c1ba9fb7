"""dead_letter: the original body sealed, and an index on dead_at for the purge

Revision ID: 7c1d2e9a4b5f
Revises: b7e2d4a91c35
Create Date: 2026-12-02 11:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "7c1d2e9a4b5f"
down_revision = "b7e2d4a91c35"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed", sa.Text(), nullable=True))
        batch_op.create_index("ix_dead_letter_dead_at", ["dead_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letter_dead_at")
        batch_op.drop_column("sealed")
