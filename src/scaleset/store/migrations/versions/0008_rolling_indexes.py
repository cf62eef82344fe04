"""indexes for the rolling-upgrade loop's per-pass reads

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:15:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("ix_instances_set_state", ["set_id", "provisioning_state"], unique=False)
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tasks_operation_instance", ["operation_id", "instance_row_id"], unique=False
        )
    with op.batch_alter_table("upgrade_instances", schema=None) as batch_op:
        batch_op.create_index("ix_upgrade_instances_upgrade_batch", ["upgrade_id", "batch"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upgrade_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_upgrade_instances_upgrade_batch")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_operation_instance")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_set_state")
