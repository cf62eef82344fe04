"""automatic extension upgrades: extension versions pinned per model version, the extension a platform
run moves, and per-failure rollback (issue 5 §3)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scale_set_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("extension_versions", sa.JSON(), nullable=True))
    with op.batch_alter_table("rolling_upgrades", schema=None) as batch_op:
        batch_op.add_column(sa.Column("extension_key", sa.String(length=260), nullable=True))
        batch_op.add_column(sa.Column("extension_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("extension_version", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("roll_back_each_failure", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("rolling_upgrades", schema=None) as batch_op:
        batch_op.drop_column("roll_back_each_failure")
        batch_op.drop_column("extension_version")
        batch_op.drop_column("extension_name")
        batch_op.drop_column("extension_key")
    with op.batch_alter_table("scale_set_models", schema=None) as batch_op:
        batch_op.drop_column("extension_versions")
