"""What a new user meets in the first hour with `cyan`: help that shows every default, one data directory
wherever a command runs, errors that say which port or which address, and a simulator that says why its
devices are refused."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import typer

from cyan.app import Actor, Application, NewDevice
from cyan.cli import app as cyan_app
from cyan.cli import main as cyan
from cyan.cli.serve import _note_earlier_data_directory
from cyan.cli.sim import _address_limit_note, _explain, _register_with
from cyan.config import Settings, default_data_dir
from cyan.keys import public_key_der
from cyan.service import PortUnavailableError, Service, ensure_server_keys, open_application, prepare_data_directory
from cyan.sim import Fault, Fleet, FleetStats
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key, fixed_server_key

_BOX = re.compile(r"[│╭╮╰╯─┃┏┓┗┛━]")


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under `group` (typer's own click types: looked at by what they have)."""
    found = [(path, group)]
    for name, command in sorted(getattr(group, "commands", {}).items()):
        found += _commands(command, (*path, name))
    return found


def _flat(text: str) -> str:
    return " ".join(_BOX.sub(" ", text).split())


_ALL = _commands(typer.main.get_command(cyan_app))


@pytest.mark.parametrize(("path", "command"), _ALL, ids=[" ".join(path) or "cyan" for path, _ in _ALL])
def test_help_shows_each_option_in_full(
    path: tuple[str, ...], command: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each option's help says, defaults and variables included, reaches the screen: text in [brackets]
    was once taken for markup and dropped, leaving "Data directory ." where the default should be."""
    monkeypatch.setenv("COLUMNS", "100")
    assert cyan([*path, "--help"]) == 0
    shown = _flat(capsys.readouterr().out)
    for param in command.params:
        help_text = getattr(param, "help", None)
        if help_text:
            assert _flat(help_text) in shown, (param.name, help_text)
    assert " . " not in shown
    assert not shown.endswith(" .")


def test_one_data_directory_wherever_a_command_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CYAN_DATA_DIR", raising=False)
    assert default_data_dir() == tmp_path / "xdg" / "cyan"
    prepare_data_directory(Settings.from_env())
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    monkeypatch.chdir(here)
    assert cyan(["users", "add", "alice@example.com", "--password", "a good password"]) == 0
    monkeypatch.chdir(there)
    assert cyan(["users", "list"]) == 0
    assert "alice@example.com" in capsys.readouterr().out
    assert not (here / "cyan-data").exists()
    assert not (there / "cyan-data").exists()


def test_serve_points_at_a_cloud_left_in_the_earlier_default_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _note_earlier_data_directory(tmp_path / "new")
    assert capsys.readouterr().err == ""  # nothing there: nothing to say
    (tmp_path / "cyan-data").mkdir()
    (tmp_path / "cyan-data" / "cyan.db").write_bytes(b"")
    _note_earlier_data_directory(tmp_path / "new")
    note = _flat(capsys.readouterr().err)
    assert f"{tmp_path / 'cyan-data'} holds a cloud" in note
    assert f"--data-dir {tmp_path / 'cyan-data'}" in note


def test_a_port_in_use_is_named_with_what_it_was_for(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for field, flag, what in (
                ("api_port", "--api-port", "the Cloud API"),
                ("device_port", "--device-port", "devices"),
            ):
                ports = {"device_port": 0, "api_port": 0, field: port}
                settings = Settings(
                    data_dir=tmp_path / field,
                    device_host="127.0.0.1",
                    api_host="127.0.0.1",
                    public_address="127.0.0.1",
                    device_udp_port=0,
                    **ports,
                )
                service = Service(settings, ensure_server_keys(settings))
                with pytest.raises(PortUnavailableError) as raised:
                    await service.start()
                assert str(raised.value) == f"port {port} on 127.0.0.1 (for {what}) is in use by another program"
                assert flag in raised.value.hint

    asyncio.run(scenario())


def test_an_address_devices_cannot_use_gets_an_address_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    prepare_data_directory(Settings(data_dir=data))
    assert (
        cyan(["keys", "server", "--data-dir", str(data), "--host", "not an address!", "-o", str(tmp_path / "k")]) == 1
    )
    err = _flat(capsys.readouterr().err)
    assert "contains spaces or control characters" in err
    assert "--public-address" in err
    assert "RSA" not in err


def test_the_simulator_says_when_its_devices_are_registered_with_other_keys(tmp_path: Path) -> None:
    """The same ids from another keys directory: the server would refuse them all as key_mismatch, and the
    devices would only see the connection closed. Registration says so, and --replace-keys fixes it."""
    server = fixed_server_key().public_key()
    first = Fleet.load_or_create(tmp_path / "keys-a", 2, server)
    other = Fleet.load_or_create(tmp_path / "keys-b", 2, server)
    assert [d.device_id for d in first.devices] == [d.device_id for d in other.devices]

    settings = Settings(data_dir=tmp_path / "data")
    prepare_data_directory(settings)

    async def scenario() -> None:
        async with open_application(settings) as app:
            assert (await _register_with(app, first, None, replace_keys=False)).added == 2
            again = await _register_with(app, other, None, replace_keys=False)
            assert (again.added, again.other_key, again.replaced) == (0, [d.device_id for d in other.devices], [])
            fixed = await _register_with(app, other, None, replace_keys=True)
            assert fixed.replaced == [d.device_id for d in other.devices]
            device = other.devices[0]
            record = await app.store.devices.get(device.device_id)
            assert record is not None
            assert record.public_key_der == public_key_der(device.spec.private_key.public_key())
            (entry,) = [e for e in await app.store.audit.recent(device.device_id) if e.action == "provisioned"]
            assert entry.actor == "cyan sim"
            assert (await _register_with(app, other, None, replace_keys=False)).other_key == []

    asyncio.run(scenario())


def test_the_simulator_explains_a_closed_connection() -> None:
    refused = FleetStats(3, 0, 0, 3, 0, attempts=6, connects=0, failures={"closed_by_peer": 6})
    assert "amnesia fault" in _explain(refused, Fault.AMNESIA)[0]
    assert "key_mismatch" in _explain(refused, Fault.AMNESIA)[0]
    assert "session_key_rejected" in _explain(refused, Fault.CORRUPT_KEY)[0]
    plain = _explain(refused, None)[0]
    assert "cyan devices attempts" in plain
    assert "--replace-keys" in plain
    assert "rate_limited" in plain
    assert _explain(FleetStats(3, 3, 0, 0, 0, attempts=0, connects=3), None) == []


def test_the_simulator_says_when_a_fleet_from_one_address_meets_the_servers_limit() -> None:
    # 5,000 devices from the default address: the first 200 at once, the rest at 50 a second.
    note = _address_limit_note(5000, 0, 200, 50)
    assert note is not None
    assert "5,000 devices from each address" in note
    assert "about 96 s" in note
    assert "--source-address" in note
    assert "rate_limited" in note
    # Spread over 25 addresses, each stays within its burst: nothing to say.
    assert _address_limit_note(5000, 25, 200, 50) is None
    assert _address_limit_note(200, 0, 200, 50) is None
    # Over 4 addresses, 1,250 each.
    four = _address_limit_note(5000, 4, 200, 50)
    assert four is not None
    assert "1,250 devices from each address" in four
    assert "about 21 s" in four


def test_a_rename_from_no_name_says_so() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.open()
        app = Application(store)
        ops = Actor.operator("ops")
        await app.devices.register(ops, [NewDevice("ab" * 12, public_key_der(fixed_device_key(1).public_key()))])
        await app.devices.rename(ops, "ab" * 12, "kitchen")
        (entry,) = [e for e in await store.audit.recent("ab" * 12) if e.action == "renamed"]
        assert entry.detail == "(no name) -> kitchen"

    asyncio.run(scenario())


def test_an_operator_claims_by_name_releases_and_hands_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    prepare_data_directory(settings)
    key = tmp_path / "k.der"
    key.write_bytes(public_key_der(fixed_device_key(1).public_key()))
    d = ["--data-dir", str(data)]
    for user in ("alice@example.com", "bob@example.com"):
        assert cyan(["users", "add", user, "--password", "a good password", *d]) == 0
    assert cyan(["devices", "add", "ab" * 12, "--key", str(key), "--name", "kitchen", *d]) == 0
    assert cyan(["devices", "claim", "kitchen", "--owner", "alice@example.com", *d]) == 0
    # Someone's device is not handed to another without being released first.
    assert cyan(["devices", "claim", "kitchen", "--owner", "bob@example.com", *d]) == 1
    assert "release it first" in capsys.readouterr().err
    assert cyan(["devices", "release", "kitchen", *d]) == 0
    assert cyan(["devices", "claim", "kitchen", "--owner", "bob@example.com", *d]) == 0
    assert f"Device {'ab' * 12} now belongs to bob@example.com" in capsys.readouterr().out
    assert cyan(["devices", "list", "--ids", *d]) == 0
    assert capsys.readouterr().out == f"{'ab' * 12}\n"
    assert cyan(["devices", "notes", "kitchen", "Behind the fridge", *d]) == 0
    assert capsys.readouterr().out == f"Device {'ab' * 12}: notes saved\n"
    assert cyan(["devices", "notes", "kitchen", "x" * 1001, *d]) == 1
    assert "at most 1000 characters" in capsys.readouterr().err

    async def trail() -> list[str]:
        async with open_application(settings) as app:
            record = await app.store.devices.get("ab" * 12)
            assert record is not None
            assert record.notes == "Behind the fridge"
            return [e.action for e in await app.store.audit.recent("ab" * 12)]

    assert asyncio.run(trail())[:4] == ["notes_changed", "claimed", "released", "claimed"]
