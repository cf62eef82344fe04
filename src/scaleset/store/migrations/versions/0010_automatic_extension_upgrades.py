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
    # The automatic extension upgrade's memory of failed versions (services/extension_failures.py).
    op.create_table(
        "extension_upgrade_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_uid", sa.String(length=36), nullable=False),
        sa.Column("extension_key", sa.String(length=260), nullable=False),
        sa.Column("extension_name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id"),
    )
    with op.batch_alter_table("extension_upgrade_failures", schema=None) as batch_op:
        batch_op.create_index("ix_extension_upgrade_failures_set", ["set_uid", "extension_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rolling_upgrades", schema=None) as batch_op:
        batch_op.drop_column("roll_back_each_failure")
        batch_op.drop_column("extension_version")
        batch_op.drop_column("extension_name")
        batch_op.drop_column("extension_key")
    with op.batch_alter_table("scale_set_models", schema=None) as batch_op:
        batch_op.drop_column("extension_versions")
    with op.batch_alter_table("extension_upgrade_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_extension_upgrade_failures_set")
    op.drop_table("extension_upgrade_failures")
