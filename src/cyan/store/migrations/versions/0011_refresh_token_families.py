"""Refresh-token families: a spent refresh token is kept, marked, until it expires, and every token a login's
chain of rotations issued (refresh and access) names the family, so that a spent token presented again
revokes them all (RFC 9700 §4.14.2).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.add_column(sa.Column("family", sa.String(64)))
        batch.add_column(sa.Column("spent_at", sa.DateTime(timezone=True)))
    # A refresh token stored before families is the only one of its own: its descendants are not known.
    op.execute("UPDATE refresh_tokens SET family = token_hash")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.alter_column("family", existing_type=sa.String(64), nullable=False)
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])
    op.create_index("ix_refresh_tokens_expires_at", "refresh_tokens", ["expires_at"])
    # Access tokens stored before families belong to none (a NULL is revoked with no family).
    with op.batch_alter_table("access_tokens") as batch:
        batch.add_column(sa.Column("family", sa.String(64)))
    op.create_index("ix_access_tokens_family", "access_tokens", ["family"])


def downgrade() -> None:
    raise NotImplementedError("cyan's schema only moves forward; restore a backup to go back")
