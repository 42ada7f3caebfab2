"""Devices and connection attempts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("public_key_der", sa.LargeBinary),
        sa.Column("key_fingerprint", sa.String(255)),
        sa.Column("platform_id", sa.Integer),
        sa.Column("product_id", sa.Integer),
        sa.Column("product_version", sa.Integer),
        sa.Column("system_version", sa.Integer),
        sa.Column("hello_flags", sa.Integer),
        sa.Column("functions", sa.JSON, nullable=False),
        sa.Column("variables", sa.JSON, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("last_heard", sa.DateTime(timezone=True)),
        sa.Column("last_address", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
    )
    op.create_index("ix_devices_owner", "devices", ["owner"])

    op.create_table(
        "connection_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("peer_address", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("device_id", sa.String(64)),
        sa.Column("presented_fingerprint", sa.String(255)),
        sa.Column("stored_fingerprint", sa.String(255)),
        sa.Column("duration", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_connection_attempts"),
    )
    op.create_index("ix_connection_attempts_device_id_started_at", "connection_attempts", ["device_id", "started_at"])
    op.create_index(
        "ix_connection_attempts_peer_address_started_at", "connection_attempts", ["peer_address", "started_at"]
    )
    op.create_index("ix_connection_attempts_started_at", "connection_attempts", ["started_at"])


def downgrade() -> None:
    op.drop_table("connection_attempts")
    op.drop_table("devices")
