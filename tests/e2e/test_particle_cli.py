"""The real Particle CLI (npm particle-cli 3.43.1) against `cyan serve` with simulated devices (issue 4).

Each test runs `particle` as a user would and asserts what it printed (the exact fragments and why they are
what they are: particle_cli_contract.md) and what changed on the server (read back through another CLI
command or from the store). The server, its two users and user 1's fleet of five virtual Photons are started
once for the module; the tests that change state each own a device:

    sim-0  call, get, publish, subscribe, nyan, and what the second user cannot do
    sim-1  device rename          sim-2  device remove + device add          sim-3  device remove
    sim-4  keys send (its key changes)

Tokens that get revoked (logout, token revoke) are made for the purpose; the main sessions stay valid.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from particle_cli_support import (
    PARTICLE_CLI_VERSION,
    BackgroundCommand,
    Completed,
    CyanServer,
    ParticleCli,
    SimFleet,
    background,
    event_lines,
    read_store,
    require_particle_cli,
    run_cyan,
    subscribe_header_done,
    token_hash,
)

from cyan.cloud.models import AccessToken, DeviceRecord
from cyan.keys import fingerprint, generate_device_key, public_key_der


@dataclass(frozen=True, slots=True)
class Account:
    email: str
    password: str


OWNER = Account("owner@example.com", "correct horse battery")
OTHER = Account("other@example.com", "another staple")
ADMIN = Account("admin@example.com", "the operator's own")
FLEET_SIZE = 5
#: The names `particle list` shows for the Gen 2 platform ids (@particle/device-constants 4.2.1 `displayName`).
PLATFORM_NAMES = {0: "Core", 6: "Photon", 8: "P1"}
#: What the CLI's legacy client prints for a 401 whose body's `error` contains "invalid_token".
EXPIRED = "Please login - it appears your access token may have expired"
#: The sim's variables and function, as `particle list` formats them (src/lib/ui/index.js 203-230).
SIM_VARIABLES = {"    counter (int32)", "    lastArg (string)", "    temp (double)"}
SIM_FUNCTION = "    int setArg (String args)"


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def particle_bin() -> Path:
    return require_particle_cli()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, particle_bin: Path) -> Iterator[CyanServer]:
    root = tmp_path_factory.mktemp("cyan")
    started = CyanServer.start(root / "data", root / "logs")
    yield started
    code = started.stop()
    assert code == 0, f"cyan serve exited {code} on SIGINT\n{started.describe()}"


@pytest.fixture(scope="module")
def accounts(server: CyanServer) -> tuple[Account, Account]:
    for account in (OWNER, OTHER):
        done = run_cyan(
            "users", "add", account.email, "--password", account.password, "--data-dir", str(server.data_dir)
        )
        assert done.returncode == 0, str(done)
    admin = run_cyan(
        "users", "add", ADMIN.email, "--admin", "--password", ADMIN.password, "--data-dir", str(server.data_dir)
    )
    assert admin.returncode == 0, str(admin)
    return OWNER, OTHER


@pytest.fixture(scope="module")
def fleet(server: CyanServer, accounts: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFleet]:
    root = tmp_path_factory.mktemp("sim")
    sim = SimFleet.start(server, OWNER.email, FLEET_SIZE, root / "keys", root / "logs")
    try:
        ids = sim.wait_online(server.data_dir)
        expected = {f"sim-{i}" for i in range(FLEET_SIZE)}
        assert set(ids) == expected, f"the fleet's devices are named {sorted(ids)}, not {sorted(expected)}"
    except BaseException:
        sim.stop()
        raise
    yield sim
    code = sim.stop()
    assert code == 0, f"cyan sim exited {code} on SIGINT\n{sim.proc.describe()}"


@pytest.fixture(scope="module")
def new_cli(
    tmp_path_factory: pytest.TempPathFactory, particle_bin: Path, server: CyanServer
) -> Callable[[str], ParticleCli]:
    """A CLI with a HOME of its own, pointed at the server and logged in as nobody."""

    def make(name: str) -> ParticleCli:
        return ParticleCli(particle_bin, tmp_path_factory.mktemp(name), server.api_url)

    return make


@pytest.fixture(scope="module")
def owner(new_cli: Callable[[str], ParticleCli], fleet: SimFleet) -> ParticleCli:
    cli = new_cli("owner")
    login(cli, OWNER)
    return cli


@pytest.fixture(scope="module")
def other(new_cli: Callable[[str], ParticleCli], accounts: object) -> ParticleCli:
    cli = new_cli("other")
    login(cli, OTHER)
    return cli


@pytest.fixture
def bg() -> Iterator[list[BackgroundCommand]]:
    """Background commands of one test; whatever still runs at its end is killed."""
    with background([]) as commands:
        yield commands


# -- helpers -----------------------------------------------------------------------------------------


def login(cli: ParticleCli, account: Account) -> Completed:
    done = cli.run("login", "-u", account.email, "-p", account.password)
    assert done.returncode == 0, str(done)
    assert "> Successfully completed login!" in done.stdout, str(done)
    return done


def device(server: CyanServer, device_id: str) -> DeviceRecord | None:
    return read_store(server.data_dir, lambda store: store.devices.get(device_id))


def devices_of(server: CyanServer, username: str) -> list[DeviceRecord]:
    return read_store(server.data_dir, lambda store: store.devices.all(owner=username))


def stored_token(server: CyanServer, token: str) -> AccessToken | None:
    return read_store(server.data_dir, lambda store: store.accounts.get_token(token_hash(token)))


def ok(done: Completed) -> Completed:
    assert done.returncode == 0, str(done)
    return done


def failed(done: Completed) -> Completed:
    assert done.returncode == 1, str(done)
    return done


def subscribe(cli: ParticleCli, bg: list[BackgroundCommand], *args: str, max_events: int) -> BackgroundCommand:
    """Start `particle subscribe ARGS --max N` and wait until the server has opened the stream."""
    command = cli.start("subscribe", *args, "--max", str(max_events))
    bg.append(command)
    command.wait_for(subscribe_header_done(max_events))
    return command


def ping_until_done(
    publisher: ParticleCli, subscriber: BackgroundCommand, data: str, *, timeout: float = 30.0
) -> Completed:
    """Publish `vdev/ping` (every sim device answers `vdev/pong` with the same data) until the subscriber has
    seen its events; the ping is repeated every 1.5 s (--max may need more than one, and the first may race
    the stream's setup on the server)."""
    deadline = time.monotonic() + timeout
    while subscriber.process.poll() is None and time.monotonic() < deadline:
        published = ok(publisher.run("publish", "vdev/ping", data))
        assert published.lines == ["Published private event: vdev/ping"], str(published)
        pause = time.monotonic() + 1.5
        while subscriber.process.poll() is None and time.monotonic() < pause:
            time.sleep(0.05)
    return subscriber.wait(timeout=1.0)


def assert_event_shape(event: dict[str, object]) -> None:
    """The fields of Particle's SSE data the CLI prints, plus the `name` it adds from the `event:` line."""
    for key in ("name", "data", "published_at", "coreid", "ttl"):
        assert key in event, f"event without {key!r}: {event}"
    assert isinstance(event["name"], str), event
    assert event["name"], event
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", str(event["published_at"])), event


def is_device_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{24}", value) is not None


# -- the harness itself (these run without the Cloud API) ---------------------------------------------


def test_particle_cli_version(particle_bin: Path, tmp_path: Path) -> None:
    cli = ParticleCli(particle_bin, tmp_path, "http://127.0.0.1:9")
    done = ok(cli.run("--version"))
    assert done.stdout.strip() == PARTICLE_CLI_VERSION


def test_particle_cli_reads_the_home_config(particle_bin: Path, tmp_path: Path) -> None:
    """3.43.1 reads no environment variable for the API URL: only $HOME/.particle/particle.config.json."""
    cli = ParticleCli(particle_bin, tmp_path, "http://127.0.0.1:9")
    cli.write_config({"apiUrl": "http://127.0.0.1:9", "access_token": "abc123", "username": "x@example.com"})
    done = ok(cli.run("config"))
    assert done.lines == ["Current profile: particle", "Using API: http://127.0.0.1:9", "Access token: abc123"]


def test_cyan_serve_prints_both_ports_and_stops_on_sigint(tmp_path: Path) -> None:
    started = CyanServer.start(tmp_path / "data", tmp_path / "logs")
    try:
        for port in (started.device_port, started.api_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        assert started.api_url == f"http://127.0.0.1:{started.api_port}"
    finally:
        code = started.stop()
    assert code == 0, started.describe()


# -- login, whoami ------------------------------------------------------------------------------------


def test_login(new_cli: Callable[[str], ParticleCli], server: CyanServer, accounts: object) -> None:
    cli = new_cli("login")
    login(cli, OWNER)
    config = cli.config()
    assert config["apiUrl"] == server.api_url
    assert config["username"] == OWNER.email  # what was typed, not read from the server
    record = stored_token(server, cli.token)
    assert record is not None, "the token the CLI saved is not in the store"
    assert record.username == OWNER.email
    assert record.client_id == "CLI2"

    for who, password in ((OWNER.email, "wrong password"), ("nobody@example.com", OWNER.password)):
        refused = new_cli("login-refused")
        done = failed(refused.run("login", "-u", who, "-p", password))
        assert "! There was an error logging you in!" in done.stdout
        assert "It seems we're having trouble with logging in." in done.stdout
        # stderr carries `error_description` of the 400 body; "undefined" means the body had none.
        assert done.stderr.startswith("! "), str(done)
        assert "undefined" not in done.stderr, str(done)
        assert refused.config().get("access_token") is None


def test_whoami(owner: ParticleCli, new_cli: Callable[[str], ParticleCli], server: CyanServer) -> None:
    assert ok(owner.run("whoami")).lines[-1] == f"> {OWNER.email}"

    # With only a token, the CLI learns the username from GET /v1/user.
    by_token = new_cli("login-token")
    done = ok(by_token.run("login", "--token", owner.token))
    assert "> Successfully completed login!" in done.stdout
    assert by_token.config()["username"] == OWNER.email
    assert ok(by_token.run("whoami")).lines[-1] == f"> {OWNER.email}"

    # A token the server does not know: 401 with error "invalid_token" is what makes the CLI say so.
    bogus = new_cli("bogus-token")
    bogus.write_config({"apiUrl": server.api_url, "access_token": "0" * 40, "username": OWNER.email})
    done = failed(bogus.run("whoami"))
    assert EXPIRED in done.stdout
    assert "Failed to find username! Try: `particle login`" in done.stdout


# -- list, get, call ----------------------------------------------------------------------------------


def test_list(owner: ParticleCli, other: ParticleCli, server: CyanServer, fleet: SimFleet) -> None:
    done = ok(owner.run("list"))
    lines = done.stdout.splitlines()
    devices = devices_of(server, OWNER.email)
    assert {d.id for d in devices} == set(fleet.ids.values())
    for d in devices:
        assert d.platform_id in PLATFORM_NAMES, d
        header = f"{d.name} [{d.id}] ({PLATFORM_NAMES[d.platform_id]}) is online"
        assert header in lines, f"{header!r} not in\n{done.stdout}"
        start = lines.index(header) + 1
        block = []
        for line in lines[start:]:
            if not line.startswith("  "):
                break
            block.append(line.rstrip())
        assert block[0] == "  Variables:", block
        assert set(block[1:4]) == SIM_VARIABLES, block
        assert block[4:] == ["  Functions:", SIM_FUNCTION], block

    only = ok(owner.run("list", "sim-0"))
    assert [line for line in only.lines if "[" in line] == [f"sim-0 [{fleet.ids['sim-0']}] (Photon) is online"]
    assert ok(other.run("list")).lines == ["No devices found."]


def test_get(owner: ParticleCli, fleet: SimFleet) -> None:
    assert ok(owner.run("get", "sim-0", "temp")).lines == ["21.5"]
    counter = ok(owner.run("get", fleet.ids["sim-0"], "counter")).lines
    assert len(counter) == 1, counter
    assert re.fullmatch(r"\d+", counter[0]), counter

    done = failed(owner.run("get", "sim-0", "noSuchVariable"))
    assert done.lines[0].startswith("Error: "), str(done)
    assert "Error while reading value: Some variables could not be read" in done.stdout


def test_call_without_argument(owner: ParticleCli) -> None:
    # The CLI posts {} (no "args"): the function gets "" and returns its length.
    assert ok(owner.run("call", "sim-0", "setArg")).lines == ["0"]
    assert ok(owner.run("get", "sim-0", "lastArg")).stdout.strip() == ""


def test_call_with_argument(owner: ParticleCli, fleet: SimFleet) -> None:
    argument = "hello world&x=1"
    assert ok(owner.run("call", "sim-0", "setArg", argument)).lines == [str(len(argument))]
    assert ok(owner.run("get", fleet.ids["sim-0"], "lastArg")).lines == [argument]

    done = failed(owner.run("call", "sim-0", "noSuchFunction", "x"))
    assert "Function call failed: Function `noSuchFunction` not found" in done.stdout


# -- publish, subscribe -------------------------------------------------------------------------------


def test_publish(owner: ParticleCli, fleet: SimFleet, bg: list[BackgroundCommand]) -> None:
    # A prefix with a slash: the CLI sends it percent-encoded (/v1/devices/events/vdev%2Fpong).
    pongs = subscribe(owner, bg, "vdev/pong", max_events=1)
    data = f"ping-{uuid.uuid4().hex[:8]}"
    seen = ping_until_done(owner, pongs, data)  # asserts "Published private event: vdev/ping"
    assert seen.returncode == 0, str(seen)
    [event] = event_lines(seen.stdout)
    assert_event_shape(event)
    assert event["name"] == "vdev/pong"
    assert event["data"] == data
    assert event["coreid"] in fleet.ids.values()


STREAMS = [
    # (CLI arguments, the header it prints, what each event must satisfy)
    pytest.param(("vdev",), 'Subscribing to "vdev" from my devices', id="mine-prefix"),  # /v1/devices/events/vdev
    pytest.param((), "Subscribing to all events from my devices", id="mine"),  # /v1/devices/events
    pytest.param(("--device", "sim-0"), "Subscribing to all events from device sim-0's stream", id="device"),
    pytest.param(
        ("vdev", "--all"),
        'Subscribing to "vdev" from the firehose (all devices) and my personal stream (my devices)',
        id="firehose-prefix",  # /v1/events/vdev
    ),
]


@pytest.mark.parametrize(("args", "header"), STREAMS)
def test_subscribe(
    owner: ParticleCli, fleet: SimFleet, bg: list[BackgroundCommand], args: tuple[str, ...], header: str
) -> None:
    stream = subscribe(owner, bg, *args, max_events=2)
    seen = ping_until_done(owner, stream, f"sub-{uuid.uuid4().hex[:8]}")
    assert seen.returncode == 0, str(seen)
    assert seen.lines[0] == header
    assert seen.stdout.rstrip().endswith("2 event(s) received. Exiting..."), str(seen)
    events = event_lines(seen.stdout)
    assert len(events) == 2, str(seen)  # --max counts every event the stream delivers
    for event in events:
        assert_event_shape(event)
        if "vdev" in args:
            assert str(event["name"]).startswith("vdev"), event
        if "--device" in args:
            assert event["coreid"] == fleet.ids["sim-0"], event
        elif is_device_id(event["coreid"]):
            assert event["coreid"] in fleet.ids.values(), event
    assert any(event["coreid"] in fleet.ids.values() for event in events), events


@pytest.mark.slow
def test_an_idle_stream_stays_open(owner: ParticleCli, fleet: SimFleet, bg: list[BackgroundCommand]) -> None:
    """particle-api-js gives up on a stream that sends nothing for 13 s (EventStream.js: `timeout = 13000`),
    aborts it and reconnects 2 s later: what is published in between is lost. So the server must write
    something (a `:` comment line) more often than every 13 s while a stream is idle."""
    stream = subscribe(owner, bg, "vdev/pong", max_events=1)  # nothing but the reply to a ping matches
    time.sleep(14.0)
    data = f"late-{uuid.uuid4().hex[:8]}"
    ok(owner.run("publish", "vdev/ping", data))
    seen = stream.wait(timeout=5.0)
    assert seen.returncode == 0, str(seen)
    [event] = event_lines(seen.stdout)
    assert event["data"] == data


# -- nyan -------------------------------------------------------------------------------------------------


def test_nyan(owner: ParticleCli) -> None:
    # The CLI prints nothing when the PUT {"signal": "1"|"0"} succeeds (src/cmd/cloud.js 623-667).
    assert ok(owner.run("nyan", "sim-0")).stdout.strip() == ""
    assert ok(owner.run("nyan", "sim-0", "off")).stdout.strip() == ""
    done = failed(owner.run("nyan", "no-such-device"))
    assert done.stdout.startswith("Signaling failed: "), str(done)
    # The device took the signal and is still there.
    assert ok(owner.run("get", "sim-0", "temp")).lines == ["21.5"]


# -- ownership: a second user ---------------------------------------------------------------------------------


def test_second_user_sees_none_of_the_first_users_devices(other: ParticleCli, fleet: SimFleet) -> None:
    done = ok(other.run("list"))
    assert done.lines == ["No devices found."]
    for name, device_id in fleet.ids.items():
        assert name not in done.output
        assert device_id not in done.output


def test_second_user_cannot_call_or_read_the_first_users_device(
    owner: ParticleCli, other: ParticleCli, fleet: SimFleet
) -> None:
    ok(owner.run("call", "sim-0", "setArg", "owner-was-here"))
    for target in ("sim-0", fleet.ids["sim-0"]):
        done = failed(other.run("call", target, "setArg", "intruder"))
        assert re.search(r"HTTP error (403|404) from ", done.stdout), str(done)
        done = failed(other.run("get", target, "lastArg"))
        assert done.lines[0].startswith("Error: "), str(done)
        assert "Error while reading value: Some variables could not be read" in done.stdout
    # The function was never called for the intruder.
    assert ok(owner.run("get", "sim-0", "lastArg")).lines == ["owner-was-here"]


@pytest.mark.slow
def test_second_user_cannot_subscribe_to_the_first_users_devices(
    owner: ParticleCli, other: ParticleCli, fleet: SimFleet, bg: list[BackgroundCommand]
) -> None:
    # Another user's device stream is refused (any status but 200 and 401 prints "Server error").
    done = other.start("subscribe", "--device", fleet.ids["sim-0"], "--max", "1")
    bg.append(done)
    refused = done.wait(timeout=15.0)
    assert refused.returncode == 1, str(refused)
    assert "Error fetching event stream: " in refused.stdout, str(refused)

    # The second user's own streams stay silent while the first user's devices answer a ping.
    theirs = subscribe(other, bg, "vdev", max_events=1)
    firehose = subscribe(other, bg, "vdev/pong", "--all", max_events=1)
    mine = subscribe(owner, bg, "vdev/pong", max_events=1)
    seen = ping_until_done(owner, mine, f"private-{uuid.uuid4().hex[:8]}")
    assert seen.returncode == 0, str(seen)
    time.sleep(1.0)  # the same events had time to reach the other streams
    for stream in (theirs, firehose):
        assert stream.process.poll() is None, stream.describe()
        assert event_lines(stream.stdout()) == [], stream.describe()


def test_second_user_cannot_rename_signal_remove_or_claim_the_first_users_device(
    other: ParticleCli, server: CyanServer, fleet: SimFleet
) -> None:
    device_id = fleet.ids["sim-0"]
    done = failed(other.run("device", "rename", device_id, "stolen"))
    assert f"Failed to rename {device_id}: " in done.stdout
    done = failed(other.run("nyan", device_id))
    assert done.stdout.startswith("Signaling failed: "), str(done)
    done = failed(other.run("device", "remove", device_id, "--yes"))
    assert "Didn't remove the device: " in done.stdout
    # A claim must fail. (If the error says "That belongs to someone else." the CLI asks about a transfer;
    # with no standard input the prompt ends the process with a non-zero status too.)
    done = other.run("device", "add", device_id)
    assert done.returncode != 0, str(done)
    assert "Successfully claimed" not in done.stdout
    record = device(server, device_id)
    assert record is not None
    assert record.owner == OWNER.email
    assert record.name == "sim-0"


# -- device rename, remove, add, keys send ------------------------------------------------------------------


def test_device_rename(owner: ParticleCli, server: CyanServer, fleet: SimFleet) -> None:
    device_id = fleet.ids["sim-1"]
    done = ok(owner.run("device", "rename", "sim-1", "porch"))
    assert done.lines == ["Renaming device sim-1", "Successfully renamed device sim-1 to: porch"]
    record = device(server, device_id)
    assert record is not None
    assert record.name == "porch"
    assert ok(owner.run("get", "porch", "temp")).lines == ["21.5"]
    failed(owner.run("get", "sim-1", "temp"))
    assert f"porch [{device_id}] (Photon) is online" in ok(owner.run("list")).lines


def test_device_remove(owner: ParticleCli, server: CyanServer, fleet: SimFleet) -> None:
    device_id = fleet.ids["sim-3"]
    done = ok(owner.run("device", "remove", "sim-3", "--yes"))
    assert done.lines == ["releasing device sim-3", "Okay!"]
    record = device(server, device_id)
    assert record is None or record.owner is None, record
    assert device_id not in ok(owner.run("list")).stdout
    failed(owner.run("get", device_id, "temp"))


def test_device_add(
    owner: ParticleCli, other: ParticleCli, server: CyanServer, fleet: SimFleet, new_cli: Callable[[str], ParticleCli]
) -> None:
    device_id = fleet.ids["sim-2"]
    ok(owner.run("device", "remove", device_id, "--yes"))
    released = device(server, device_id)
    assert released is not None, "a released device must stay registered (its key), to be claimed again"
    assert released.owner is None

    # An ownerless device is not anyone's to take: the CLI shows the 404 (docs/keys.md).
    for user in (owner, other):
        refused = user.run("device", "add", device_id)
        assert refused.returncode == 1
        assert refused.lines == [f"Claiming device {device_id}", "Failed to claim device: Not Found"]
    assert device(server, device_id).owner is None  # type: ignore[union-attr]

    # An admin may: the same CLI command, unchanged.
    admin = new_cli("admin")
    login(admin, ADMIN)
    done = ok(admin.run("device", "add", device_id))
    assert done.lines == [f"Claiming device {device_id}", f"Successfully claimed device {device_id}"]
    record = device(server, device_id)
    assert record is not None
    assert record.owner == ADMIN.email
    assert any(device_id in line and line.endswith("is online") for line in ok(admin.run("list")).lines)
    assert ok(admin.run("get", device_id, "temp")).lines == ["21.5"]
    # The operator gives it back to its owner.
    given = run_cyan("devices", "claim", device_id, "--owner", OWNER.email, "--data-dir", str(server.data_dir))
    assert given.returncode == 1  # it is the admin's now: released first, then claimed for the owner
    ok(admin.run("device", "remove", device_id, "--yes"))
    given = run_cyan("devices", "claim", device_id, "--owner", OWNER.email, "--data-dir", str(server.data_dir))
    assert given.returncode == 0, str(given)
    assert ok(owner.run("get", device_id, "temp")).lines == ["21.5"]


def test_keys_send(owner: ParticleCli, server: CyanServer, fleet: SimFleet) -> None:
    device_id = fleet.ids["sim-4"]
    key = generate_device_key()
    key_file = owner.home / "new_device_key.der"  # as `particle keys save` writes it: PKCS#1 DER
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    done = ok(owner.run("keys", "send", device_id, str(key_file)))
    assert done.lines == [
        f"attempting to add a new public key for device {device_id}",
        "submitting public key succeeded!",
    ]
    record = device(server, device_id)
    assert record is not None
    assert record.public_key_der == public_key_der(key.public_key())
    assert record.key_fingerprint == fingerprint(key)


# -- tokens, logout ---------------------------------------------------------------------------------------------


def test_token_create(owner: ParticleCli, new_cli: Callable[[str], ParticleCli], server: CyanServer) -> None:
    done = owner.run_with_password(["token", "create", "--expires-in", "3600"], OWNER.password)
    assert done.returncode == 0, str(done)
    token = _new_token(done, "New access token expires on ")
    record = stored_token(server, token)
    assert record is not None
    assert record.username == OWNER.email
    assert record.client_id == "user"
    assert record.expires_at is not None
    remaining = (record.expires_at - datetime.now(UTC)).total_seconds()
    assert 3600 - 300 < remaining <= 3600, record

    # The new token works on its own: with no username saved, whoami asks the server.
    holder = new_cli("token-holder")
    holder.write_config({"apiUrl": server.api_url, "access_token": token})
    assert ok(holder.run("whoami")).lines[-1] == f"> {OWNER.email}"

    done = owner.run_with_password(["token", "create", "--never-expires"], OWNER.password)
    assert done.returncode == 0, str(done)
    forever = stored_token(server, _new_token(done, "New access token never expires"))
    assert forever is not None
    assert forever.expires_at is None

    done = owner.run_with_password(["token", "create"], "wrong password")
    assert done.returncode == 1, str(done)
    assert "Error while creating a new access token: " in done.stdout


def _new_token(done: Completed, announcement: str) -> str:
    lines = done.stdout.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(announcement)]
    assert found, str(done)
    assert found[-1] + 1 < len(lines), str(done)
    token = lines[found[-1] + 1].strip()
    assert re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,}", token), str(done)
    return token


def test_token_revoke(owner: ParticleCli, new_cli: Callable[[str], ParticleCli], server: CyanServer) -> None:
    victim = new_cli("revoked")
    login(victim, OWNER)
    token = victim.token
    assert stored_token(server, token) is not None

    # DELETE /v1/access_tokens/:token is sent with no Authorization header: the token itself is the proof.
    done = ok(owner.run("token", "revoke", token))
    assert done.lines == ["Successfully revoked all provided tokens"]
    assert stored_token(server, token) is None
    done = failed(victim.run("whoami"))
    assert EXPIRED in done.stdout


def test_token_revoke_of_an_unknown_token_is_reported(owner: ParticleCli) -> None:
    # The CLI prints the failure on stderr but exits 0 (src/cmd/token.js returns -1, which is not an exit status).
    done = owner.run("token", "revoke", "f" * 40)
    assert "Failed to revoke the following access tokens:" in done.stderr, str(done)
    assert f"token: {'f' * 40}; reason: HTTP error 404 from " in done.stderr, str(done)


def test_logout(new_cli: Callable[[str], ParticleCli], server: CyanServer, accounts: object) -> None:
    cli = new_cli("logout")
    login(cli, OWNER)
    token = cli.token
    done = ok(cli.run("logout"))
    assert done.lines == [f"> You have been logged out from {OWNER.email}"]
    config = cli.config()
    assert config["access_token"] is None
    assert config["username"] is None
    assert stored_token(server, token) is None

    stale = new_cli("stale")
    stale.write_config({"apiUrl": server.api_url, "access_token": token, "username": OWNER.email})
    assert EXPIRED in failed(stale.run("whoami")).stdout
    assert ok(cli.run("logout")).lines == ["You were already logged out."]
