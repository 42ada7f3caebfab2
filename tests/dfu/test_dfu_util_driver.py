"""cyan.dfu drives dfu-util with the Particle CLI's arguments, against the fake dfu-util (fake_dfu_util.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dfu_support import CORE_ID, P1_ID, PHOTON_ID, FakeDfu, fake_dfu

from cyan.dfu import (
    DfuAccessError,
    DfuError,
    DfuTransferError,
    DfuUtil,
    DfuUtilMissingError,
    NoDfuDeviceError,
    SeveralDfuDevicesError,
    WrongDeviceError,
    parse_list,
)
from cyan.keys import Layout, Platform, key_layout

__all__ = ["fake_dfu"]

PHOTON = key_layout(Layout.PHOTON)
CORE = key_layout(Layout.CORE)

REAL_LIST = """dfu-util 0.11

Copyright 2005-2009 Weston Schmidt, Harald Welte and OpenMoko Inc.
Found DFU: [2b04:d006] ver=0200, devnum=12, cfg=1, intf=0, path="1-1.2", alt=1, name="@DCT Flash   /0x00000000/01*016Kg", serial="3C002D000447343138333038"
Found DFU: [2b04:d006] ver=0200, devnum=12, cfg=1, intf=0, path="1-1.2", alt=0, name="@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg", serial="3C002D000447343138333038"
Found DFU: [0483:df11] ver=2200, devnum=7, cfg=1, intf=0, path="1-3", alt=0, name="@Internal Flash  /0x08000000/04*016Kg", serial="205F34A1"
Found Runtime: [2b04:c006] ver=0250, devnum=9, cfg=1, intf=2, path="1-4", alt=0, name="UNKNOWN", serial="UNKNOWN"
"""  # noqa: E501


def test_parse_list_groups_alt_settings_and_keeps_only_gen2_devices() -> None:
    devices, others = parse_list(REAL_LIST)
    assert len(devices) == 1
    photon = devices[0]
    assert (photon.platform, photon.usb_id, photon.devnum, photon.path) == (Platform.PHOTON, "2b04:d006", 12, "1-1.2")
    assert photon.device_id == PHOTON_ID
    assert sorted(photon.alts) == [0, 1]
    assert photon.alts[1].startswith("@DCT Flash")
    assert photon.select_arguments() == ["-d", "2b04:d006"]
    assert len(others) == 2


def test_read_uses_the_cli_arguments_and_returns_the_area(fake_dfu: FakeDfu) -> None:
    image = bytearray(16384)
    image[34 : 34 + 612] = bytes(range(256)) * 2 + bytes(100)
    fake_dfu.add(Platform.PHOTON, image=bytes(image))
    dfu = DfuUtil()
    device = dfu.find()
    assert dfu.read(device, PHOTON.private_key) == bytes(image[34:646])
    assert dfu.read(device, PHOTON.server_key) == bytes(image[2082:2594])
    assert fake_dfu.calls()[0] == ["-l"]
    assert fake_dfu.transfers() == [
        ["-d", "2b04:d006", "-a", "1", "-s", "34:612", "-U", "FILE"],
        ["-d", "2b04:d006", "-a", "1", "-s", "2082:512", "-U", "FILE"],
    ]


def test_write_uses_the_cli_arguments(fake_dfu: FakeDfu) -> None:
    fake = fake_dfu.add(Platform.P1)
    dfu = DfuUtil()
    device = dfu.find(P1_ID)
    dfu.write(device, PHOTON.server_key, b"\x30" * 512)
    dfu.write(device, PHOTON.private_key, b"\x30\x82" + b"\x01" * 606, leave=True)
    assert fake_dfu.transfers() == [
        ["-d", "2b04:d008", "-a", "1", "-i", "0", "-s", "2082", "-D", "FILE"],
        ["-d", "2b04:d008", "-a", "1", "-i", "0", "-s", "34:leave", "-D", "FILE"],
    ]
    assert fake.image[2082:2594] == b"\x30" * 512
    assert fake.image[34:642] == b"\x30\x82" + b"\x01" * 606
    assert fake.image[642:646] == b"\xff" * 4  # the rest of the area is left as it was
    assert not fake_dfu.in_dfu(0)  # :leave restarted it


def test_core_writes_are_padded_to_an_even_length(fake_dfu: FakeDfu) -> None:
    fake = fake_dfu.add(Platform.CORE)
    dfu = DfuUtil()
    device = dfu.find()
    assert device.platform is Platform.CORE
    dfu.write(device, CORE.private_key, b"\x30" * 607)
    assert fake_dfu.transfers() == [["-d", "1d50:607f", "-a", "1", "-i", "0", "-s", "8192", "-D", "FILE"]]
    assert fake.image[0x2000 : 0x2000 + 608] == b"\x30" * 607 + b"\x00"
    assert dfu.read(device, CORE.server_key) == b"\xff" * 2048
    assert fake_dfu.transfers()[-1] == ["-d", "1d50:607f", "-a", "1", "-s", "4096:2048", "-U", "FILE"]


def test_find_chooses_by_device_id_among_several(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, serial=PHOTON_ID)
    fake_dfu.add(Platform.PHOTON, serial="1e0032000447343337373738")
    fake_dfu.add(Platform.CORE)
    dfu = DfuUtil()
    with pytest.raises(SeveralDfuDevicesError, match="3 devices are in DFU mode") as info:
        dfu.find()
    assert "--device" in info.value.hint
    device = dfu.find(PHOTON_ID.upper())
    assert device.ambiguous
    dfu.read(device, PHOTON.private_key)
    dfu.write(device, PHOTON.private_key, b"\x30\x82")
    serial = PHOTON_ID.upper()
    assert fake_dfu.transfers() == [
        ["-d", "2b04:d006", "-S", serial, "-a", "1", "-s", "34:612", "-U", "FILE"],
        ["-d", "2b04:d006", "-a", "1", "-i", "0", "-s", "34", "-D", "FILE", "-S", serial],
    ]
    core = dfu.find(CORE_ID)
    assert core.select_arguments() == ["-d", "1d50:607f"]  # the only Core: no -S needed
    with pytest.raises(WrongDeviceError, match="device 000000000000000000000000 is not in DFU mode here"):
        dfu.find("0" * 24)


def test_twins_without_serial_are_told_apart_by_path(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, serial="", path="1-1")
    fake_dfu.add(Platform.PHOTON, serial="", path="1-2")
    dfu = DfuUtil()
    with pytest.raises(SeveralDfuDevicesError):
        dfu.find()
    device = dfu.list()[1]
    assert device.device_id is None
    assert device.select_arguments() == ["-d", "2b04:d006", "-p", "1-2"]
    dfu.read(device, PHOTON.private_key)
    assert fake_dfu.transfers() == [["-d", "2b04:d006", "-p", "1-2", "-a", "1", "-s", "34:612", "-U", "FILE"]]


def test_a_lone_device_with_another_id_is_refused(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON)
    with pytest.raises(WrongDeviceError, match=rf"attached: Photon \[2b04:d006\] {PHOTON_ID}"):
        DfuUtil().find(P1_ID)


def test_a_lone_device_without_id_in_its_serial_is_accepted(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, serial="00000000010C")
    device = DfuUtil().find(PHOTON_ID)
    assert device.device_id is None


def test_no_device(fake_dfu: FakeDfu) -> None:
    dfu = DfuUtil()
    assert dfu.list() == []
    with pytest.raises(NoDfuDeviceError, match="no Photon, P1 or Spark Core in DFU mode") as info:
        dfu.find()
    assert "blinks yellow" in info.value.hint


def test_only_other_devices_are_named_in_the_message(fake_dfu: FakeDfu) -> None:
    runtime = (
        'Found Runtime: [2b04:c006] ver=0250, devnum=9, cfg=1, intf=2, path="1-4", alt=0, name="UNKNOWN", serial=""'
    )
    fake_dfu.add(Platform.PHOTON, other_lines=[runtime])
    dfu = DfuUtil()
    dfu.write(dfu.find(), PHOTON.server_key, b"\x30", leave=True)  # restarts: out of DFU mode
    with pytest.raises(NoDfuDeviceError, match=r"dfu-util lists only: Found Runtime: \[2b04:c006\]"):
        dfu.find()


def test_device_gone_between_list_and_transfer(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON)
    dfu = DfuUtil()
    device = dfu.find()
    dfu.write(device, PHOTON.server_key, b"\x30" * 10, leave=True)
    with pytest.raises(NoDfuDeviceError, match="found no device in DFU mode"):
        dfu.read(device, PHOTON.server_key)


def test_permission_problem(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, fail="access")
    with pytest.raises(DfuAccessError, match="cannot open") as info:
        DfuUtil().find()
    assert "udev" in info.value.hint


def test_write_failure_is_reported_with_dfu_util_output(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, fail="write_error")
    dfu = DfuUtil()
    device = dfu.find()
    with pytest.raises(DfuTransferError, match=r"writing the server key \(512 bytes at 2082, alt 1\)") as info:
        dfu.write(device, PHOTON.server_key, b"\x30" * 512)
    assert "Error during download get_status" in str(info.value)


def test_leave_quirk_counts_as_written(fake_dfu: FakeDfu) -> None:
    fake = fake_dfu.add(Platform.PHOTON, fail="leave_quirk")
    dfu = DfuUtil()
    dfu.write(dfu.find(), PHOTON.server_key, b"\x30" * 512, leave=True)
    assert fake.image[2082:2594] == b"\x30" * 512


def test_first_read_failure_is_retried_once(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, fail="read_once")
    dfu = DfuUtil()
    assert dfu.read(dfu.find(), PHOTON.private_key) == b"\xff" * 612
    assert len(fake_dfu.transfers()) == 2


def test_short_read_is_an_error(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON, fail="short_read")
    dfu = DfuUtil()
    with pytest.raises(DfuTransferError, match="returned 611 bytes of the device private key, expected 612"):
        dfu.read(dfu.find(), PHOTON.private_key)


def test_refuses_oversized_and_empty_writes(fake_dfu: FakeDfu) -> None:
    fake_dfu.add(Platform.PHOTON)
    dfu = DfuUtil()
    device = dfu.find()
    with pytest.raises(DfuError, match="613 bytes do not fit the 612-byte device private key area"):
        dfu.write(device, PHOTON.private_key, b"\x30" * 613)
    with pytest.raises(DfuError, match="nothing to write"):
        dfu.write(device, PHOTON.private_key, b"")
    assert fake_dfu.transfers() == []


def test_missing_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DfuUtilMissingError, match="dfu-util not found") as info:
        DfuUtil().list()
    assert "apt-get install dfu-util" in info.value.hint
    monkeypatch.setenv("CYAN_DFU_UTIL", str(tmp_path / "nowhere" / "dfu-util"))
    with pytest.raises(DfuUtilMissingError, match="nowhere"):
        DfuUtil().version()


def test_a_hanging_dfu_util_times_out(tmp_path: Path) -> None:
    slow = tmp_path / "dfu-util"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    fake_device = parse_list(REAL_LIST)[0][0]
    with pytest.raises(DfuTransferError, match="did not finish in 0 s"):
        DfuUtil(str(slow), timeout=0.2).read(fake_device, PHOTON.private_key)


def test_the_real_dfu_util_runs() -> None:
    """The Debian package, where it is installed: CI must have it (apt-get install dfu-util)."""
    binary = shutil.which("dfu-util")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("dfu-util is not installed; CI must install the Debian package dfu-util")
        pytest.skip("dfu-util is not installed (apt-get install dfu-util)")
    dfu = DfuUtil(binary)
    assert dfu.version().startswith("dfu-util ")
    # No USB device here: the listing parses to nothing, and a read says there is no device.
    assert dfu.list() == []
    with pytest.raises(NoDfuDeviceError):
        dfu.find()
    # The message the driver recognises is the one this dfu-util prints.
    done = subprocess.run(
        [binary, "-d", "2b04:d006", "-a", "1", "-s", "34:612", "-U", "/nonexistent/upload.bin"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "No DFU capable USB device available" in done.stderr
