"""predictions.shadow_of (a shadow score names the answered request it scored) and its index.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("shadow_of", sa.String(255), nullable=True))
    op.create_index("ix_predictions_shadow_of", "predictions", ["shadow_of"])


def downgrade() -> None:
    op.drop_index("ix_predictions_shadow_of", "predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow_of")
