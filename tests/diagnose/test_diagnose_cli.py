"""`cyan diagnose` and `cyan devices doctor|unidentified` end to end through `cyan.cli.main`."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from diagnose_support import DEVICE, LOGS, attempt, recording

from cyan.cli import main
from cyan.cloud.models import DeviceRecord
from cyan.store import SqliteStore


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "diagnose", str(LOGS / "c05_forum_type255.log"))
    assert code == 0, err
    assert "C5  The cloud refused the device" in out
    assert "Causes, likeliest first:" in out
    assert "fix:" in out
    # Log lines are printed as they are: "[system]" is not taken for markup.
    assert "[system] WARN: Read Server Address = type:255" in out
    assert "2 connection attempt(s): 2 failed" in " ".join(out.split())


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diagnose", "--json", str(recording("device-os-3.1.0/bad_signature")))
    assert code == 0
    body = json.loads(out)
    assert body["schema"] == "cyan.diagnose/1"
    assert body["summary"]["stopped_at"] == "S6"
    assert body["summary"]["top_finding"] == "C7"
    assert body["source"]["device_id"] == DEVICE


def test_standard_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = (LOGS / "c10_dns.log").read_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = _run(capsys, "diagnose", "--json")
    assert code == 0
    body = json.loads(out)
    assert (body["source"]["name"], body["summary"]["top_finding"]) == ("<stdin>", "C10")
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = _run(capsys, "diagnose", "-")
    assert code == 0
    assert "C10" in out


def test_leds_and_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diagnose", "--led", "fast cyan, 1 orange blink", "--code", "-19", "--code", "sos 13")
    assert code == 0
    assert "Fast cyan with one orange burst" in out
    assert "WICED_CONNECTION_CLOSED" in out
    assert "stack overflow" in out
    code, out, _ = _run(capsys, "diagnose", "--json", "--led", "dim blue D7", "--code", "bogus")
    body = json.loads(out)
    assert body["findings"][0]["id"] == "C14"
    assert body["codes"] == [{"input": "bogus", "readings": []}]
    assert body["attempts"] == []
    assert body["source"]["name"] is None


def test_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diagnose", "--catalog")
    assert code == 0
    assert all(f"C{n}  " in out for n in range(1, 18))
    code, out, _ = _run(capsys, "diagnose", "--catalog", "--json")
    entries = json.loads(out)
    assert [e["id"] for e in entries] == [f"C{n}" for n in range(1, 18)]


def test_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal())
    code, _, err = _run(capsys, "diagnose")
    assert code == 2
    assert "give a device log" in err
    code, _, err = _run(capsys, "diagnose", "no-such.log")
    assert code == 1
    assert "error:" in err
    assert "hint: check the path" in err
    log = str(LOGS / "c02_no_internet.log")  # names no device
    code, _, err = _run(capsys, "diagnose", log, "--server", "http://127.0.0.1:9", "--token", "t")
    assert code == 2
    assert "--device" in err
    code, _, err = _run(capsys, "diagnose", log, "--server", "http://127.0.0.1:9", "--device", DEVICE, "--at", "soon")
    assert code == 2
    assert "ISO 8601" in err
    code, _, err = _run(capsys, "diagnose", log, "--server", "http://127.0.0.1:9", "--token", "t", "--device", DEVICE)
    assert code == 1
    assert "cannot reach" in err
    assert "hint:" in err


def _data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()

    async def seed() -> None:
        store = SqliteStore(data / "cyan.db")
        await store.open()
        try:
            heard = datetime.now(UTC) - timedelta(minutes=30)
            await store.devices.add(
                DeviceRecord(id=DEVICE, name="kitchen", last_address="198.51.100.7:40001", last_heard=heard)
            )
            now = datetime.now(UTC)
            for n in range(6):
                record = attempt(0, "nonce_mismatch")
                record.started_at = now - timedelta(minutes=10) + timedelta(seconds=20 * n)
                await store.attempts.add([record])
        finally:
            await store.close()

    asyncio.run(seed())
    return data


def test_devices_doctor_and_unidentified_on_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(_data_dir(tmp_path))
    code, out, err = _run(capsys, "devices", "doctor", "kitchen", "--data-dir", data, "--json", "--since", "24h")
    assert code == 0, err
    report = json.loads(out)
    assert report["device"]["id"] == DEVICE
    assert (report["diagnosis"][0]["entry"], report["diagnosis"][0]["cause"]) == ("C5", "wrong_server_key")
    code, out, _ = _run(capsys, "devices", "doctor", "kitchen", "--data-dir", data)
    assert code == 0
    assert "wrong_server_key" not in out
    assert "another server public key" in " ".join(out.split())
    code, _, err = _run(capsys, "devices", "doctor", "nobody", "--data-dir", data)
    assert code == 1
    assert "no device 'nobody'" in err
    code, _, err = _run(capsys, "devices", "doctor", "kitchen", "--data-dir", data, "--since", "last week")
    assert code == 2
    assert "24h" in err
    code, out, _ = _run(capsys, "devices", "unidentified", "--data-dir", data)
    assert code == 0
    assert "198.51.100.7: 6 attempt(s) (a loop)" in out
    assert "kitchen" in out
    code, out, _ = _run(capsys, "devices", "unidentified", "--data-dir", data, "--since", "1m")
    assert code == 0
    assert "No unidentified failed attempts" in out
