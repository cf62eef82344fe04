"""blocked image versions of automatic OS upgrades

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blocked_image_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_uid", sa.String(length=36), nullable=False),
        sa.Column("image_version", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id"),
    )
    with op.batch_alter_table("blocked_image_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blocked_image_versions_set_uid"), ["set_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blocked_image_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blocked_image_versions_set_uid"))
    op.drop_table("blocked_image_versions")
