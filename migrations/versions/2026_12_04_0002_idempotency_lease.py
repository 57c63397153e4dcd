"""Idempotency keys: a lease for the request in flight, and the operation's commit mark.

A pending key used to stay pending for 24 hours when its request died (kill -9, a lost
database); it now lapses with its lease, and `committed_at` (written in the operation's own
transaction) keeps a retry from performing a completed operation twice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 19:15:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("committed_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
