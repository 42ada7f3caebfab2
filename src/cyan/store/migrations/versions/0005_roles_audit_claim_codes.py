"""Roles, one audit trail for every change, claim codes, several pending keys per device, re-key windows that
remember what they accepted, proven attempts, and the fleet's self-registration switch.

Revision ID: 0005
Revises: 0004

The key audit becomes the audit trail (`audit`): its rows are copied, and entries that concern no device
(accounts, tokens, the server key) may now be written. Pending keys are keyed by device and fingerprint.
Attempts recorded before this revision have no `proven` flag of their own: a connected, identified one is
taken as proven (a quarantined session of that time cannot be told apart), a failed one as unproven.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
    with op.batch_alter_table("key_policies") as batch:
        batch.add_column(sa.Column("self_registration", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("rekey_windows") as batch:
        batch.add_column(sa.Column("accepted_fingerprint", sa.String(255)))
        batch.add_column(sa.Column("accepted_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("previous_key_der", sa.LargeBinary))
        batch.add_column(sa.Column("previous_fingerprint", sa.String(255)))
    with op.batch_alter_table("connection_attempts") as batch:
        batch.add_column(sa.Column("proven", sa.Boolean))
    op.execute("UPDATE connection_attempts SET proven = (outcome = 'connected') WHERE device_id IS NOT NULL")

    op.create_table(
        "pending_keys_v5",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary, nullable=False),
        sa.Column("stored_fingerprint", sa.String(255)),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("peer_address", sa.String(255)),
    )
    op.execute(
        "INSERT INTO pending_keys_v5 (device_id, fingerprint, public_key_der, stored_fingerprint, first_seen, "
        "last_seen, attempts, peer_address) SELECT device_id, fingerprint, public_key_der, stored_fingerprint, "
        "first_seen, last_seen, attempts, peer_address FROM pending_keys"
    )
    op.drop_table("pending_keys")
    op.rename_table("pending_keys_v5", "pending_keys")
    with op.batch_alter_table("pending_keys") as batch:
        batch.create_primary_key("pk_pending_keys", ["device_id", "fingerprint"])

    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(64)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("old_fingerprint", sa.String(255)),
        sa.Column("new_fingerprint", sa.String(255)),
        sa.Column("detail", sa.Text),
        sa.Column("subject", sa.String(255)),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.execute(
        "INSERT INTO audit (id, at, device_id, action, actor, old_fingerprint, new_fingerprint, detail) "
        "SELECT id, at, device_id, action, actor, old_fingerprint, new_fingerprint, detail FROM key_audit"
    )
    if op.get_bind().dialect.name == "postgresql":
        # The copied ids were given explicitly: the sequence must continue after them.
        op.execute("SELECT setval(pg_get_serial_sequence('audit', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM audit")
    op.create_index("ix_audit_device_id_at", "audit", ["device_id", "at"])
    op.create_index("ix_audit_subject_at", "audit", ["subject", "at"])
    op.create_index("ix_audit_at", "audit", ["at"])
    op.drop_index("ix_key_audit_device_id_at", table_name="key_audit")
    op.drop_table("key_audit")

    op.create_table(
        "claim_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("issued_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(64)),
        sa.Column("claimant", sa.String(255)),
        sa.PrimaryKeyConstraint("code_hash", name="pk_claim_codes"),
    )
    op.create_index("ix_claim_codes_device_id", "claim_codes", ["device_id"])
    op.create_index("ix_claim_codes_expires_at", "claim_codes", ["expires_at"])


def downgrade() -> None:
    raise NotImplementedError("cyan's schema only moves forward; restore a backup to go back")
