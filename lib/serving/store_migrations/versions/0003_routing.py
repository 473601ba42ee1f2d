"""The routing shared by replicas (lib.serving.routing_state): serving_routing and
serving_replicas. Tables that exist already (created by an older service with create_all) are
left as they are.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from lib.serving.routing_state import routing_metadata

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    routing_metadata.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    routing_metadata.drop_all(op.get_bind(), checkfirst=True)
