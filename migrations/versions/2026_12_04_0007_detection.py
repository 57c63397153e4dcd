"""Detection as a service: scoring on ingest, stored window scores, and alarms as events.

series.detect and series.alarm_merge_gap; detect_state (what ingestion changed and which
detector holds a series); window_scores (one row per scored window of a series); alarms.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 22:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "series", sa.Column("detect", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column(
        "series",
        sa.Column("alarm_merge_gap", sa.Integer(), nullable=False, server_default="2"),
    )
    op.create_table(
        "detect_state",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("dirty_from", sa.BigInteger(), nullable=True),
        sa.Column("dirty_until", sa.BigInteger(), nullable=True),
        sa.Column("dirty_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_from", sa.BigInteger(), nullable=True),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_detect_state_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("series_id", name=op.f("pk_detect_state")),
    )
    op.create_table(
        "window_scores",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("start_ts", sa.BigInteger(), nullable=False),
        sa.Column("end_ts", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("raw_score", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("adjusted_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("is_anomaly", sa.Boolean(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=False),
        sa.Column("contributions", sa.JSON(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_window_scores_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("series_id", "start_ts", name=op.f("pk_window_scores")),
    )
    op.create_index("ix_window_scores_series_seq", "window_scores", ["series_id", "seq"])
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("check", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("start_ts", sa.BigInteger(), nullable=False),
        sa.Column("end_ts", sa.BigInteger(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("verdict", sa.String(length=100), nullable=True),
        sa.Column("verdict_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verdict_by", sa.String(length=200), nullable=True),
        sa.Column("verdict_note", sa.Text(), nullable=True),
        sa.Column("label_ids", sa.JSON(), nullable=True),
        sa.Column("retrain_job_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_alarms_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarms")),
    )
    op.create_index("ix_alarms_series_seq", "alarms", ["series_id", "last_seq"])
    op.create_index("ix_alarms_open", "alarms", ["series_id", "closed_at"])


def downgrade() -> None:
    op.drop_index("ix_alarms_open", table_name="alarms")
    op.drop_index("ix_alarms_series_seq", table_name="alarms")
    op.drop_table("alarms")
    op.drop_index("ix_window_scores_series_seq", table_name="window_scores")
    op.drop_table("window_scores")
    op.drop_table("detect_state")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("alarm_merge_gap")
        batch.drop_column("detect")
