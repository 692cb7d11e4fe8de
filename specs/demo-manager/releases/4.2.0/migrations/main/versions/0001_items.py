"""items: the demo's inventory (3.4.2)."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("legacy_flag", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade():
    op.drop_table("items")
