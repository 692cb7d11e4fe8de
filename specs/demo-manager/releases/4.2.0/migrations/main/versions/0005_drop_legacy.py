"""items.legacy_flag dropped (4.2.0)."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("items") as batch:
        batch.drop_column("legacy_flag")


def downgrade():
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("legacy_flag", sa.Integer, nullable=False, server_default="0"))
