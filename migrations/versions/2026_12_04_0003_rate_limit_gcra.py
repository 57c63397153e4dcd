"""Rate limit: GCRA (one theoretical arrival time per key) instead of fixed minute windows.

The fixed window let twice the limit through across a minute boundary. The old counts
carry nothing worth keeping: keys start with a full allowance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 19:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("tat", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("principal", name=op.f("pk_rate_limits")),
    )
    op.drop_table("rate_windows")


def downgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("principal", "window_start", name=op.f("pk_rate_windows")),
    )
    op.drop_table("rate_limits")
