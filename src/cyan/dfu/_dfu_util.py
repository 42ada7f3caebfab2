"""Driving ``dfu-util`` (the Debian package) as a subprocess, with the arguments the Particle CLI used.

particle-cli drove dfu-util until 3.15 (``src/lib/dfu.js``; later releases talk USB themselves with the
same addresses and sizes from ``keys-specs.js``):

* list: ``dfu-util -l``, keeping the ``Found DFU: [vid:pid] ...`` lines of known devices;
* read: ``dfu-util -d VID:PID -a ALT -s ADDR:SIZE -U FILE``;
* write: ``dfu-util -d VID:PID -a ALT -i 0 -s ADDR[:leave] -D FILE`` (``-S SERIAL`` to pick one of several);
  a write counts as done when dfu-util printed ``File downloaded successfully``, even if it then exits
  non-zero because the device reset on ``:leave``;
* a Core (``writePadding: 2``) is written an even number of bytes: an odd file gets one zero byte appended.

The key areas are those of protocol.md §11 (alt setting 1). Every failure becomes a :class:`DfuError`
whose message says what happened and whose ``hint`` says what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cyan.keys import KeyArea, Platform

__all__ = [
    "DFU_MODE_HELP",
    "DfuAccessError",
    "DfuDevice",
    "DfuError",
    "DfuTransferError",
    "DfuUtil",
    "DfuUtilMissingError",
    "NoDfuDeviceError",
    "SeveralDfuDevicesError",
    "WrongDeviceError",
    "parse_list",
]

#: How to put a Gen 2 device into DFU mode (the Particle CLI prints the same steps).
DFU_MODE_HELP = (
    "put the device in DFU mode: hold MODE/SETUP, press and release RESET, and let go of MODE/SETUP when the "
    "LED blinks yellow; then check `dfu-util -l` lists it"
)
_INSTALL_HINT = "install it with `apt-get install dfu-util` (Debian/Ubuntu), or set CYAN_DFU_UTIL to its path"
_ACCESS_HINT = (
    "this user may not open the USB device: add a udev rule for vendors 2b04 and 1d50 "
    '(SUBSYSTEMS=="usb", ATTRS{idVendor}=="2b04", MODE="0666"), or run as root'
)
_FOUND = re.compile(
    r"^Found (?P<kind>DFU|Runtime): \[(?P<usb>[0-9a-fA-F]{4}:[0-9a-fA-F]{4})\] .*?devnum=(?P<devnum>\d+), "
    r'.*?path="(?P<path>[^"]*)", alt=(?P<alt>\d+), name="(?P<name>[^"]*)", serial="(?P<serial>[^"]*)"'
)
_DEVICE_ID = re.compile(r"[0-9a-fA-F]{24}")
_DOWNLOADED = "File downloaded successfully"
_NO_DEVICE = "No DFU capable USB device available"
_SEVERAL = "More than one DFU capable USB device found"
_CANNOT_OPEN = ("Cannot open DFU device", "LIBUSB_ERROR_ACCESS", "Cannot open device")
_LIST_TIMEOUT = 10.0
_TRANSFER_TIMEOUT = 60.0


class DfuError(Exception):
    """A DFU operation that did not happen; ``hint`` says what to do about it."""

    hint = "run `dfu-util -l` to see what is attached"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class DfuUtilMissingError(DfuError):
    hint = _INSTALL_HINT


class NoDfuDeviceError(DfuError):
    hint = DFU_MODE_HELP


class SeveralDfuDevicesError(DfuError):
    hint = "give the device id (--device ID) to choose one, or unplug the others"


class WrongDeviceError(DfuError):
    hint = "check which device is plugged in: its id is in `dfu-util -l` (serial=...)"


class DfuAccessError(DfuError):
    hint = _ACCESS_HINT


class DfuTransferError(DfuError):
    hint = "check the USB cable and that the device still blinks yellow (DFU mode), then try again"


@dataclass(frozen=True)
class DfuDevice:
    """One Gen 2 device in DFU mode, as ``dfu-util -l`` lists it (one line per alt setting)."""

    platform: Platform
    usb_id: str
    devnum: int
    path: str
    serial: str
    alts: dict[int, str] = field(default_factory=dict)
    #: Set when another attached device has the same VID:PID, so dfu-util must be told which one.
    ambiguous: bool = False

    @property
    def device_id(self) -> str | None:
        """The device id when the USB serial carries it (Device OS sets it; very old bootloaders may not)."""
        found = _DEVICE_ID.search(self.serial)
        return found.group(0).lower() if found else None

    def describe(self) -> str:
        ident = self.device_id or (f"serial {self.serial}" if self.serial else "no serial")
        return f"{self.platform.display_name} [{self.usb_id}] {ident} at USB path {self.path}"

    def select_arguments(self) -> list[str]:
        """``-d`` always; ``-S`` (or ``-p`` without a serial) when another device has the same VID:PID."""
        arguments = ["-d", self.usb_id]
        if self.ambiguous:
            arguments += ["-S", self.serial] if self.serial else ["-p", self.path]
        return arguments


@dataclass
class _Listed:
    platform: Platform
    serial: str
    alts: dict[int, str] = field(default_factory=dict)


def parse_list(output: str) -> tuple[list[DfuDevice], list[str]]:
    """The Gen 2 devices in ``dfu-util -l`` output, and the other lines that name devices (for messages)."""
    found: dict[tuple[str, str, int], _Listed] = {}
    others: list[str] = []
    for line in output.splitlines():
        match = _FOUND.match(line.strip())
        if match is None:
            continue
        usb_id = match["usb"].lower()
        platform = Platform.from_usb_id(usb_id)
        if platform is None or match["kind"] != "DFU":
            others.append(line.strip())
            continue
        listed = found.setdefault((usb_id, match["path"], int(match["devnum"])), _Listed(platform, match["serial"]))
        listed.alts[int(match["alt"])] = match["name"]
    devices = []
    for (usb_id, path, devnum), listed in found.items():
        twins = sum(1 for other in found if other[0] == usb_id)
        devices.append(
            DfuDevice(listed.platform, usb_id, devnum, path, listed.serial, dict(listed.alts), ambiguous=twins > 1)
        )
    return devices, others


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}"

    def tail(self, lines: int = 6) -> str:
        text = [line for line in self.output.splitlines() if line.strip() and not line.startswith("Copyright")]
        return "\n".join(text[-lines:])


class DfuUtil:
    """The ``dfu-util`` program. ``binary`` defaults to env CYAN_DFU_UTIL, else ``dfu-util`` on PATH."""

    def __init__(self, binary: str | None = None, *, timeout: float = _TRANSFER_TIMEOUT) -> None:
        self.binary = binary or os.environ.get("CYAN_DFU_UTIL") or "dfu-util"
        self.timeout = timeout

    # -- running -------------------------------------------------------------------------------------------

    def _resolve(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise DfuUtilMissingError(f"{self.binary} not found: reading and writing keys over USB needs dfu-util")
        return found

    def _run(self, arguments: Sequence[str], *, timeout: float) -> _Run:
        binary = self._resolve()
        try:
            done = subprocess.run(
                [binary, *arguments],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise DfuUtilMissingError(f"{self.binary} could not be started: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DfuTransferError(
                f"dfu-util {' '.join(arguments)} did not finish in {timeout:.0f} s",
                "unplug and re-plug the device, put it back in DFU mode and try again",
            ) from exc
        return _Run(done.returncode, done.stdout, done.stderr)

    @staticmethod
    def _raise_for_device_errors(run: _Run, device: DfuDevice | None) -> None:
        output = run.output
        what = device.describe() if device else "the device"
        if _NO_DEVICE in output:
            raise NoDfuDeviceError(f"dfu-util found no device in DFU mode (looking for {what})")
        if _SEVERAL in output:
            raise SeveralDfuDevicesError(f"dfu-util found more than one device matching {what}")
        if any(marker in output for marker in _CANNOT_OPEN):
            raise DfuAccessError(f"dfu-util cannot open {what}: {run.tail(2)}")

    def version(self) -> str:
        """The first line of ``dfu-util -V``, e.g. ``dfu-util 0.11``."""
        run = self._run(["-V"], timeout=_LIST_TIMEOUT)
        if run.returncode != 0:
            raise DfuError(f"`{self.binary} -V` failed: {run.tail()}")
        return next((line.strip() for line in run.stdout.splitlines() if line.strip()), "dfu-util")

    # -- finding the device -------------------------------------------------------------------------------

    def list(self) -> list[DfuDevice]:
        """The Photons, P1s and Cores in DFU mode."""
        run = self._run(["-l"], timeout=_LIST_TIMEOUT)
        if run.returncode != 0:
            self._raise_for_device_errors(run, None)
            raise DfuError(f"`dfu-util -l` failed (exit {run.returncode}): {run.tail()}")
        devices, _ = parse_list(run.stdout)
        if not devices and any(marker in run.output for marker in _CANNOT_OPEN):
            raise DfuAccessError(f"dfu-util sees a DFU device but cannot open it: {run.tail(2)}")
        return devices

    def find(self, device_id: str | None = None) -> DfuDevice:
        """The one device to work on: the only Gen 2 device in DFU mode, or the one whose serial is
        ``device_id``. Refuses a lone device whose serial names another id (keys are per device)."""
        run = self._run(["-l"], timeout=_LIST_TIMEOUT)
        devices, others = parse_list(run.stdout)
        if not devices:
            if run.returncode != 0 and not any(marker in run.output for marker in _CANNOT_OPEN):
                raise DfuError(f"`dfu-util -l` failed (exit {run.returncode}): {run.tail()}")
            if any(marker in run.output for marker in _CANNOT_OPEN):
                raise DfuAccessError(f"dfu-util sees a DFU device but cannot open it: {run.tail(2)}")
            seen = f" (dfu-util lists only: {'; '.join(others)})" if others else ""
            raise NoDfuDeviceError(f"no Photon, P1 or Spark Core in DFU mode is attached{seen}")
        wanted = device_id.lower() if device_id else None
        if wanted is not None:
            matching = [d for d in devices if d.device_id == wanted]
            if matching:
                return matching[0]
            if len(devices) == 1 and devices[0].device_id is None:
                # Old bootloaders do not put the id in the serial: the caller is told it is unconfirmed.
                return devices[0]
            listed = ", ".join(d.describe() for d in devices)
            raise WrongDeviceError(f"device {wanted} is not in DFU mode here; attached: {listed}")
        if len(devices) > 1:
            listed = "; ".join(d.describe() for d in devices)
            raise SeveralDfuDevicesError(f"{len(devices)} devices are in DFU mode: {listed}")
        return devices[0]

    # -- reading and writing -------------------------------------------------------------------------------

    def read(self, device: DfuDevice, area: KeyArea) -> bytes:
        """``dfu-util -d VID:PID -a ALT -s ADDR:SIZE -U FILE``; retried once, as the Particle CLI does (the
        first read after entering DFU mode sometimes fails)."""
        try:
            return self._read_once(device, area)
        except (NoDfuDeviceError, SeveralDfuDevicesError, DfuAccessError, DfuUtilMissingError):
            raise
        except DfuError:
            return self._read_once(device, area)

    def _read_once(self, device: DfuDevice, area: KeyArea) -> bytes:
        # dfu-util refuses to upload into an existing file, and the data may be a private key: a fresh
        # owner-only directory, removed afterwards.
        with tempfile.TemporaryDirectory(prefix="cyan-dfu-") as directory:
            target = Path(directory) / "upload.bin"
            arguments = [
                *device.select_arguments(),
                "-a",
                str(area.alt),
                "-s",
                f"{area.address}:{area.size}",
                "-U",
                str(target),
            ]
            run = self._run(arguments, timeout=self.timeout)
            self._raise_for_device_errors(run, device)
            if run.returncode != 0 or not target.exists():
                raise DfuTransferError(
                    f"reading the {area.name} ({area.size} bytes at {area.address}, alt {area.alt}) from "
                    f"{device.describe()} failed (exit {run.returncode}): {run.tail()}"
                )
            data = target.read_bytes()
        if len(data) != area.size:
            raise DfuTransferError(
                f"dfu-util returned {len(data)} bytes of the {area.name}, expected {area.size}: {run.tail(2)}"
            )
        return data

    def write(self, device: DfuDevice, area: KeyArea, data: bytes, *, leave: bool = False) -> None:
        """``dfu-util -d VID:PID -a ALT -i 0 -s ADDR[:leave] -D FILE``; ``leave`` restarts the device after."""
        if not data:
            raise DfuError(f"nothing to write to the {area.name}")
        if device.platform is Platform.CORE and len(data) % 2:
            data += b"\x00"  # particle-cli device-specs.js: the Core needs writes of an even length
        if len(data) > area.size:
            raise DfuError(f"{len(data)} bytes do not fit the {area.size}-byte {area.name} area")
        with tempfile.TemporaryDirectory(prefix="cyan-dfu-") as directory:
            source = Path(directory) / "download.bin"
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            arguments = [
                *device.select_arguments()[:2],
                "-a",
                str(area.alt),
                "-i",
                "0",
                "-s",
                f"{area.address}{':leave' if leave else ''}",
                "-D",
                str(source),
                *device.select_arguments()[2:],
            ]
            run = self._run(arguments, timeout=self.timeout)
        if run.returncode == 0 or _DOWNLOADED in run.stdout:
            return
        self._raise_for_device_errors(run, device)
        raise DfuTransferError(
            f"writing the {area.name} ({len(data)} bytes at {area.address}, alt {area.alt}) to "
            f"{device.describe()} failed (exit {run.returncode}): {run.tail()}"
        )
