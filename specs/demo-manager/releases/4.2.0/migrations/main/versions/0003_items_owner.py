"""items.owner with a server default, existing rows backfilled (4.1.1)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("owner", sa.String(100), nullable=False, server_default="admin"))
    op.execute("UPDATE items SET owner = 'migrated-' || name")


def downgrade():
    with op.batch_alter_table("items") as batch:
        batch.drop_column("owner")
