"""A stand-in for `dfu-util` (0.11) that emulates Gen 2 devices in DFU mode over image files.

Run as a program (the tests put a `dfu-util` wrapper first on PATH). Its state is a JSON file named by the
environment variable FAKE_DFU_STATE:

    {"log": "/path/calls.jsonl",
     "devices": [{"usb_id": "2b04:d006", "serial": "...", "path": "1-1", "devnum": 5,
                  "image": "/path/dct.bin", "in_dfu": true, "fail": null}]}

It accepts only the options Cyan may use (-l, -V, -d, -a, -i, -S, -p, -s, -U, -D) and refuses anything
else, alt settings other than 1, and addresses outside the image, so a wrong argument fails the test that
made it. Every call is appended to the log with its arguments and exit status. Messages and exit statuses
are the real program's: "No DFU capable USB device available" (74), "More than one DFU capable USB device
found! ..." (74), "Cannot open DFU device ..." (74), "Cannot open file ... for writing" (73, as -U never
overwrites), "File downloaded successfully" after a write.

`fail` makes a device misbehave: "access" (cannot be opened), "write_error" (every download fails),
"write_corrupt" (writes flipped bytes and says it succeeded), "leave_quirk" (a write with :leave succeeds but
dfu-util exits 74 after "File downloaded successfully", as with real devices that reset at once),
"read_once" (the first upload fails, later ones work), "short_read" (uploads return one byte less).
A write with :leave takes the device out of DFU mode, as the real one restarts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

EX_USAGE = 64
EX_CANTCREAT = 73
EX_IOERR = 74

BANNER = """dfu-util 0.11

Copyright 2005-2009 Weston Schmidt, Harald Welte and OpenMoko Inc.
Copyright 2010-2021 Tormod Volden and Stefan Schmidt
This program is Free Software and has ABSOLUTELY NO WARRANTY
Please report bugs to http://sourceforge.net/p/dfu-util/tickets/
"""

ALT_NAMES = {
    "2b04:d006": {
        0: "@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg",
        1: "@DCT Flash   /0x00000000/01*016Kg",
    },
    "2b04:d008": {
        0: "@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg",
        1: "@DCT Flash   /0x00000000/01*016Kg",
    },
    "1d50:607f": {0: "@Internal Flash  /0x08000000/20*001Ka,108*001Kg", 1: "@SPI Flash : SST25x/0x00000000/512*04Kg"},
    # The Electron (STM32F2, as the Photon) and the Gen 3 devices: their DCT is alt setting 1 as well.
    "2b04:d00a": {
        0: "@Internal Flash   /0x08000000/03*016Ka,01*016Kg,01*064Kg,07*128Kg",
        1: "@DCT Flash   /0x00000000/01*016Kg",
    },
    **{
        usb_id: {
            0: "@Internal Flash   /0x00000000/1*004Ka,47*004Kg,192*004Kg,4*004Kg,4*004Kg,8*004Ka",
            1: "@DCT Flash   /0x00000000/01*016Kg",
        }
        for usb_id in ("2b04:d00c", "2b04:d00d", "2b04:d00e")
    },
}
VALUE_OPTIONS = {"-d", "-a", "-i", "-S", "-p", "-s", "-U", "-D"}
FLAG_OPTIONS = {"-l", "-V"}


class Exit(Exception):
    def __init__(self, code: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(code)
        self.code, self.stdout, self.stderr = code, stdout, stderr


def load_state() -> tuple[Path, dict[str, Any]]:
    path = Path(os.environ["FAKE_DFU_STATE"])
    state: dict[str, Any] = json.loads(path.read_text())
    return path, state


def parse(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in FLAG_OPTIONS:
            options[arg] = ""
            i += 1
        elif arg in VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise Exit(EX_USAGE, stderr=f"dfu-util: option requires an argument -- '{arg[1:]}'\n")
            if arg in options:
                raise Exit(EX_USAGE, stderr=f"fake dfu-util: {arg} given twice\n")
            options[arg] = argv[i + 1]
            i += 2
        else:
            raise Exit(EX_USAGE, stderr=f"Error: Unexpected argument: {arg}\n")
    return options


def listing(devices: list[dict[str, Any]]) -> tuple[str, str]:
    out, err = [BANNER], []
    for dev in devices:
        if not dev.get("in_dfu", True):
            continue
        vid, pid = dev["usb_id"].split(":")
        if dev.get("fail") == "access":
            err.append(f"Cannot open DFU device {vid}:{pid} found on devnum {dev['devnum']} (LIBUSB_ERROR_ACCESS)")
            continue
        for alt, name in sorted(ALT_NAMES[dev["usb_id"]].items()):
            out.append(
                f'Found DFU: [{dev["usb_id"]}] ver=0200, devnum={dev["devnum"]}, cfg=1, intf=0, path="{dev["path"]}", '
                f'alt={alt}, name="{name}", serial="{dev["serial"]}"'
            )
    for line in devices[0].get("other_lines", []) if devices else []:
        out.append(line)
    return "\n".join(out) + "\n", "\n".join(err) + ("\n" if err else "")


def select(devices: list[dict[str, Any]], options: dict[str, str]) -> dict[str, Any]:
    found = [d for d in devices if d.get("in_dfu", True)]
    if "-d" in options:
        found = [d for d in found if d["usb_id"] == options["-d"].lower()]
    if "-S" in options:
        found = [d for d in found if d["serial"] == options["-S"]]
    if "-p" in options:
        found = [d for d in found if d["path"] == options["-p"]]
    if not found:
        raise Exit(EX_IOERR, BANNER, "dfu-util: No DFU capable USB device available\n")
    if len(found) > 1:
        raise Exit(
            EX_IOERR,
            BANNER,
            "dfu-util: More than one DFU capable USB device found! Try `--list' and specify the serial number "
            "or disconnect all but one device\n",
        )
    dev = found[0]
    if dev.get("fail") == "access":
        vid, pid = dev["usb_id"].split(":")
        raise Exit(
            EX_IOERR,
            BANNER,
            f"dfu-util: Cannot open DFU device {vid}:{pid} found on devnum {dev['devnum']} (LIBUSB_ERROR_ACCESS)\n",
        )
    return dev


def transfer(state_path: Path, state: dict[str, Any], options: dict[str, str]) -> str:
    if ("-U" in options) == ("-D" in options):
        raise Exit(EX_USAGE, stderr="fake dfu-util: give exactly one of -U and -D\n")
    if options.get("-a") != "1":
        raise Exit(
            EX_USAGE, stderr=f"fake dfu-util: only alt setting 1 (keys) is emulated, got -a {options.get('-a')}\n"
        )
    if "-i" in options and options["-i"] != "0":
        raise Exit(EX_USAGE, stderr="fake dfu-util: interface must be 0\n")
    if "-s" not in options:
        raise Exit(EX_USAGE, stderr="fake dfu-util: -s ADDRESS is required for a DfuSe device\n")
    dev = select(state["devices"], options)
    parts = options["-s"].split(":")
    address = int(parts[0], 0)
    leave = "leave" in parts[1:]
    lengths = [p for p in parts[1:] if p != "leave"]
    image_path = Path(dev["image"])
    image = bytearray(image_path.read_bytes())
    head = f"{BANNER}Opening DFU capable USB device...\nDevice ID {dev['usb_id']}\nDevice DFU version 011a\n"
    fail = dev.get("fail")
    if "-U" in options:
        if len(lengths) != 1:
            raise Exit(EX_USAGE, stderr="fake dfu-util: an upload must give ADDRESS:LENGTH\n")
        length = int(lengths[0], 0)
        if address + length > len(image):
            raise Exit(EX_IOERR, head, f"dfu-util: Page at 0x{address + length:08x} is not readable\n")
        target = Path(options["-U"])
        if target.exists():
            raise Exit(EX_CANTCREAT, head, f"dfu-util: Cannot open file {target} for writing\n")
        if fail == "read_once":
            dev["fail"] = None
            state_path.write_text(json.dumps(state))
            raise Exit(EX_IOERR, head, "dfu-util: Error during upload (LIBUSB_ERROR_PIPE)\n")
        data = bytes(image[address : address + length])
        if fail == "short_read":
            data = data[:-1]
        target.write_bytes(data)
        return f"{head}Upload\t[=========================] 100%  {len(data)} bytes\nUpload done.\n"
    if lengths:
        raise Exit(EX_USAGE, stderr="fake dfu-util: a download takes no length\n")
    data = Path(options["-D"]).read_bytes()
    if address + len(data) > len(image):
        raise Exit(EX_IOERR, head, f"dfu-util: Last page at 0x{address + len(data) - 1:08x} is not writeable\n")
    if dev["usb_id"] == "1d50:607f" and len(data) % 2:
        raise Exit(EX_IOERR, head, "fake dfu-util: the Core's external flash takes an even number of bytes\n")
    if fail == "write_error":
        raise Exit(
            EX_IOERR,
            head + "Download\t[=====                    ]  20%\n",
            "dfu-util: Error during download get_status\n",
        )
    if fail == "write_corrupt":
        data = bytes(b ^ 0x5A for b in data)
    image[address : address + len(data)] = data
    image_path.write_bytes(bytes(image))
    out = f"{head}Download\t[=========================] 100%  {len(data)} bytes\nDownload done.\n"
    out += "File downloaded successfully\n"
    if leave:
        dev["in_dfu"] = False
        state_path.write_text(json.dumps(state))
        out += "Submitting leave request...\nTransitioning to dfuMANIFEST state\n"
        if fail == "leave_quirk":
            raise Exit(EX_IOERR, out, "dfu-util: Error during download get_status\n")
    return out


def run(argv: list[str]) -> int:
    state_path, state = load_state()
    code, stdout, stderr = 0, "", ""
    try:
        options = parse(argv)
        if "-V" in options:
            stdout = BANNER
        elif "-l" in options:
            stdout, stderr = listing(state["devices"])
        else:
            stdout = transfer(state_path, state, options)
    except Exit as exc:
        code, stdout, stderr = exc.code, exc.stdout, exc.stderr
    with open(state["log"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "rc": code}) + "\n")
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
