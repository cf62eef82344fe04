"""standalone virtual machines and availability sets

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
# The lead relinks the chain when the parallel migrations land; 0006 is the head this was written on.
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "availability_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["resource_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "name_key"),
    )
    with op.batch_alter_table("availability_sets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_availability_sets_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_availability_sets_subscription"), ["subscription"], unique=False)
    op.create_table(
        "virtual_machines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("extensions", sa.JSON(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("availability_set_id", sa.Integer(), nullable=True),
        sa.Column("update_domain", sa.Integer(), nullable=False),
        sa.Column("fault_domain", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["availability_set_id"], ["availability_sets.id"]),
        sa.ForeignKeyConstraint(["group_id"], ["resource_groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["set_id"], ["scale_sets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "name_key"),
        sa.UniqueConstraint("set_id"),
    )
    with op.batch_alter_table("virtual_machines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_virtual_machines_availability_set_id"), ["availability_set_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_virtual_machines_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_virtual_machines_subscription"), ["subscription"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("virtual_machines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_virtual_machines_subscription"))
        batch_op.drop_index(batch_op.f("ix_virtual_machines_group_id"))
        batch_op.drop_index(batch_op.f("ix_virtual_machines_availability_set_id"))
    op.drop_table("virtual_machines")
    with op.batch_alter_table("availability_sets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_availability_sets_subscription"))
        batch_op.drop_index(batch_op.f("ix_availability_sets_group_id"))
    op.drop_table("availability_sets")
