"""`particle flash DEVICE app.bin` from the real Particle CLI (npm particle-cli 3.43.1) against `cyan serve`,
with a simulated Photon: the device gets the image over the device protocol (protocol.md §7), resets, and
comes back running it; a binary for another platform is refused with the reason, and nothing is sent."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from particle_cli_support import (
    PARTICLE_BIN,
    CyanServer,
    ParticleCli,
    SimFleet,
    read_store,
    require_particle_cli,
    run_cyan,
)

from cyan.cloud.models import JobState, UpdateJob
from cyan.keys import public_key_der
from cyan.protocol import parse_module
from cyan.protocol.binary import build_module
from cyan.testing import fixed_device_key

OWNER, PASSWORD = "flash@example.com", "flash the fleet"
#: The binary `particle flash DEVICE tinker` sends for a Photon: the CLI's own copy.
TINKER = (
    PARTICLE_BIN.parents[1] / "particle-cli" / "assets" / "knownApps" / "photon" / "tinker" / "tinker-0.4.5-photon.bin"
)


def _user_part(platform: int, version: int) -> bytes:
    """A Photon user part as Device OS's build lays it out, with PRODUCT_ID(4242) / PRODUCT_VERSION(version)."""
    body = hashlib.sha256(b"cli app %d" % version).digest() * 600
    return build_module(body, platform_id=platform, product_id=4242, product_version=version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CyanServer, SimFleet, ParticleCli]]:
    binary = require_particle_cli()
    root = tmp_path_factory.mktemp("flash")
    server = CyanServer.start(root / "data", root / "logs")
    fleet: SimFleet | None = None
    try:
        done = run_cyan("users", "add", OWNER, "--password", PASSWORD, "--data-dir", str(server.data_dir))
        assert done.returncode == 0, str(done)
        fleet = SimFleet.start(server, OWNER, 1, root / "keys", root / "logs")
        fleet.wait_online(server.data_dir)
        cli = ParticleCli(binary, root / "home", server.api_url)
        login = cli.run("login", "-u", OWNER, "-p", PASSWORD)
        assert login.returncode == 0, str(login)
        yield server, fleet, cli
    finally:
        if fleet is not None:
            assert fleet.stop() == 0, fleet.proc.describe()
        assert server.stop() == 0, server.describe()


def _jobs(server: CyanServer, device_id: str) -> list[UpdateJob]:
    jobs: list[UpdateJob] = read_store(server.data_dir, lambda store: store.updates.list_jobs(device_id=device_id))
    return jobs


def test_particle_flash_updates_a_simulated_photon(
    world: tuple[CyanServer, SimFleet, ParticleCli], tmp_path: Path
) -> None:
    server, fleet, cli = world
    device_id = fleet.ids["sim-0"]
    image = _user_part(6, 7)
    (tmp_path / "app.bin").write_bytes(image)
    done = cli.run("flash", "sim-0", str(tmp_path / "app.bin"), timeout=60)
    assert done.returncode == 0, str(done)
    assert f"Flashing firmware to your device {'sim-0'}" in done.stdout
    assert "Flash success!" in done.stdout
    deadline = time.monotonic() + 60
    while True:
        (job,) = _jobs(server, device_id)
        if job.state.finished or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job.state is JobState.SUCCEEDED, (job, server.describe(), fleet.proc.describe())
    assert job.verification == "hash"  # its Describe lists the image's SHA-256 (§6.7)
    assert job.firmware == hashlib.sha256(image).hexdigest()
    # The new application's Hello (§5) reaches the device's record through the cloud's write-behind, which may
    # land just after the job's verdict: wait for it, within a bound.
    deadline = time.monotonic() + 15
    while True:
        record = read_store(server.data_dir, lambda store: store.devices.get(device_id))
        assert record is not None
        if (record.product_id, record.product_version) == (4242, 7) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (record.product_id, record.product_version) == (4242, 7)
    assert parse_module(image).product_version == 7


def test_particle_flash_of_a_known_app_to_a_product_device(
    world: tuple[CyanServer, SimFleet, ParticleCli], tmp_path: Path
) -> None:
    """After the test above, the device runs product 4242's firmware, so `particle flash sim-0 tinker` first
    marks it a development device (PUT /v1/products/4242/devices/ID {"development": true}), then sends the
    Tinker binary the CLI carries for the Photon."""
    server, fleet, cli = world
    device_id = fleet.ids["sim-0"]
    before = len(_jobs(server, device_id))
    done = cli.run("flash", "sim-0", "tinker", timeout=60)
    assert done.returncode == 0, str(done)
    assert f"Marking device {device_id} as a development device" in done.stdout
    assert f"Flashing firmware to your device {device_id}" in done.stdout
    jobs = _jobs(server, device_id)
    assert len(jobs) == before + 1
    assert jobs[0].firmware == hashlib.sha256(TINKER.read_bytes()).hexdigest()
    deadline = time.monotonic() + 60
    while not (job := _jobs(server, device_id)[0]).state.finished and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.state is JobState.SUCCEEDED, (job, server.describe(), fleet.proc.describe())


def test_particle_flash_of_another_platforms_binary_is_refused(
    world: tuple[CyanServer, SimFleet, ParticleCli], tmp_path: Path
) -> None:
    server, fleet, cli = world
    device_id = fleet.ids["sim-0"]
    before = len(_jobs(server, device_id))
    (tmp_path / "p1.bin").write_bytes(_user_part(8, 9))
    done = cli.run("flash", "sim-0", str(tmp_path / "p1.bin"), timeout=60)
    assert done.returncode != 0, str(done)
    assert "wrong platform: the binary is built for P1 (platform 8), the device is a Photon (platform 6)" in done.output
    assert len(_jobs(server, device_id)) == before


def test_particle_flash_to_an_offline_device_says_so_and_sends_nothing(
    world: tuple[CyanServer, SimFleet, ParticleCli], tmp_path: Path
) -> None:
    """Particle's cloud refuses a flash to an offline device; the CLI would print "Flash success!" for any
    answer with a status, so the refusal is an error it shows (queueing is Cyan's choice: cyan devices flash)."""
    server, _fleet, cli = world
    key = tmp_path / "away.der"
    key.write_bytes(public_key_der(fixed_device_key(5).public_key()))
    away = "0a" * 12
    added = run_cyan(
        "devices",
        "add",
        away,
        "--key",
        str(key),
        "--name",
        "away",
        "--owner",
        OWNER,
        "--data-dir",
        str(server.data_dir),
    )
    assert added.returncode == 0, str(added)
    (tmp_path / "app.bin").write_bytes(_user_part(6, 11))
    done = cli.run("flash", "away", str(tmp_path / "app.bin"), timeout=60)
    assert done.returncode != 0, str(done)
    assert "Flash success!" not in done.output
    assert "is not connected" in done.output, str(done)
    assert _jobs(server, away) == []
