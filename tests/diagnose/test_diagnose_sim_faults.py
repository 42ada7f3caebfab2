"""The server side gives the right reason for each simulator fault: simulated devices with every fault run
against the service, and `cyan devices doctor` on the data directory says what each one has."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cyan.cli import main
from cyan.cloud.models import AttemptOutcome, DeviceRecord
from cyan.config import Settings
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fault, Fleet, SimConfig, VirtualDeviceSpec, registered_public_key
from cyan.testing import fixed_device_key

FAST = ServerConfig(identity_timeout=2.0, hello_timeout=1.0, request_timeout=2.0)
SIM = SimConfig(backoff_scale=0.02)
FAULTS = {
    Fault.AMNESIA: f"{0xB1:024x}",
    Fault.CORRUPT_KEY: f"{0xB2:024x}",
    Fault.NO_HELLO: f"{0xB3:024x}",
    Fault.DROP_MID_SESSION: f"{0xB4:024x}",
    Fault.BYTE_BY_BYTE: f"{0xB5:024x}",
    Fault.WRONG_SERVER_KEY: f"{0xB6:024x}",
    Fault.STALL_HANDSHAKE: f"{0xB7:024x}",
}
UNKNOWN = f"{0xBF:024x}"


Wanted = list[tuple[str | None, str, int]]


def _snapshot(database: Path, evidence: Path) -> None:
    """A consistent copy of the live database (SQLite's backup API), as a data directory of its own."""
    evidence.mkdir()
    source, copy = sqlite3.connect(database), sqlite3.connect(evidence / database.name)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def _serve(tmp_path: Path, faults: list[Fault], *, unknown: bool, wanted: Wanted) -> Path:
    """Run the service and the faulty fleet until, for each (device, reason, count) of `wanted`, the server
    recorded that many attempts (device None: unidentified; reason "connected": sessions); return a data
    directory holding the records as they were then.

    Not the records after the stop: stopping the fleet closes the socket of any device in the middle of a
    handshake, and the server rightly records that as the device's failure (closed_by_peer, or
    session_key_rejected when it comes right after our session key). Those records are the teardown's, not
    a fault's, and the devices reconnect all the time, so now and then one of them was mid-handshake at the
    stop and its doctor report held a reason its fault never causes.
    """
    data = tmp_path / "data"
    evidence = tmp_path / "evidence"

    async def run() -> None:
        settings = Settings(
            data_dir=data, device_host="127.0.0.1", device_port=0, device_udp_port=0, api_host="127.0.0.1", api_port=0
        )
        service = Service(settings, ensure_server_keys(settings), protocol=FAST)
        await service.start()
        specs = [
            VirtualDeviceSpec(FAULTS[f], fixed_device_key(n), fault=f, drop_after=0.05)
            for n, f in enumerate(faults, start=40)
        ]
        try:
            for spec in specs:
                der = public_key_der(registered_public_key(spec))
                # Every device used to connect from here (127.0.0.1) an hour ago.
                await service.store.devices.add(
                    DeviceRecord(
                        id=spec.device_id,
                        public_key_der=der,
                        key_fingerprint=fingerprint(der),
                        last_address="127.0.0.1:40000",
                        last_heard=datetime.now(UTC) - timedelta(hours=1),
                    )
                )
            if unknown:
                specs.append(VirtualDeviceSpec(UNKNOWN, fixed_device_key(39)))
            fleet = Fleet(specs, service.keys.private_key.public_key(), config=SIM)
            fleet.start("127.0.0.1", service.device_server.port)
            deadline = asyncio.get_running_loop().time() + 20
            try:
                while True:
                    await service.cloud.flush()
                    attempts = await service.store.attempts.recent(limit=5000)
                    counts = Counter(
                        (a.device_id, a.reason if a.outcome is AttemptOutcome.FAILED else "connected") for a in attempts
                    )
                    missing = [w for w in wanted if counts[(w[0], w[1])] < w[2]]
                    if not missing:
                        _snapshot(settings.database_path, evidence)
                        break
                    assert asyncio.get_running_loop().time() < deadline, f"still waiting for {missing}"
                    await asyncio.sleep(0.05)
            finally:
                await fleet.stop()
        finally:
            await service.stop()

    asyncio.run(run())
    return evidence


def _doctor(capsys: pytest.CaptureFixture[str], data: Path, device_id: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["devices", "doctor", device_id, "--data-dir", str(data), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def _first(report: dict[str, Any]) -> tuple[str | None, str | None, str]:
    finding = report["diagnosis"][0]
    return finding["entry"], finding["cause"], finding["confidence"]


def test_identified_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faults = [Fault.AMNESIA, Fault.CORRUPT_KEY, Fault.NO_HELLO, Fault.DROP_MID_SESSION, Fault.BYTE_BY_BYTE]
    wanted: Wanted = [
        (FAULTS[Fault.AMNESIA], "key_mismatch", 3),
        (FAULTS[Fault.CORRUPT_KEY], "session_key_rejected", 3),
        (FAULTS[Fault.NO_HELLO], "hello_timeout", 2),
        (FAULTS[Fault.DROP_MID_SESSION], "connected", 6),
        (FAULTS[Fault.BYTE_BY_BYTE], "connected", 1),
        (UNKNOWN, "unknown_device", 3),
    ]
    data = _serve(tmp_path, faults, unknown=True, wanted=wanted)

    amnesia = _doctor(capsys, data, FAULTS[Fault.AMNESIA])
    assert _first(amnesia) == ("C5", "amnesia", "confirmed"), amnesia
    assert amnesia["status"] == "failing"
    assert _first(_doctor(capsys, data, FAULTS[Fault.CORRUPT_KEY]))[:2] == ("C6", "corrupt_private_key")
    assert _first(_doctor(capsys, data, FAULTS[Fault.NO_HELLO]))[0] == "C8"
    churn = _doctor(capsys, data, FAULTS[Fault.DROP_MID_SESSION])
    assert set(churn["counts"]["by_reason"]) <= {"hello_timeout"}, churn
    assert churn["counts"]["connected"] >= 6, churn
    assert ("C12", "idle_timeout") in [(f["entry"], f["cause"]) for f in churn["diagnosis"]], churn
    assert any(loop["reason"] == "reconnect_churn" for loop in churn["loops"])
    healthy = _doctor(capsys, data, FAULTS[Fault.BYTE_BY_BYTE])
    assert healthy["counts"]["connected"] >= 1, healthy
    # Reassembled one byte at a time, nothing about keys (on a loaded machine a slow Hello may time out).
    assert set(healthy["counts"]["by_reason"]) <= {"hello_timeout"}, healthy
    stranger = _doctor(capsys, data, UNKNOWN)  # not registered, but its attempts are on record
    assert stranger["device"]["registered"] is False
    assert _first(stranger)[:2] == ("C5", "unknown_device")

    # Human output says it in words.
    capsys.readouterr()
    assert main(["devices", "doctor", FAULTS[Fault.AMNESIA], "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "What the server saw" in out
    assert "What to do" in out
    assert "key_mismatch" in out


def test_unidentified_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _serve(
        tmp_path,
        [Fault.WRONG_SERVER_KEY, Fault.STALL_HANDSHAKE],
        unknown=False,
        wanted=[(None, "nonce_mismatch", 3), (None, "nonce_timeout", 1)],
    )
    # Neither device can be identified; both are related to the address they were last seen at.
    wrong = _doctor(capsys, data, FAULTS[Fault.WRONG_SERVER_KEY])
    assert wrong["counts"]["attempts"] == 0
    assert _first(wrong) == ("C5", "wrong_server_key", "likely")
    stalled = _doctor(capsys, data, FAULTS[Fault.STALL_HANDSHAKE])
    entries = [(f["entry"], f["cause"]) for f in stalled["diagnosis"]]
    assert ("C4", "stalled") in entries  # sharing an address, the two cannot be told apart by it

    capsys.readouterr()
    assert main(["devices", "unidentified", "--data-dir", str(data), "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["host"] == "127.0.0.1"
    assert set(group["reasons"]) >= {"nonce_mismatch", "nonce_timeout"}  # and closed_by_peer at the stop
    assert {c["device_id"] for c in group["candidates"]} == {
        FAULTS[Fault.WRONG_SERVER_KEY],
        FAULTS[Fault.STALL_HANDSHAKE],
    }
