"""Firmware binaries, update jobs and device groups (OTA, protocol.md §7).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "firmware",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("platform_id", sa.Integer, nullable=False),
        sa.Column("module_function", sa.Integer, nullable=False),
        sa.Column("module_index", sa.Integer, nullable=False),
        sa.Column("module_version", sa.Integer, nullable=False),
        sa.Column("product_id", sa.Integer),
        sa.Column("product_version", sa.Integer),
        sa.Column("module_sha256", sa.String(64), nullable=False),
        sa.Column("crc32", sa.BigInteger, nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("uploaded_by", sa.String(255)),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_firmware"),
    )
    op.create_table(
        "update_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("firmware", sa.String(64), nullable=False),
        sa.Column("rollout", sa.String(64)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("bytes_sent", sa.BigInteger, nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("verification", sa.String(32)),
        sa.Column("transfer_seconds", sa.Float),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_update_jobs"),
    )
    op.create_index("ix_update_jobs_device_id_id", "update_jobs", ["device_id", "id"])
    op.create_index("ix_update_jobs_rollout", "update_jobs", ["rollout"])
    op.create_index("ix_update_jobs_state", "update_jobs", ["state"])
    op.create_table(
        "device_groups",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "device_id", name="pk_device_groups"),
    )
    op.create_index("ix_device_groups_device_id", "device_groups", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_device_groups_device_id", table_name="device_groups")
    op.drop_table("device_groups")
    op.drop_index("ix_update_jobs_state", table_name="update_jobs")
    op.drop_index("ix_update_jobs_rollout", table_name="update_jobs")
    op.drop_index("ix_update_jobs_device_id_id", table_name="update_jobs")
    op.drop_table("update_jobs")
    op.drop_table("firmware")
