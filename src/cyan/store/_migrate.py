"""Schema migrations, configured from code: the scripts ship inside this package, no alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from cyan.cloud.ports import StoreUnavailableError

__all__ = ["MIGRATIONS", "alembic_config", "current_revisions", "head_revision", "upgrade_to_head"]

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revisions(connection: Connection) -> set[str]:
    """The revisions in Alembic's version table (none for a new database).

    Read directly: Alembic's own MigrationContext logs two INFO lines each time, which every open would
    repeat although there is nothing to migrate.
    """
    if not inspect(connection).has_table("alembic_version"):
        return set()
    return set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def upgrade_to_head(connection: Connection, database: str) -> set[str]:
    """Bring the schema to the newest revision, on a connection the caller holds in a transaction; the
    revisions it was at before (none for a new database).

    `database` names the database in error messages.
    """
    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    current = current_revisions(connection)
    # Checking first keeps the common open (already at head) from loading Alembic's environment at all.
    if current == set(script.get_heads()):
        return current
    unknown = current - {rev.revision for rev in script.walk_revisions()}
    if unknown:
        raise StoreUnavailableError(
            f"cannot open the store: {database}: its schema is at revision {', '.join(sorted(unknown))!r}, "
            f"which this version of cyan does not know (its newest is {script.get_current_head()!r}); "
            "a newer cyan migrated it: upgrade cyan"
        )
    command.upgrade(config, "head")
    return current
