"""The predictions and feedback tables as they were before `shadow_of` (revision 1).

A store made before this revision existed is stamped at it (or at 0002) instead of running it;
an older one without `feedback.source` gets the column here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "predictions" not in have:
        op.create_table(
            "predictions",
            sa.Column("request_id", sa.String(255), primary_key=True),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("variant", sa.String(64), nullable=False),
            sa.Column("model_version", sa.String(64), nullable=False),
            sa.Column("label", sa.Integer, nullable=True),
            sa.Column("probability", sa.Double, nullable=True),
            sa.Column("latency_ms", sa.Double, nullable=False),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("features", sa.Text, nullable=True),
        )
        op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
        op.create_index(
            "ix_predictions_variant_created_at", "predictions", ["variant", "created_at"]
        )
    if "feedback" not in have:
        op.create_table(
            "feedback",
            sa.Column("request_id", sa.String(255), primary_key=True),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("rating", sa.Double, nullable=True),
            sa.Column("label", sa.Integer, nullable=False),
            sa.Column("source", sa.String(64), nullable=True),
        )
        return
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("feedback")}
    if "source" not in columns:
        op.add_column("feedback", sa.Column("source", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("predictions")
