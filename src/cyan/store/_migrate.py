"""Schema migrations, configured from code: the scripts ship inside this package, no alembic.ini."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from cyan.cloud.ports import StoreUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MIGRATIONS", "alembic_config", "current_revisions", "head_revision", "newest_revision", "upgrade_to_head"]

MIGRATIONS = Path(__file__).with_name("migrations")

#: A script's file name: its revision, four digits, first (revision "0008" is 0008_udp_sessions.py).
_SCRIPT_NAME = re.compile(r"^(\d{4})_\w+\.py$")


def newest_revision() -> str:
    """The head revision, from the scripts' file names: a store already at head opens without importing
    Alembic (half a second of every `cyan` command). tests/store checks it against Alembic's own head."""
    numbers = [m.group(1) for p in (MIGRATIONS / "versions").iterdir() if (m := _SCRIPT_NAME.match(p.name))]
    return max(numbers)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config  # noqa: PLC0415 - Alembic only when migrating

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - Alembic only when migrating

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
    current = current_revisions(connection)
    # Checking first keeps the common open (already at head) from loading Alembic at all.
    if current == {newest_revision()}:
        return current
    from alembic import command  # noqa: PLC0415 - Alembic only when migrating
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - Alembic only when migrating

    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
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
