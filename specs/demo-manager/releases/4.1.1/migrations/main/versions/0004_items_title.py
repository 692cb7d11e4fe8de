"""items.name renamed to items.title (4.1.1)."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("items") as batch:
        batch.alter_column("name", new_column_name="title", existing_type=sa.String(200), existing_nullable=False)


def downgrade():
    with op.batch_alter_table("items") as batch:
        batch.alter_column("title", new_column_name="name", existing_type=sa.String(200), existing_nullable=False)
