"""`cyan serve`'s capacity settings: the handshakes' RSA work on worker threads (`--workers N`) or on the
loop, and the open-file limit that bounds how many devices one process holds.

Both ways must serve both firmware generations the same; a failing worker must cost one recorded
attempt (step and reason), never the server or another device.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import padding

from cyan.cli import main as cyan_cli
from cyan.cli.serve import _print_banner
from cyan.cloud.models import AttemptOutcome
from cyan.config import Settings
from cyan.limits import ensure_file_limit
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, ServerConfig
from cyan.server import device_server
from cyan.service import Service, prepare_data_directory
from cyan.sim import Fleet, SimConfig, VirtualDeviceSpec
from cyan.testing import fixed_device_key, fixed_server_key
from serve_support import attempts_once_connected, loopback_service, register

FAST = ServerConfig(identity_timeout=1.0, hello_timeout=1.0, describe_delay=0.2, request_timeout=2.0)
SIM = SimConfig(backoff_scale=0.05)
SPECS = [
    VirtualDeviceSpec(f"{1:024x}", fixed_device_key(1), firmware=DEVICE_OS_3_1_0),
    VirtualDeviceSpec(f"{2:024x}", fixed_device_key(2), firmware=DEVICE_OS_0_6_1),
]


def _service(tmp_path: Path, workers: int) -> Service:
    return loopback_service(tmp_path / "data", workers=workers, protocol=FAST)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_both_generations_connect_and_answer(tmp_path: Path, workers: int) -> None:
    threads_seen: set[str] = set()
    real = device_server._private_key_operation

    def watched(*args: object) -> bytes | None:
        threads_seen.add(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    async def main() -> None:
        service = _service(tmp_path, workers)
        await service.start()
        await register(service, SPECS)
        fleet = Fleet(SPECS, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:
            await fleet.wait_connected(timeout=10)
            for spec in SPECS:
                assert await service.cloud.call_function(spec.device_id, "setArg", "abc") == 3
        finally:
            await fleet.stop()
            await service.stop()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device_server, "_private_key_operation", watched)
        asyncio.run(main())
    if workers:
        assert threads_seen
        assert all(name.startswith("cyan-key-") for name in threads_seen)
    else:
        assert threads_seen == set(), "with no workers the core does the RSA work itself"


def test_a_failing_worker_is_recorded_and_the_server_goes_on(tmp_path: Path) -> None:
    real = device_server._private_key_operation
    failures = {"left": 1}

    def failing_once(*args: object) -> bytes | None:
        if failures["left"]:
            failures["left"] -= 1
            raise MemoryError("simulated worker failure")
        return real(*args)  # type: ignore[arg-type]

    async def main() -> None:
        service = _service(tmp_path, 2)
        await service.start()
        try:
            await register(service, SPECS)
            # The first attempt fails on our side; the device retries and gets in. The failed decryption
            # never learnt who the device was: its record has the address only.
            attempts = await attempts_once_connected(service, SPECS[:1])
        finally:
            await service.stop()
        failed = [a for a in attempts if a.outcome is AttemptOutcome.FAILED]
        assert [(a.step, a.reason) for a in failed] == [("nonce", "server_error")]
        assert "simulated worker failure" in (failed[0].detail or "")
        assert any(a.outcome is AttemptOutcome.CONNECTED for a in attempts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device_server, "_private_key_operation", failing_once)
        asyncio.run(main())


def test_workers_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Settings(data_dir=Path("x"), workers=-1)
    with pytest.raises(ValueError, match="device processes must be 0 or more"):
        Settings(data_dir=Path("x"), device_processes=-2)


def test_banner_tells_the_device_capacity_and_the_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        for workers, file_limit in ((2, 1024), (0, 100_000)):
            service = _service(tmp_path / str(workers), workers)
            await service.start()
            try:
                _print_banner(service, file_limit=file_limit)
            finally:
                await service.stop()

    asyncio.run(main())
    out = capsys.readouterr().out
    assert "Room for about 824 connected devices (open-file limit 1,024; raise the hard limit" in out
    assert "Handshake RSA work on 2 worker threads (--workers)." in out
    assert "Room for about 99,800 connected devices (open-file limit 100,000)." in out
    assert "Handshake RSA work on the event loop (--workers 0)." in out


def test_banner_with_device_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        service = loopback_service(tmp_path / "data", device_processes=3, protocol=FAST)
        await service.start()
        try:
            _print_banner(service, file_limit=20_000)
        finally:
            await service.stop()

    asyncio.run(main())
    out = capsys.readouterr().out
    assert "Room for about 59,400 connected devices (open-file limit 20,000 per process, 3 device processes)." in out
    assert "Each device process does its own handshakes' RSA work." in out
    assert "Devices connect to 127.0.0.1:" in out


def test_the_file_limit_is_raised_to_what_the_system_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert ensure_file_limit(200) == min(256, hard), "never lowered"
        expected = soft if hard == resource.RLIM_INFINITY else hard
        assert ensure_file_limit() == max(expected, min(256, hard))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == ensure_file_limit()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_fleet_spread_over_several_source_addresses(tmp_path: Path) -> None:
    async def main() -> None:
        service = _service(tmp_path, 1)
        await service.start()
        try:
            await register(service, SPECS)
            config = SimConfig(backoff_scale=0.05, source_addresses=("127.0.0.2", "127.0.0.3"))
            attempts = await attempts_once_connected(service, SPECS, config)
        finally:
            await service.stop()
        assert {(a.device_id, a.peer_address.split(":")[0]) for a in attempts} == {
            (SPECS[0].device_id, "127.0.0.2"),
            (SPECS[1].device_id, "127.0.0.3"),
        }

    asyncio.run(main())


def test_cyan_sim_refuses_a_source_address_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare_data_directory(settings)
    argv = ["sim", "--data-dir", str(settings.data_dir), "--no-register", "--source-address", "loopback-two"]
    assert cyan_cli(argv) == 2
    assert "'loopback-two' is not an IP address" in capsys.readouterr().err


def test_key_workers_answer_every_operation_correctly_when_run_concurrently() -> None:
    """One server key shared by the worker threads: every answer must be the right one, in any order."""
    key = fixed_server_key()
    public = key.public_key()
    messages = [os.urandom(40 + n % 100) for n in range(200)]
    digests = [os.urandom(20) for _ in range(200)]

    async def main() -> dict[int, bytes | BaseException | None]:
        loop = asyncio.get_running_loop()
        workers = device_server._KeyWorkers(key, 2, loop)
        results: dict[int, bytes | BaseException | None] = {}
        done = asyncio.Event()

        def collect(index: int) -> Callable[[bytes | BaseException | None], None]:
            def callback(outcome: bytes | BaseException | None) -> None:
                results[index] = outcome
                if len(results) == 2 * len(messages):
                    done.set()

            return callback

        for n, (message, digest) in enumerate(zip(messages, digests, strict=True)):
            workers.submit(collect(n), "decrypt", public.encrypt(message, padding.PKCS1v15()))
            workers.submit(collect(1000 + n), "sign", digest)
        await asyncio.wait_for(done.wait(), 30)
        workers.stop()
        return results

    results = asyncio.run(main())
    for n, (message, digest) in enumerate(zip(messages, digests, strict=True)):
        assert results[n] == message
        signature = results[1000 + n]
        assert isinstance(signature, bytes)
        assert public.recover_data_from_signature(signature, padding.PKCS1v15(), None) == digest


def test_cyan_sim_refuses_an_id_prefix_that_is_not_hex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare_data_directory(settings)
    argv = ["sim", "--data-dir", str(settings.data_dir), "--keys-dir", str(tmp_path / "keys"), "-n", "2"]
    assert cyan_cli([*argv, "--no-register", "--id-prefix", "zz"]) == 1
    assert "device id prefix 'zz' must be at most 16 lowercase hex digits" in capsys.readouterr().err


def test_cyan_sim_over_udp_refuses_a_firmware_it_does_not_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare_data_directory(settings)
    argv = ["sim", "--data-dir", str(settings.data_dir), "--protocol", "udp", "--firmware", "3.1.0", "-n", "1"]
    assert cyan_cli(argv) != 0
    assert "'3.1.0': over UDP, 4.0.2 or 2.3.1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["CYAN_WORKERS", "CYAN_DEVICE_PROCESSES", "CYAN_DEVICE_PORT", "CYAN_API_PORT"])
def test_a_number_setting_that_is_not_one_is_named(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "many")
    with pytest.raises(ValueError, match=f"{name} must be a whole number, not 'many'"):
        Settings.from_env()
