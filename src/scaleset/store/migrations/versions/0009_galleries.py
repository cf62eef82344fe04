"""galleries (issue 5): Azure Compute Gallery galleries, image definitions and image versions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "galleries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("name_key", sa.String(length=80), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["resource_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "name_key"),
    )
    with op.batch_alter_table("galleries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_galleries_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_galleries_subscription"), ["subscription"], unique=False)
    op.create_table(
        "gallery_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gallery_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("name_key", sa.String(length=80), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("catalog_key", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["gallery_id"], ["galleries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("gallery_id", "name_key"),
    )
    with op.batch_alter_table("gallery_images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gallery_images_gallery_id"), ["gallery_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_gallery_images_catalog_key"), ["catalog_key"], unique=False)
    op.create_table(
        "gallery_image_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("catalog_key", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["gallery_images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "name"),
    )
    with op.batch_alter_table("gallery_image_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gallery_image_versions_image_id"), ["image_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_gallery_image_versions_catalog_key"), ["catalog_key"], unique=False
        )


def downgrade() -> None:
    op.drop_table("gallery_image_versions")
    op.drop_table("gallery_images")
    op.drop_table("galleries")
