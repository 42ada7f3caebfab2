"""Webhooks (integrations) and the record of their deliveries; device vitals.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "integrations",
        sa.Column("id", sa.String(24), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("request_type", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(64)),
        sa.Column("name", sa.String(255)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("no_defaults", sa.Boolean, nullable=False),
        sa.Column("reject_unauthorized", sa.Boolean, nullable=False),
        sa.Column("my_devices", sa.Boolean, nullable=False),
        sa.Column("templates", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_integrations"),
    )
    op.create_index("ix_integrations_owner", "integrations", ["owner"])
    op.create_table(
        "hook_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("integration_id", sa.String(24), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_name", sa.String(255), nullable=False),
        sa.Column("device_id", sa.String(64)),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("duration", sa.Float),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_hook_deliveries"),
    )
    op.create_index("ix_hook_deliveries_integration_id_id", "hook_deliveries", ["integration_id", "id"])
    op.create_table(
        "device_vitals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_vitals"),
    )
    op.create_index("ix_device_vitals_device_id_updated_at", "device_vitals", ["device_id", "updated_at"])
    op.create_index("ix_device_vitals_updated_at", "device_vitals", ["updated_at"])


def downgrade() -> None:
    raise NotImplementedError("cyan's schema only moves forward; restore a backup to go back")
