"""An index on feedback.created_at: the window reads only the feedback of its time range
(bench/store.py: without it, a seq scan of all feedback at every canary and monitor read).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_created_at", "feedback")
