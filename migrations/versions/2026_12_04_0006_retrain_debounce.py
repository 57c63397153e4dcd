"""Debounced retrains, per-series training options and read-your-writes model activation:
jobs.not_before, labels.job_id, series.training, and the one-row activations table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column("labels", sa.Column("job_id", sa.Integer(), nullable=True))
    op.add_column("series", sa.Column("training", sa.JSON(), nullable=True))
    activations = op.create_table(
        "activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activations")),
    )
    op.bulk_insert(activations, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("activations")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("training")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("job_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
