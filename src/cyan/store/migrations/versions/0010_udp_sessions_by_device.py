"""The UDP sessions by device id, so that a device without connection ids (Device OS ≤ 2.x) finds its session.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Its type-254 records name the device, not the session (udp-dtls.md §1.4): the last saved first.
    op.create_index("ix_udp_sessions_device_id_updated_at", "udp_sessions", ["device_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_udp_sessions_device_id_updated_at", table_name="udp_sessions")
