"""The UDP devices' DTLS sessions, so that a restarted server resumes them.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "udp_sessions",
        sa.Column("connection_id", sa.LargeBinary(255), nullable=False),
        sa.Column("session", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(64)),
        sa.Column("hello", sa.LargeBinary),
        sa.PrimaryKeyConstraint("connection_id", name="pk_udp_sessions"),
    )
    op.create_index("ix_udp_sessions_updated_at", "udp_sessions", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_udp_sessions_updated_at", table_name="udp_sessions")
    op.drop_table("udp_sessions")
