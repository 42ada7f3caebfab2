"""Device names unique per owner (another account's names are none of an account's business), notes and the
time of the last handshake on a device, and OAuth refresh tokens.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A name unique in the whole cloud is unique per owner too: existing data needs no change.
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("uq_devices_name", type_="unique")
        batch.create_unique_constraint("uq_devices_owner_name", ["owner", "name"])
        batch.add_column(sa.Column("notes", sa.Text))
        batch.add_column(sa.Column("last_handshake_at", sa.DateTime(timezone=True)))
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
    )
    op.create_index("ix_refresh_tokens_username", "refresh_tokens", ["username"])


def downgrade() -> None:
    raise NotImplementedError("cyan's schema only moves forward; restore a backup to go back")
