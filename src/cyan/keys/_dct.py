"""Where the keys live on a device, reached over USB DFU alt setting 1 (protocol.md §11).

A Photon or P1 keeps its keys in the application DCT, and the DFU address of alt setting 1 is the offset in
that table: the device private key at 34 (612 bytes), the public key the firmware derives from it at 1250,
and the server-key region at 2082 (512 bytes: server key, fill, address block). The Electron and the Gen 3
devices (Argon, Boron, Xenon) reach the cloud over UDP with P-256 keys kept in the same table's `alt_*`
fields: the device private key at 3106 (192 bytes, SEC1 DER) and the 320-byte server-key region at 3298
(particle-cli ``udpPrivateKey``, ``udpServerKey``; udp-dtls.md §1.2). A Spark Core keeps them in
its external SPI flash, also alt setting 1: the server key at 0x1000 (2048 bytes) and the private key at
0x2000 (1024 bytes). These are the segments the Particle CLI reads and writes (``src/lib/keys-specs.js``,
``laterGenerations`` and ``generation1``).

:class:`DctImage` reads and replaces those areas in an image (a ``dfu-util -U`` dump, or an image built for
tests), with nothing but bytes in and bytes out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._errors import KeyFormatError
from ._server_file import Layout

__all__ = [
    "DctImage",
    "KeyArea",
    "KeyLayout",
    "Platform",
    "key_layout",
]

_ERASED = 0xFF


class Platform(enum.Enum):
    """The platforms whose keys are reached over DFU: platform id, USB id in DFU mode and key layout (protocol.md
    §11, udp-dtls.md §1.2)."""

    CORE = "core"
    PHOTON = "photon"
    P1 = "p1"
    ELECTRON = "electron"
    ARGON = "argon"
    BORON = "boron"
    XENON = "xenon"

    @property
    def platform_id(self) -> int:
        return _PLATFORMS[self][0]

    @property
    def usb_id(self) -> str:
        """``vid:pid`` in DFU mode, as ``dfu-util -l`` prints it and ``dfu-util -d`` takes it."""
        return _PLATFORMS[self][1]

    @property
    def display_name(self) -> str:
        return _PLATFORMS[self][2]

    @property
    def layout(self) -> Layout:
        if self is Platform.CORE:
            return Layout.CORE
        return Layout.PHOTON if self in (Platform.PHOTON, Platform.P1) else Layout.UDP

    @property
    def udp(self) -> bool:
        """Whether it reaches the cloud over UDP with P-256 keys (the Electron by default, Gen 3 always)."""
        return self.layout is Layout.UDP

    @classmethod
    def from_usb_id(cls, usb_id: str) -> Platform | None:
        """The platform in DFU mode with this ``vid:pid`` (case-insensitive), or None for other devices."""
        wanted = usb_id.strip().lower()
        for platform in cls:
            if platform.usb_id == wanted:
                return platform
        return None


# platform id (build/platform-id.mk), DFU-mode VID:PID (protocol.md §11; particle-usb ``src/device-type.js``
# ``dfuUsbIds``), name.
_PLATFORMS: dict[Platform, tuple[int, str, str]] = {
    Platform.CORE: (0, "1d50:607f", "Spark Core"),
    Platform.PHOTON: (6, "2b04:d006", "Photon"),
    Platform.P1: (8, "2b04:d008", "P1"),
    Platform.ELECTRON: (10, "2b04:d00a", "Electron"),
    Platform.ARGON: (12, "2b04:d00c", "Argon"),
    Platform.BORON: (13, "2b04:d00d", "Boron"),
    Platform.XENON: (14, "2b04:d00e", "Xenon"),
}


@dataclass(frozen=True)
class KeyArea:
    """One area of DFU alt setting 1: where it starts (the ``dfu-util -s`` address) and how long it is."""

    name: str
    address: int
    size: int
    alt: int = 1

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class KeyLayout:
    """The key areas of one layout, and how a write to them must be padded.

    ``write_padding`` is 2 on the Core: its external flash is written in half-words, so the Particle CLI
    appends a zero byte to an odd-sized file (``device-specs.js`` ``writePadding``).
    """

    layout: Layout
    private_key: KeyArea
    server_key: KeyArea
    #: The 162-byte public key the firmware derives from the private key, zero-filled (Photon/P1 only; over UDP
    #: the firmware derives it from the private key each time, and particle-cli writes no public key).
    public_key: KeyArea | None
    #: Bytes from address 0 that hold every area above: the image size ``cyan keys save --dct`` reads.
    image_size: int
    write_padding: int


_KEY_LAYOUTS = {
    # protocol.md §11 table: device_private_key 34 (612 used of 1216), device_public_key 1250 (384),
    # server_public_key 2082 (TCP uses 512); the application DCT ends at 8391.
    Layout.PHOTON: KeyLayout(
        layout=Layout.PHOTON,
        private_key=KeyArea("device private key", 34, 612),
        server_key=KeyArea("server key", Layout.PHOTON.flash_address, Layout.PHOTON.size),
        public_key=KeyArea("device public key", 1250, 384),
        image_size=8391,
        write_padding=1,
    ),
    # protocol.md §11 "Spark Core": external flash, server key at 0x1000, private key at 0x2000 (1024).
    Layout.CORE: KeyLayout(
        layout=Layout.CORE,
        private_key=KeyArea("device private key", 0x2000, 1024),
        server_key=KeyArea("server key", Layout.CORE.flash_address, Layout.CORE.size),
        public_key=None,
        image_size=0x2000 + 1024,
        write_padding=2,
    ),
    # udp-dtls.md §1.2: alt_device_private_key 3106 (192), alt_server_public_key 3298 (the 320-byte file: the key,
    # then alt_server_address at 3490).
    Layout.UDP: KeyLayout(
        layout=Layout.UDP,
        private_key=KeyArea("device private key", 3106, 192),
        server_key=KeyArea("server key", Layout.UDP.flash_address, Layout.UDP.size),
        public_key=None,
        image_size=Layout.UDP.flash_address + Layout.UDP.size,
        write_padding=1,
    ),
}


def key_layout(layout: Layout) -> KeyLayout:
    """The key areas of a Photon/P1 DCT, of a Core's external flash, or of the UDP devices' DCT."""
    return _KEY_LAYOUTS[layout]


@dataclass(frozen=True)
class DctImage:
    """An image of DFU alt setting 1 from address 0: a Photon/P1 DCT, or the start of a Core's external flash.

    The image must reach at least to the end of the server-key area (Photon/P1: 2594 bytes, Core: 0x1800) so
    that both keys can be read; the public-key area is read only when the image covers it.
    """

    layout: Layout
    data: bytes

    def __post_init__(self) -> None:
        keys = key_layout(self.layout)
        needed = max(keys.private_key.end, keys.server_key.end)
        if len(self.data) < needed:
            raise KeyFormatError(
                f"a {self.layout.value} key image must cover the private key at {keys.private_key.address} and "
                f"the server key at {keys.server_key.address}, so at least {needed} bytes; this one has "
                f"{len(self.data)} (protocol.md §11)"
            )

    @classmethod
    def blank(cls, layout: Layout, size: int | None = None) -> DctImage:
        """An erased image (all 0xFF), as a device with no keys and no server address has."""
        return cls(layout, b"\xff" * (key_layout(layout).image_size if size is None else size))

    @property
    def keys(self) -> KeyLayout:
        return key_layout(self.layout)

    def read(self, area: KeyArea) -> bytes:
        if area.end > len(self.data):
            raise KeyFormatError(f"the image ends at {len(self.data)}, before the {area.name} area ends at {area.end}")
        return self.data[area.address : area.end]

    def write(self, area: KeyArea, data: bytes) -> DctImage:
        """A copy with ``data`` written at the start of ``area``; the rest of the area is left as it was,
        as a DFU write of a shorter file leaves it (protocol.md §11: the firmware ignores bytes after the DER)."""
        if len(data) > area.size:
            raise KeyFormatError(f"{len(data)} bytes do not fit the {area.size}-byte {area.name} area")
        image = bytearray(self.data)
        image[area.address : area.address + len(data)] = data
        return DctImage(self.layout, bytes(image))

    @property
    def private_key_area(self) -> bytes:
        return self.read(self.keys.private_key)

    @property
    def server_key_area(self) -> bytes:
        return self.read(self.keys.server_key)

    @property
    def public_key_area(self) -> bytes | None:
        area = self.keys.public_key
        if area is None or area.end > len(self.data):
            return None
        return self.read(area)

    def with_private_key(self, der: bytes) -> DctImage:
        return self.write(self.keys.private_key, der)

    def with_server_key_file(self, data: bytes) -> DctImage:
        return self.write(self.keys.server_key, data)

    def is_blank(self, area: KeyArea) -> bool:
        """True when the firmware sees the area as erased: its first byte is 0xFF (protocol.md §12.1)."""
        return self.read(area)[0] == _ERASED
