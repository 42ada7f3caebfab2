"""The fake `dfu-util` (fake_dfu_util.py beside this file) put first on PATH, and helpers to set it up."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cyan.keys import DctImage, Platform

FAKE = Path(__file__).with_name("fake_dfu_util.py")
PHOTON_ID = "3c002d000447343138333038"
P1_ID = "21003a000d47343233323032"
CORE_ID = "53ff6f065067544840160887"
ARGON_ID = "e00fce68a7e1f4b3c9d2a1b0"


@dataclass
class FakeDevice:
    usb_id: str
    serial: str
    image_path: Path

    @property
    def image(self) -> bytes:
        return self.image_path.read_bytes()

    @property
    def dct(self) -> DctImage:
        platform = Platform.from_usb_id(self.usb_id)
        assert platform is not None
        return DctImage(platform.layout, self.image)


class FakeDfu:
    """Devices in DFU mode, emulated over image files, and the log of every dfu-util call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(parents=True)
        self.state_path = root / "state.json"
        self.log_path = root / "calls.jsonl"
        self.log_path.touch()
        wrapper = self.bin_dir / "dfu-util"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self._save({"log": str(self.log_path), "devices": []})

    def _load(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_path.read_text())
        return data

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    def add(
        self,
        platform: Platform = Platform.PHOTON,
        *,
        serial: str | None = None,
        image: bytes | None = None,
        path: str | None = None,
        fail: str | None = None,
        other_lines: list[str] | None = None,
    ) -> FakeDevice:
        state = self._load()
        number = len(state["devices"])
        serial = (
            serial
            if serial is not None
            else {Platform.CORE: CORE_ID, Platform.P1: P1_ID, Platform.ARGON: ARGON_ID}.get(platform, PHOTON_ID)
        ).upper()
        data = image if image is not None else DctImage.blank(platform.layout, 16384).data
        image_path = self.root / f"device{number}.img"
        image_path.write_bytes(data)
        state["devices"].append(
            {
                "usb_id": platform.usb_id,
                "serial": serial,
                "path": path or f"1-{number + 1}",
                "devnum": 10 + number,
                "image": str(image_path),
                "in_dfu": True,
                "fail": fail,
                "other_lines": other_lines or [],
            }
        )
        self._save(state)
        return FakeDevice(platform.usb_id, serial, image_path)

    def set_fail(self, index: int, fail: str | None) -> None:
        state = self._load()
        state["devices"][index]["fail"] = fail
        self._save(state)

    def in_dfu(self, index: int) -> bool:
        return bool(self._load()["devices"][index]["in_dfu"])

    def calls(self) -> list[list[str]]:
        return [json.loads(line)["argv"] for line in self.log_path.read_text().splitlines() if line]

    def transfers(self) -> list[list[str]]:
        """The calls that read or wrote, with the temporary file names replaced by FILE."""
        out = []
        for argv in self.calls():
            if "-U" in argv or "-D" in argv:
                masked = list(argv)
                for flag in ("-U", "-D"):
                    if flag in masked:
                        masked[masked.index(flag) + 1] = "FILE"
                out.append(masked)
        return out

    def clear_log(self) -> None:
        self.log_path.write_text("")

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_DFU_STATE": str(self.state_path),
        }


@pytest.fixture
def fake_dfu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDfu:
    """A fake dfu-util first on PATH, with no device attached yet."""
    fake = FakeDfu(tmp_path / "fake-dfu")
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CYAN_DFU_UTIL", raising=False)
    return fake


# The `cyan keys` CLI helpers live beside the keys tests; the DFU command tests use them as well.
sys.path.insert(0, str(Path(__file__).parents[1] / "keys"))
