"""The tables, as SQLAlchemy Core metadata: what queries are written against.

The migrations in ``migrations/versions`` create the same schema by themselves (a migration is a frozen
snapshot and must not change when this module does); a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "UTCDateTime",
    "access_tokens",
    "audit",
    "claim_codes",
    "connection_attempts",
    "device_groups",
    "device_vitals",
    "devices",
    "firmware",
    "hook_deliveries",
    "integrations",
    "key_policies",
    "metadata",
    "pending_keys",
    "refresh_tokens",
    "rekey_windows",
    "udp_sessions",
    "update_jobs",
    "users",
]

#: Explicit constraint names, so that later migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC and read back as an aware UTC datetime.

    PostgreSQL's ``timestamptz`` keeps the instant; SQLite has no zone, so the column holds the UTC wall
    time and the zone is put back on read. Naive datetimes are refused: guessing their zone would
    silently shift records by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255)),
    Column("owner", String(255)),
    Column("public_key_der", LargeBinary),
    Column("key_fingerprint", String(255)),
    Column("platform_id", Integer),
    Column("product_id", Integer),
    Column("product_version", Integer),
    Column("system_version", Integer),
    Column("hello_flags", Integer),
    Column("functions", JSON, nullable=False),
    Column("variables", JSON, nullable=False),
    Column("online", Boolean, nullable=False),
    Column("last_heard", UTCDateTime),
    Column("last_address", String(255)),
    Column("created_at", UTCDateTime),
    Column("notes", Text),
    Column("last_handshake_at", UTCDateTime),
    # A name is unique among its owner's devices: what other accounts call theirs is not told. Both SQLite and
    # PostgreSQL let any number of rows with a NULL in the constraint through (ownerless or unnamed devices).
    UniqueConstraint("owner", "name"),
    Index(None, "owner"),
)

connection_attempts = Table(
    "connection_attempts",
    metadata,
    # 64-bit on PostgreSQL: a fleet that keeps failing its handshake adds millions of rows a day. SQLite
    # needs exactly INTEGER for the rowid alias that makes the id autoincrement.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("peer_address", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("step", String(64), nullable=False),
    Column("reason", String(64)),
    Column("detail", Text),
    Column("device_id", String(64)),
    Column("presented_fingerprint", String(255)),
    Column("stored_fingerprint", String(255)),
    Column("duration", Float),
    # NULL for unidentified attempts (and for those recorded before this column existed but not connected).
    Column("proven", Boolean),
    Index(None, "device_id", "started_at"),
    Index(None, "peer_address", "started_at"),
    # The unfiltered "latest attempts" view of the dashboard.
    Index(None, "started_at"),
)

users = Table(
    "users",
    metadata,
    # Stored lowercase: the store compares usernames without regard to case by comparing lowercased text,
    # which lets the primary key's own index serve every lookup.
    Column("username", String(255), primary_key=True),
    # Text: the length depends on the hashing parameters, and a later scheme may need more room.
    Column("password_hash", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    # No foreign key: `remove_user` deletes the tokens itself, in the transaction that deletes the user.
    Column("username", String(255), nullable=False),
    Column("client_id", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    # The refresh-token family it was issued with: revoked with the family when a spent token comes back.
    Column("family", String(64)),
    Index(None, "username"),
    Index(None, "family"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    # Only the SHA-256, as for access tokens. Used once: a refresh hands out a new one and marks this one spent,
    # kept until it expires so that its reuse is recognised (and its family revoked).
    Column("token_hash", String(64), primary_key=True),
    Column("username", String(255), nullable=False),
    Column("client_id", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # Drawn at the login that started the chain of rotations; every refresh keeps it.
    Column("family", String(64), nullable=False),
    Column("spent_at", UTCDateTime),
    Index(None, "username"),
    Index(None, "family"),
    Index(None, "expires_at"),
)

key_policies = Table(
    "key_policies",
    metadata,
    # "*" is the fleet-wide policy; otherwise a device id (protocol.md §12.3).
    Column("scope", String(64), primary_key=True),
    Column("mode", String(32), nullable=False),
    Column("trust_on_first_use", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("updated_by", String(255), nullable=False),
    Column("self_registration", Boolean, nullable=False, server_default=false()),
)

rekey_windows = Table(
    "rekey_windows",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("until", UTCDateTime, nullable=False),
    Column("armed_by", String(255), nullable=False),
    Column("armed_at", UTCDateTime, nullable=False),
    Column("accepted_fingerprint", String(255)),
    Column("accepted_at", UTCDateTime),
    Column("previous_key_der", LargeBinary),
    Column("previous_fingerprint", String(255)),
)

pending_keys = Table(
    "pending_keys",
    metadata,
    # A device may have several pending keys (two new keys in one re-key window, or an impersonator's beside
    # the device's own): approving one names its fingerprint.
    Column("device_id", String(64), primary_key=True),
    Column("fingerprint", String(255), primary_key=True),
    Column("public_key_der", LargeBinary, nullable=False),
    Column("stored_fingerprint", String(255)),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("peer_address", String(255)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    # NULL for what concerns no device: accounts, tokens, the server key.
    Column("device_id", String(64)),
    Column("action", String(64), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("old_fingerprint", String(255)),
    Column("new_fingerprint", String(255)),
    Column("detail", Text),
    Column("subject", String(255)),
    Index(None, "device_id", "at"),
    Index(None, "subject", "at"),
    Index(None, "at"),
)

claim_codes = Table(
    "claim_codes",
    metadata,
    # The code's SHA-256: a leaked database gives no usable code.
    Column("code_hash", String(64), primary_key=True),
    Column("issued_by", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # A code for one device (an admin's), or for an account to which presenting devices go (Particle's).
    Column("device_id", String(64)),
    Column("claimant", String(255)),
    Index(None, "device_id"),
    Index(None, "expires_at"),
)

firmware = Table(
    "firmware",
    metadata,
    # The SHA-256 of the file: the binary is kept on disk under this name (FirmwareFiles).
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("platform_id", Integer, nullable=False),
    Column("module_function", Integer, nullable=False),
    Column("module_index", Integer, nullable=False),
    Column("module_version", Integer, nullable=False),
    Column("product_id", Integer),
    Column("product_version", Integer),
    Column("module_sha256", String(64), nullable=False),
    # Unsigned 32-bit: too wide for PostgreSQL's INTEGER.
    Column("crc32", BigInteger, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("uploaded_by", String(255)),
    Column("uploaded_at", UTCDateTime, nullable=False),
)

update_jobs = Table(
    "update_jobs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    # No foreign key: a firmware record is never deleted while jobs refer to it.
    Column("firmware", String(64), nullable=False),
    Column("rollout", String(64)),
    Column("state", String(32), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("total_bytes", BigInteger, nullable=False),
    Column("reason", String(64)),
    Column("detail", Text),
    Column("verification", String(32)),
    Column("transfer_seconds", Float),
    Column("created_by", String(255)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
    Index(None, "device_id", "id"),
    Index(None, "rollout"),
    # The jobs to resume at start-up.
    Index(None, "state"),
)

device_groups = Table(
    "device_groups",
    metadata,
    Column("group_name", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Index(None, "device_id"),
)

integrations = Table(
    "integrations",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("event", String(255), nullable=False),
    Column("url", Text, nullable=False),
    Column("request_type", String(16), nullable=False),
    Column("device_id", String(64)),
    Column("name", String(255)),
    Column("disabled", Boolean, nullable=False),
    Column("no_defaults", Boolean, nullable=False),
    Column("reject_unauthorized", Boolean, nullable=False),
    Column("my_devices", Boolean, nullable=False),
    # json, form, query, headers, body, auth and the answer's templates, as the owner gave them.
    Column("templates", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime),
    Index(None, "owner"),
)

hook_deliveries = Table(
    "hook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # No foreign key: removing an integration removes its deliveries itself (IntegrationRepository.remove).
    Column("integration_id", String(24), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("event_name", String(255), nullable=False),
    Column("device_id", String(64)),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status", Integer),
    Column("duration", Float),
    Column("error", Text),
    Index(None, "integration_id", "id"),
)

udp_sessions = Table(
    "udp_sessions",
    metadata,
    Column("connection_id", LargeBinary(255), primary_key=True),
    Column("session", LargeBinary, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("device_id", String(64)),
    Column("hello", LargeBinary),
    Column("sequence_limit", BigInteger),
    Index(None, "updated_at"),
    Index(None, "device_id", "updated_at"),
)

device_vitals = Table(
    "device_vitals",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    Index(None, "device_id", "updated_at"),
    Index(None, "updated_at"),
)
