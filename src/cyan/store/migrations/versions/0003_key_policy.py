"""Key policy: policies, re-key windows, pending keys and the key audit trail.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "key_policies",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("trust_on_first_use", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_key_policies"),
    )
    op.create_table(
        "rekey_windows",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("armed_by", sa.String(255), nullable=False),
        sa.Column("armed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_rekey_windows"),
    )
    op.create_table(
        "pending_keys",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary, nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("stored_fingerprint", sa.String(255)),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("peer_address", sa.String(255)),
        sa.PrimaryKeyConstraint("device_id", name="pk_pending_keys"),
    )
    op.create_table(
        "key_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("old_fingerprint", sa.String(255)),
        sa.Column("new_fingerprint", sa.String(255)),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_key_audit"),
    )
    op.create_index("ix_key_audit_device_id_at", "key_audit", ["device_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_key_audit_device_id_at", table_name="key_audit")
    op.drop_table("key_audit")
    op.drop_table("pending_keys")
    op.drop_table("rekey_windows")
    op.drop_table("key_policies")
