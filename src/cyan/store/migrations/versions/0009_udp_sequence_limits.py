"""The UDP sessions' write sequence limits, so that a session moving between nodes never repeats a nonce.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Sessions saved before have none: the first node to resume one starts 2^20 past its saved counter, as
    # before, and reserves from there.
    with op.batch_alter_table("udp_sessions") as batch:
        batch.add_column(sa.Column("sequence_limit", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("udp_sessions") as batch:
        batch.drop_column("sequence_limit")
