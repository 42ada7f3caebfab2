"""`cyan sim`: a fleet of virtual devices against a device server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cyan.app import Application, NewDevice
from cyan.cloud.errors import AlreadyExistsError
from cyan.config import Settings
from cyan.data import open_application
from cyan.keys import (
    encode_ec_private_key_der,
    generate_ec_key,
    load_ec_private_key,
    load_ec_public_key,
    public_key_der,
    udp_public_key_der,
)
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, Firmware
from cyan.sim import (
    ARGON_4,
    ELECTRON_2,
    Fault,
    Fleet,
    FleetStats,
    SimConfig,
    UdpFaults,
    UdpPersonality,
    UdpVirtualDevice,
    derive_device_id,
    ensure_file_limit,
    firmware_for,
    read_server_key,
    registered_public_key,
)

from ._local import operator
from ._options import DatabaseOption, DataDirOption, local_settings


def _firmware(choice: str) -> Firmware | list[Firmware]:
    if choice == "mixed":
        return [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1]
    return firmware_for(choice)


def sim(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many devices.")] = 10,
    server: Annotated[
        str | None,
        typer.Option("--server", help="HOST:PORT of the device server (127.0.0.1:5683; UDP: 127.0.0.1:5684)."),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="tcp: Photons on 3.1.0/0.6.1; udp: Argons on Device OS 4.0.2, or Electrons on 2.3.1 (DTLS).",
        ),
    ] = "tcp",
    loss: Annotated[float, typer.Option("--loss", help="UDP: the share of datagrams lost, each way.")] = 0.0,
    duplicate: Annotated[float, typer.Option("--duplicate", help="UDP: the share of datagrams sent twice.")] = 0.0,
    reorder: Annotated[float, typer.Option("--reorder", help="UDP: the share of datagrams overtaken.")] = 0.0,
    move_after: Annotated[
        float | None,
        typer.Option("--move-after", help="UDP: change every device's address this many seconds in (NAT rebinding)."),
    ] = None,
    server_key: Annotated[
        Path | None,
        typer.Option("--server-key", help="The server's public key or key file (the data directory's)."),
    ] = None,
    firmware: Annotated[
        str | None,
        typer.Option(
            "--firmware",
            help="Device OS version: 3.1.0 (new stack, the default), 0.6.1 (legacy) or mixed; over UDP 4.0.2 (an "
            "Argon, the default) or 2.3.1 (an Electron: no connection id, type-254 records after a move).",
        ),
    ] = None,
    fault: Annotated[
        str | None,
        typer.Option("--fault", help="Inject a fault: " + ", ".join(f.value for f in Fault) + "."),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            "--keys-dir", help="Where the devices' keys are kept between runs (the data directory's sim-keys)."
        ),
    ] = None,
    ramp: Annotated[float | None, typer.Option("--ramp", help="Connections per second (all at once).")] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds (run until Ctrl-C).")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register the devices in the data directory.")
    ] = True,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Register the devices as this user's (see cyan users add).")
    ] = None,
    id_prefix: Annotated[
        str,
        typer.Option(
            "--id-prefix",
            help="Device ids are this hex prefix followed by the index (c0ffee00000000000000002a); give each "
            "simulator of one server its own (ids derived from a hash).",
        ),
    ] = "",
    source_address: Annotated[
        list[str] | None,
        typer.Option(
            "--source-address",
            help="Connect from this local address; repeat to spread the fleet (one address gives about 28,000 "
            "connections to one server port, e.g. 127.0.0.2, 127.0.0.3, ... on loopback).",
        ),
    ] = None,
    replace_keys: Annotated[
        bool,
        typer.Option(
            "--replace-keys",
            help="Where a device of this fleet is registered with another key, register this fleet's key instead "
            "(as an operator, audited).",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Run virtual devices that behave like the real firmware, optionally with a fault: Photons/P1s over TCP,
    or Argons on 4.0.2 or Electrons on 2.3.1 over UDP (--protocol udp) with datagram loss, duplication,
    reordering and address changes."""
    settings = local_settings(data_dir)
    if protocol not in ("tcp", "udp"):
        raise typer.BadParameter(f"{protocol!r}: tcp or udp", param_hint="--protocol")
    if protocol == "udp":
        faults = UdpFaults(loss=loss, duplicate=duplicate, reorder=reorder)
        target = server or "127.0.0.1:5684"
        personality = _udp_personality(firmware)
        _sim_udp(
            settings, count, target, server_key, keys_dir, id_prefix, owner, faults, move_after, duration, personality
        )
        return
    firmware = firmware or "3.1.0"
    server = server or "127.0.0.1:5683"
    key_path = server_key or settings.server_public_key_path
    public, _address = read_server_key(key_path.read_bytes())
    host, _, port_text = server.rpartition(":")
    if not host or not port_text.isdigit():
        raise typer.BadParameter(f"{server!r} is not HOST:PORT", param_hint="--server")
    chosen_fault = Fault.parse(fault) if fault else None
    sources = tuple(source_address or ())
    for address in sources:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise typer.BadParameter(f"{address!r} is not an IP address", param_hint="--source-address") from None
    fleet = Fleet.load_or_create(
        keys_dir or settings.data_dir / "sim-keys",
        count,
        public,
        firmware=_firmware(firmware),
        fault=chosen_fault,
        config=SimConfig(source_addresses=sources),
        prefix=id_prefix,
    )
    if register:
        done = asyncio.run(_register(settings, fleet, owner, replace_keys=replace_keys))
        typer.echo(f"Registered {done.added} new device(s) in {_where(settings)}")
        if done.replaced:
            typer.echo(f"Replaced the registered key of {len(done.replaced)} device(s) with this fleet's (audited).")
        if done.other_key:
            typer.echo(
                f"warning: {len(done.other_key)} device(s) of this fleet (e.g. {done.other_key[0]}) are registered "
                "with another key (made in another --keys-dir, or approved after an earlier fault run): the server "
                "will refuse them (key_mismatch). Run with --replace-keys to register this fleet's keys (audited), "
                "or give the fleet its own ids with --id-prefix.",
                err=True,
            )
    note = _address_limit_note(count, len(sources), settings.address_burst, settings.address_rate)
    if note:
        typer.echo(note, err=True)
    room = ensure_file_limit(count + 100) - 100
    if room < count:
        typer.echo(
            f"warning: this process may open about {max(room, 0):,} connections (its open-file limit); the other "
            f"{count - max(room, 0):,} devices will fail to connect. Raise the limit (ulimit -n) or run several "
            "cyan sim processes.",
            err=True,
        )
    asyncio.run(_run(fleet, host, int(port_text), ramp, duration))
    for line in _explain(fleet.stats(), chosen_fault):
        typer.echo(line)


def _address_limit_note(count: int, addresses: int, burst: int, per_second: float) -> str | None:
    """What a server's limit on new connections per address (`CYAN_ADDRESS_BURST`, `CYAN_ADDRESS_RATE`; these
    are the local settings' values) does to a fleet connecting from `addresses` addresses (0: the default
    one), or None when each address stays within its burst."""
    per_address = -(-count // max(1, addresses))
    if per_address <= burst or per_second <= 0:
        return None
    wait = (per_address - burst) / per_second
    return (
        f"note: {per_address:,} devices from each address. The server lets one address open {burst:,} connections "
        f"at once and {per_second:g} a second after (CYAN_ADDRESS_BURST, CYAN_ADDRESS_RATE) and closes the others "
        f"before the handshake (rate_limited in its records); they retry on the firmware's backoff, so the fleet "
        f"needs about {wait:.0f} s to connect. Spread it over more addresses (--source-address 127.0.0.2 "
        "--source-address 127.0.0.3 ... on loopback), or raise the limits of a server used for load tests."
    )


def _udp_personality(firmware: str | None) -> UdpPersonality:
    if firmware in (None, "4.0.2"):
        return ARGON_4
    if firmware == "2.3.1":
        return ELECTRON_2
    raise typer.BadParameter(f"{firmware!r}: over UDP, 4.0.2 or 2.3.1", param_hint="--firmware")


def _sim_udp(
    settings: Settings,
    count: int,
    server: str,
    server_key: Path | None,
    keys_dir: Path | None,
    id_prefix: str,
    owner: str | None,
    faults: UdpFaults,
    move_after: float | None,
    duration: float | None,
    personality: UdpPersonality = ARGON_4,
) -> None:
    host, _, port_text = server.rpartition(":")
    if not host or not port_text.isdigit():
        raise typer.BadParameter(f"{server!r} is not HOST:PORT", param_hint="--server")
    public = load_ec_public_key((server_key or settings.udp_server_public_key_path).read_bytes())
    directory = keys_dir or settings.data_dir / "sim-keys-udp"
    directory.mkdir(parents=True, exist_ok=True)
    devices = []
    for index in range(count):
        device_id = derive_device_id(index, seed="cyan-sim-udp", prefix=id_prefix)
        path = directory / f"{device_id}.der"
        if not path.exists():
            path.write_bytes(encode_ec_private_key_der(generate_ec_key()))
            path.chmod(0o600)
        key = load_ec_private_key(path.read_bytes())
        devices.append(UdpVirtualDevice(bytes.fromhex(device_id), key, public, faults=faults, personality=personality))
    added = asyncio.run(_register_udp(settings, devices, owner))
    typer.echo(f"Registered {added} new UDP device(s) in {_where(settings)}")
    asyncio.run(_run_udp(devices, host, int(port_text), move_after, duration))


async def _register_udp(settings: Settings, devices: list[UdpVirtualDevice], owner: str | None) -> int:
    actor = operator("cyan sim")
    async with open_application(settings) as app:
        new = []
        for device in devices:
            der = udp_public_key_der(device.device_key)
            existing = await app.store.devices.get(device.device_id.hex())
            if existing is None:
                new.append(NewDevice(device.device_id.hex(), der, owner=owner))
            elif existing.public_key_der != der:
                await app.keys.provision(actor, device.device_id.hex(), der)
        await app.devices.register(actor, new)
        return len(new)


async def _run_udp(
    devices: list[UdpVirtualDevice], host: str, port: int, move_after: float | None, duration: float | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    for device in devices:
        await device.start(host, port)
    typer.echo(f"Simulating {len(devices)} UDP device(s) against {host}:{port}; Ctrl-C stops.")

    async def move_all() -> None:
        assert move_after is not None
        await asyncio.sleep(move_after)
        for device in devices:
            await device.move()
        typer.echo(f"Moved {len(devices)} device(s) to new addresses")

    mover = asyncio.create_task(move_all()) if move_after is not None else None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
            up = sum(d.connected.is_set() for d in devices)
            sent = sum(d.datagrams_sent for d in devices)
            lost = sum(d.datagrams_dropped for d in devices)
            typer.echo(f"{up}/{len(devices)} connected; {sent} datagrams sent, {lost} dropped by the fault")
    finally:
        if mover is not None:
            mover.cancel()
        for device in devices:
            await device.stop()
    failures = [d.failure for d in devices if d.failure]
    typer.echo(f"Stopped. {sum(d.connected.is_set() for d in devices)}/{len(devices)} were connected.")
    for failure in failures[:5]:
        typer.echo(f"  failure: {failure}")


@dataclass(frozen=True, slots=True)
class _Registration:
    added: int
    #: Devices of this fleet registered with another key, left as they are: the server will refuse them.
    other_key: list[str]
    #: Devices whose registered key was replaced by this fleet's (--replace-keys).
    replaced: list[str]


async def _register(settings: Settings, fleet: Fleet, owner: str | None, *, replace_keys: bool) -> _Registration:
    """Register the devices this server has not seen (with their owner, if given), as the operator; a device
    registered before keeps its registration (an `amnesia` device keeps its old key on purpose), and gets the
    owner if it has none."""
    async with open_application(settings) as app:
        return await _register_with(app, fleet, owner, replace_keys=replace_keys)


async def _register_with(app: Application, fleet: Fleet, owner: str | None, *, replace_keys: bool) -> _Registration:
    actor = operator("cyan sim")
    if owner is not None and await app.store.accounts.get_user(owner) is None:
        raise typer.BadParameter(f"no user {owner!r}; create it with cyan users add", param_hint="--owner")
    new: list[NewDevice] = []
    other_key: list[str] = []
    replaced: list[str] = []
    for device in fleet.devices:
        spec = device.spec
        existing = await app.store.devices.get(spec.device_id)
        der = public_key_der(registered_public_key(spec))
        if existing is not None and existing.public_key_der is not None:
            if owner is not None and existing.owner is None:
                await app.devices.claim(actor, existing.id, owner=owner)
            if existing.public_key_der != der:
                # The same ids from another keys directory, or a key approved from an earlier fault run.
                if replace_keys:
                    await app.keys.provision(actor, spec.device_id, der)
                    replaced.append(spec.device_id)
                else:
                    other_key.append(spec.device_id)
            continue
        if existing is not None:  # registered without a key: give it the one it will present
            await app.keys.provision(actor, spec.device_id, der)
            continue
        new.append(NewDevice(spec.device_id, der, name=spec.name or None, owner=owner))
    try:
        await app.devices.register(actor, new)
    except AlreadyExistsError:
        # A name is taken by another device: register those unnamed, one by one.
        for entry in new:
            try:
                await app.devices.register(actor, [entry])
            except AlreadyExistsError:
                await app.devices.register(actor, [NewDevice(entry.device_id, entry.public_key_der, owner=owner)])
    return _Registration(len(new), other_key, replaced)


def _explain(stats: FleetStats, fault: Fault | None) -> list[str]:
    """What the devices' failures mean: a device only sees the server close the connection, which says
    little; the server's records say why."""
    refused = stats.failures.get("closed_by_peer", 0)
    if not refused:
        return []
    if fault is Fault.AMNESIA:
        return [
            "As the amnesia fault means: each device made a new key the server does not hold, so the server closed "
            "the connection after the device sent its identity (key_mismatch in its records, with both "
            "fingerprints: cyan devices attempts DEVICE_ID). The devices keep their registered keys on disk: a "
            "run without --fault connects again; to let the new keys in instead, see cyan policy rekey "
            "(docs/self-healing.md)."
        ]
    if fault is Fault.CORRUPT_KEY:
        return [
            "As the corrupt_key fault means: the server encrypts the session key to the damaged key the device "
            "presents, which the device cannot decrypt (session_key_rejected in the server's records: "
            "cyan devices attempts DEVICE_ID). A run without --fault connects again."
        ]
    return [
        f"{refused} attempt(s) ended with the server closing the connection. The device cannot tell why; the "
        "server's records can: cyan devices attempts DEVICE_ID (or cyan devices doctor DEVICE_ID). A key_mismatch "
        "there means the server holds another key for that id: run with --replace-keys to register this fleet's "
        "keys, or give the fleet its own ids with --id-prefix. A rate_limited means more devices connected from "
        "one address at once than the server lets in: they get in on their backoff."
    ]


async def _run(fleet: Fleet, host: str, port: int, ramp: float | None, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    fleet.start(host, port, ramp=ramp)
    started = loop.time()
    typer.echo(f"Simulating {len(fleet)} device(s) against {host}:{port}; Ctrl-C stops.")

    async def report_recovery() -> None:
        # How long the whole fleet took to be connected: after an outage, or in the amnesia drill, the
        # time to recover the fleet.
        if await fleet.wait_connected():
            typer.echo(f"All {len(fleet)} device(s) connected {loop.time() - started:.1f} s after the start")

    recovery = asyncio.create_task(report_recovery())
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
            typer.echo(str(fleet.stats()))
    finally:
        recovery.cancel()
        await fleet.stop()
    typer.echo(f"Stopped. {fleet.stats()}")


def _where(settings: Settings) -> str:
    """The database, as a person reads it: the file, or the URL without its password."""
    if not settings.database_url:
        return str(settings.database_path)
    scheme, _, rest = settings.database_url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
