"""`cyan db status|upgrade` on a data directory's SQLite file and on a PostgreSQL database by URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from cyan.cli import main
from cyan.store._migrate import alembic_config, head_revision

HEAD = head_revision()


def cyan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _at_0004(conn: Connection) -> None:
    command.upgrade(alembic_config(conn), "0004")


async def _migrate_postgres_to_0004(url: URL) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_at_0004)
    finally:
        await engine.dispose()


def test_status_and_upgrade_of_a_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    status, out, _ = cyan(capsys, "db", "status", "--data-dir", str(data))
    assert status == 0
    assert out.splitlines() == [
        f"database: SQLite database {data / 'cyan.db'}",
        "current revision: none (the database does not exist yet)",
        f"head revision: {HEAD}",
        "upgrade due: yes (run `cyan db upgrade`; `cyan serve` also upgrades when it starts)",
    ]
    assert not data.exists()  # looking changes nothing
    assert cyan(capsys, "db", "upgrade", "--data-dir", str(data))[:2] == (
        0,
        f"created the schema at revision {HEAD} in the SQLite database {data / 'cyan.db'}\n",
    )
    status, out, _ = cyan(capsys, "db", "status", "--data-dir", str(data))
    assert status == 0
    assert out.splitlines()[1:] == [f"current revision: {HEAD}", f"head revision: {HEAD}", "upgrade due: no"]
    assert cyan(capsys, "db", "upgrade", "--data-dir", str(data))[:2] == (
        0,
        f"the SQLite database {data / 'cyan.db'} is at revision {HEAD} already: nothing to do\n",
    )


def test_an_older_sqlite_schema_is_upgraded_and_says_from_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cyan.db"
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            _at_0004(conn)
    finally:
        engine.dispose()
    status, out, _ = cyan(capsys, "db", "status", "--data-dir", str(tmp_path))
    assert status == 0
    assert "current revision: 0004" in out
    assert "upgrade due: yes" in out
    assert cyan(capsys, "db", "upgrade", "--data-dir", str(tmp_path))[:2] == (
        0,
        f"upgraded the SQLite database {db} from revision 0004 to {HEAD}\n",
    )


def test_status_and_upgrade_of_a_postgresql_database_by_url(
    postgres_url: URL, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = postgres_url.render_as_string(hide_password=False)
    described = f"PostgreSQL database '{postgres_url.database}' at 127.0.0.1:5432 as {postgres_url.username}"
    status, out, _ = cyan(capsys, "db", "status", "--database", url)
    assert (status, out.splitlines()[:2]) == (0, [f"database: {described}", "current revision: none"])
    asyncio.run(_migrate_postgres_to_0004(postgres_url))
    # From the environment, as `cyan serve` reads it; the data directory plays no part.
    monkeypatch.setenv("CYAN_DATABASE_URL", url)
    status, out, _ = cyan(capsys, "db", "status", "--data-dir", str(tmp_path / "unused"))
    assert out.splitlines()[1:] == [
        "current revision: 0004",
        f"head revision: {HEAD}",
        "upgrade due: yes (run `cyan db upgrade`; `cyan serve` also upgrades when it starts)",
    ]
    assert cyan(capsys, "db", "upgrade")[:2] == (0, f"upgraded the {described} from revision 0004 to {HEAD}\n")
    assert cyan(capsys, "db", "status")[1].endswith("upgrade due: no\n")
    assert not (tmp_path / "unused").exists()


def test_a_schema_of_a_newer_cyan_is_an_error_with_a_hint(
    postgres_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_url.render_as_string(hide_password=False)
    assert cyan(capsys, "db", "upgrade", "--database", url)[0] == 0

    async def bump() -> None:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        finally:
            await engine.dispose()

    asyncio.run(bump())
    status, out, err = cyan(capsys, "db", "status", "--database", url)
    assert status == 1
    assert "current revision: 9999" in out
    assert "error: the schema is at 9999, which this version of cyan does not know" in err
    assert "hint: upgrade cyan on this host" in err
    status, _, err = cyan(capsys, "db", "upgrade", "--database", url)
    assert status == 1
    assert "revision '9999', which this version of cyan does not know" in err


def test_a_database_that_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cyan(
        capsys, "db", "status", "--database", "postgresql://cyan:s3cret@127.0.0.1:1/cyan?connect_timeout=2"
    )
    assert status == 1
    assert "error: cannot read the schema: PostgreSQL database 'cyan' at 127.0.0.1:1 as cyan" in err
    assert "s3cret" not in err


def test_the_commands_on_the_data_take_the_shared_database(
    postgres_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Users, tokens, devices, keys and policy through `--database`, on the database a cloud of nodes shares; the
    data directory (empty here) holds nothing of it."""
    database = postgres_url.render_as_string(hide_password=False)
    data = str(tmp_path / "empty")
    assert cyan(capsys, "db", "upgrade", "--database", database)[0] == 0
    steps = [
        ["users", "add", "ops@example.com", "--password", "correct horse battery", "--admin"],
        ["users", "list"],
        ["tokens", "create", "ops@example.com"],
        ["policy", "set", "quarantine", "--tofu"],
        ["policy", "show"],
        ["policy", "audit"],
        ["devices", "list"],
    ]
    outputs = []
    for argv in steps:
        status, out, err = cyan(capsys, *argv, "--data-dir", data, "--database", database)
        assert status == 0, (argv, out, err)
        outputs.append(out)
    assert "ops@example.com" in outputs[1]
    assert not (tmp_path / "empty" / "cyan.db").exists()
    status, out, _ = cyan(capsys, "users", "list", "--data-dir", data, "--database", database)
    assert "ops@example.com" in out
