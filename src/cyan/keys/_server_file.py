"""The server-key file: server public key plus server address, as written to a device over DFU.

Layout (protocol.md §11 "Server address block" and "CLI file format"; particle-cli.md §A.4): the 294-byte
SubjectPublicKeyInfo DER of the RSA-2048 server key at offset 0, 0xFF fill, a 128-byte address block at
offset 384 (type, length, value) and the big-endian port at offset 450 (= 384 + 66).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._codec import check_server_public_key, fingerprint, public_key_der
from ._der import outer_sequence
from ._ecc import (
    UDP_SERVER_KEY_ADDRESS_OFFSET,
    UDP_SERVER_KEY_FILE_SIZE,
    UDP_SERVER_KEY_PORT_OFFSET,
    load_ec_public_key,
    udp_public_key_der,
)
from ._errors import PUBLIC_EXPONENT, SERVER_KEY_BITS, KeyFormatError, ServerAddressError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_UDP_PORT",
    "PARTICLE_CLOUD_ADDRESS",
    "PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT",
    "AddressState",
    "KeyState",
    "Layout",
    "ServerAddress",
    "ServerKeyFile",
    "build_server_key_file",
    "build_udp_server_key_file",
    "is_particle_cloud_server_key",
    "parse_server_key_file",
    "read_firmware_server_key",
]

#: The device connects to this port when the stored port is 0 or 0xFFFF (protocol.md §1).
DEFAULT_PORT = 5683
#: A UDP device connects to this port whatever the file stores, unless its app sets another with
#: ``spark_cloud_udp_port_set`` (udp-dtls.md §1.1).
DEFAULT_UDP_PORT = 5684

#: SHA-256 fingerprint (see :func:`fingerprint`) of Particle's production TCP server key. The firmware
#: falls back to this key when the stored server key is blank (protocol.md §12.1). Computed from the
#: 294-byte ``backup_tcp_public_server_key`` in device-os ``system/src/system_cloud_internal_constants.c``;
#: the particle-cli asset ``assets/keys/rsa.pub.der`` holds the same key in its first 294 bytes.
PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT = "SHA256:aa8aba3c973ed4b668999047a09597948f36eefde525352e705fe8ef98c1677e"

KeyState = Literal["ok", "blank", "corrupt"]
AddressState = Literal["ok", "blank", "corrupt"]

_SPKI_BYTES = 294  # RSA-2048 SubjectPublicKeyInfo DER (protocol.md §2.3)
_FIRMWARE_MODULUS_OFFSET = 33  # handshake.cpp reads the modulus here (protocol.md §2.3)
_MODULUS_BYTES = SERVER_KEY_BITS // 8
_ADDRESS_BLOCK_BYTES = 128
_PORT_IN_BLOCK = 66  # port bytes 66..67 of the address block (protocol.md §11)
_UNSET_PORT = 0xFFFF
_TYPE_IPV4 = 0
_TYPE_DOMAIN = 1
_TYPE_ERASED = 0xFF
# protocol.md §11: keep domains at most 63 bytes so they end before the port at block byte 66.
_MAX_DOMAIN_BYTES = 63
# parse_server_address.h accepts a domain only if its length is at most the block size minus 2.
_FIRMWARE_MAX_DOMAIN_BYTES = _ADDRESS_BLOCK_BYTES - 2
# The Particle CLI's _createAddressBuffer treats a host made only of digits and dots as an IPv4 address.
_CLI_IP_RULE = re.compile(r"[0-9.]*")


@dataclass(frozen=True)
class _LayoutSpec:
    size: int
    max_size: int
    flash_address: int
    address_offset: int
    port_offset: int


class Layout(enum.Enum):
    """Where the server-key file goes and how big the Particle CLI makes it.

    Both come from particle-cli ``src/lib/keys-specs.js`` (checked at v3.49.2): ``laterGenerations``
    ``tcpServerKey`` is address 2082 (DCT, DFU alt 1), size 512, ``addressOffset`` 384, ``portOffset`` 450;
    ``generation1`` (Spark Core, external flash, DFU alt 1) is address 0x1000, size 2048, with the same
    384/450 offsets. ``src/cmd/keys.js`` selects ``generation1`` only for the Core. The CLI's bundled
    ``assets/keys/rsa.pub-padded.der`` is such a 2048-byte Core file.
    """

    PHOTON = "photon"  # Photon and P1
    CORE = "core"  # Spark Core
    #: Electron, Gen 3 and P2 over UDP: particle-cli ``udpServerKey``, DCT 3298, 320 bytes, the P-256 key at 0,
    #: the address at 192 and the port at 258 (udp-dtls.md §1.2). Never chosen from a size alone among the
    #: TCP layouts (`TCP_LAYOUTS`).
    UDP = "udp"

    @property
    def _spec(self) -> _LayoutSpec:
        return _LAYOUTS[self]

    @property
    def size(self) -> int:
        """Size of the file the Particle CLI writes for this layout."""
        return self._spec.size

    @property
    def max_size(self) -> int:
        """Largest dump accepted: the whole 768-byte DCT region on a Photon/P1, the file size on a Core."""
        return self._spec.max_size

    @property
    def flash_address(self) -> int:
        """DFU alt-1 address the file is written to (``dfu-util -a 1 -s <address>``)."""
        return self._spec.flash_address

    @property
    def address_offset(self) -> int:
        return self._spec.address_offset

    @property
    def port_offset(self) -> int:
        return self._spec.port_offset


_LAYOUTS = {
    Layout.PHOTON: _LayoutSpec(size=512, max_size=768, flash_address=2082, address_offset=384, port_offset=450),
    Layout.CORE: _LayoutSpec(size=2048, max_size=2048, flash_address=0x1000, address_offset=384, port_offset=450),
    Layout.UDP: _LayoutSpec(
        size=UDP_SERVER_KEY_FILE_SIZE,
        max_size=UDP_SERVER_KEY_FILE_SIZE,
        flash_address=3298,
        address_offset=UDP_SERVER_KEY_ADDRESS_OFFSET,
        port_offset=UDP_SERVER_KEY_PORT_OFFSET,
    ),
}
#: The layouts of the TCP devices' RSA server-key files.
TCP_LAYOUTS = (Layout.PHOTON, Layout.CORE)
_MIN_FILE_BYTES = 384 + _ADDRESS_BLOCK_BYTES  # everything the firmware reads ends at 512


@dataclass(frozen=True)
class ServerAddress:
    """The server address stored on a device.

    ``port`` is None when no port is stored (0xFFFF); the device then uses 5683, as it does for 0.
    """

    host: str
    port: int | None = None
    #: Held by a UDP device (Electron, Gen 3, P2), which ignores the stored port.
    udp: bool = False

    @property
    def effective_port(self) -> int:
        """The port the device connects to: TCP, the stored one (protocol.md §1: 0 and 0xFFFF mean 5683);
        UDP, 5684 whatever is stored (udp-dtls.md §1.1)."""
        if self.udp:
            return DEFAULT_UDP_PORT
        if self.port is None or self.port in (0, _UNSET_PORT):
            return DEFAULT_PORT
        return self.port

    @property
    def is_ip(self) -> bool:
        """True if the Particle CLI would store this host as an IPv4 address (only digits and dots)."""
        return _CLI_IP_RULE.fullmatch(self.host) is not None

    def __str__(self) -> str:
        # Same shape as ``particle keys address`` prints, e.g. tcp://127.0.0.1:5683.
        return f"{'udp' if self.udp else 'tcp'}://{self.host}:{self.effective_port}"


#: Where a device goes when its stored address is blank or invalid (protocol.md §1, §12.1).
PARTICLE_CLOUD_ADDRESS = ServerAddress("device.spark.io")
#: ... and a UDP device: Particle's `$id.udp.particle.io` (udp-dtls.md §1.1), its own id in place of `$id`.
PARTICLE_UDP_ADDRESS = ServerAddress("$id.udp.particle.io", udp=True)


@dataclass(frozen=True)
class ServerKeyFile:
    """A parsed server-key file or DCT dump, described the way the firmware would see it.

    ``key_state`` is "ok" only if the firmware would read exactly ``public_key``: an RSA-2048, e=65537 key
    in SubjectPublicKeyInfo form. "blank" means the first byte is 0xFF and the device falls back to the
    Particle cloud key (protocol.md §12.1). "corrupt" covers everything else, including a PKCS#1
    RSAPublicKey, which the firmware misreads at offset 33 (protocol.md §2.3); ``key_problem`` says why.

    ``address`` is what the firmware would connect to, or None when the type byte is not 0/1 and the device
    falls back to ``device.spark.io`` (see :attr:`effective_address`). ``address_state`` is "blank" for type
    0xFF and "corrupt" for any other unusable or unusual block (IPv4 with a length other than 4, a domain
    that is empty, longer than 63 bytes or not printable ASCII, an unknown type); ``address_problem`` says why.
    """

    layout: Layout
    key_der: bytes
    #: RSA-2048 in the TCP layouts, P-256 in `Layout.UDP`.
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None
    key_state: KeyState
    address: ServerAddress | None
    address_state: AddressState
    raw_address_type: int
    key_problem: str | None = None
    address_problem: str | None = None

    @property
    def effective_address(self) -> ServerAddress:
        """The address the device really uses, including the built-in fallback."""
        if self.address is None:
            return PARTICLE_UDP_ADDRESS if self.layout is Layout.UDP else PARTICLE_CLOUD_ADDRESS
        return self.address


def _encode_address(host: str) -> bytes:
    if not host:
        raise ServerAddressError("server host is empty; give an IPv4 address or a domain name")
    if _CLI_IP_RULE.fullmatch(host):
        parts = host.split(".")
        if len(parts) != 4 or any(not part or len(part) > 3 or int(part) > 255 for part in parts):
            raise ServerAddressError(
                f"server host {host!r} has only digits and dots, so it is stored as an IPv4 address "
                "(protocol.md §11), but it is not a dotted quad a.b.c.d with each part 0..255"
            )
        return bytes([_TYPE_IPV4, 4, *(int(part) for part in parts)])
    if ":" in host:
        raise ServerAddressError(
            f"server host {host!r} looks like an IPv6 address or has a port; the firmware stores only an IPv4 "
            "address or a domain name, and the port is given separately (protocol.md §11)"
        )
    try:
        raw = host.encode("ascii")
    except UnicodeEncodeError:
        raise ServerAddressError(
            f"server host {host!r} is not ASCII; store the IDNA (xn--) form of the domain"
        ) from None
    if any(byte < 0x21 or byte > 0x7E for byte in raw):
        raise ServerAddressError(f"server host {host!r} contains spaces or control characters")
    if len(raw) > _MAX_DOMAIN_BYTES:
        raise ServerAddressError(
            f"server domain is {len(raw)} bytes; at most {_MAX_DOMAIN_BYTES} fit in the address block before "
            "the port (protocol.md §11)"
        )
    return bytes([_TYPE_DOMAIN, len(raw)]) + raw


def build_server_key_file(
    key: rsa.RSAPublicKey,
    host: str | None = None,
    port: int | None = None,
    layout: Layout = Layout.PHOTON,
) -> bytes:
    """The server-key file exactly as ``particle keys server`` writes it (particle-cli ``_formatPublicKey``).

    The SubjectPublicKeyInfo DER of ``key`` at offset 0, 0xFF up to the layout size, and, if ``host`` is
    given, the address at offset 384: type 0 + length 4 + four bytes when the host has only digits and dots
    (the CLI's rule), otherwise type 1 + length + ASCII domain. ``port`` is written big-endian at offset 450
    only when given; without it the bytes stay 0xFFFF and the device uses 5683. Without ``host`` there is
    no address block and the device falls back to ``device.spark.io`` (protocol.md §11, §12.1).

    Stricter than the CLI, which would silently write a file the device cannot use: the key must be
    RSA-2048 with e=65537, an all-digits host must be a valid dotted quad, a domain must be printable
    ASCII of 1..63 bytes, the port must be 1..65534 (65535 is stored as 0xFFFF, which the firmware reads as
    "not set" and replaces with 5683), and a port needs a host (the CLI ignores it otherwise).
    """
    check_server_public_key(key)
    der = public_key_der(key)
    buf = bytearray(der + b"\xff" * (layout.size - len(der)))
    if host is None:
        if port is not None:
            raise KeyFormatError(
                "a port was given without a host; the Particle CLI stores a port only together with an address"
            )
        return bytes(buf)
    block = _encode_address(host)
    buf[layout.address_offset : layout.address_offset + len(block)] = block
    if port is not None:
        if isinstance(port, bool) or not 1 <= port <= _UNSET_PORT - 1:
            raise KeyFormatError(
                f"port {port!r} cannot be stored: use 1..65534 (0 and 65535 are read by the firmware as "
                "'not set' and replaced with 5683, protocol.md §1)"
            )
        buf[layout.port_offset : layout.port_offset + 2] = port.to_bytes(2, "big")
    return bytes(buf)


def build_udp_server_key_file(
    key: ec.EllipticCurvePublicKey, host: str | None = None, port: int | None = None
) -> bytes:
    """The 320-byte UDP server-key file exactly as ``particle keys server`` writes it for a UDP device
    (particle-cli ``_formatPublicKey`` with the ``udpServerKey`` spec, udp-dtls.md §1.2): the 91-byte P-256
    SubjectPublicKeyInfo at 0, 0xFF fill, the address TLV at 192 and, when given, the big-endian port at 258.
    The same address rules and checks as :func:`build_server_key_file`. (Device OS ignores the stored port
    on UDP and uses 5684, or the app's ``spark_cloud_udp_port_set``; the CLI writes it all the same.)"""
    der = udp_public_key_der(key)
    buf = bytearray(der + b"\xff" * (UDP_SERVER_KEY_FILE_SIZE - len(der)))
    if host is None:
        if port is not None:
            raise KeyFormatError(
                "a port was given without a host; the Particle CLI stores a port only together with an address"
            )
        return bytes(buf)
    block = _encode_address(host)
    buf[UDP_SERVER_KEY_ADDRESS_OFFSET : UDP_SERVER_KEY_ADDRESS_OFFSET + len(block)] = block
    if port is not None:
        if isinstance(port, bool) or not 1 <= port <= _UNSET_PORT - 1:
            raise KeyFormatError(f"port {port!r} cannot be stored: use 1..65534")
        buf[UDP_SERVER_KEY_PORT_OFFSET : UDP_SERVER_KEY_PORT_OFFSET + 2] = port.to_bytes(2, "big")
    return bytes(buf)


def read_firmware_server_key(key_der: bytes) -> rsa.RSAPublicKey:
    """The server public key the firmware actually uses: 256 modulus bytes from offset 33, e=65537.

    ``handshake.cpp`` does no parsing (protocol.md §2.3). This matches the intended key only for an
    RSA-2048 SubjectPublicKeyInfo; for a PKCS#1 RSAPublicKey, another size or another exponent it yields
    a different key, which is why such keys are "corrupt" in :func:`parse_server_key_file`.
    """
    end = _FIRMWARE_MODULUS_OFFSET + _MODULUS_BYTES
    if len(key_der) < end:
        raise KeyFormatError(
            f"server key data is {len(key_der)} bytes; the firmware reads the modulus from bytes "
            f"{_FIRMWARE_MODULUS_OFFSET}..{end - 1}, so at least {end} are needed"
        )
    modulus = int.from_bytes(key_der[_FIRMWARE_MODULUS_OFFSET:end], "big")
    try:
        return rsa.RSAPublicNumbers(e=PUBLIC_EXPONENT, n=modulus).public_key()
    except ValueError as exc:
        raise KeyFormatError(
            f"the 256 bytes at offset {_FIRMWARE_MODULUS_OFFSET} do not form a usable RSA modulus ({exc})"
        ) from None


def _detect_layout(data: bytes, layout: Layout | None) -> Layout:
    size = len(data)
    if layout is None:
        for candidate in TCP_LAYOUTS:
            if size in (candidate.size, candidate.max_size):
                return candidate
        raise KeyFormatError(
            f"server-key data is {size} bytes; expected 512 (Photon/P1 file), 768 (Photon/P1 DCT region dump) "
            "or 2048 (Spark Core file)"
        )
    if not _MIN_FILE_BYTES <= size <= layout.max_size:
        raise KeyFormatError(
            f"server-key data is {size} bytes; the {layout.value} layout needs "
            f"{_MIN_FILE_BYTES}..{layout.max_size} bytes (the address block ends at byte {_MIN_FILE_BYTES})"
        )
    return layout


def _stored_spki(key_der: bytes) -> rsa.RSAPublicKey:
    der = outer_sequence(key_der, f"server key (the {_SPKI_BYTES}-byte key slot)")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"server key slot does not hold a DER public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFormatError("server key slot holds a non-RSA key; the TCP protocol needs RSA-2048 (protocol.md §2.3)")
    if public_key_der(key) != der:
        pkcs1 = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1) == der
        form = (
            "as a PKCS#1 RSAPublicKey ('BEGIN RSA PUBLIC KEY')"
            if pkcs1
            else "in a form other than canonical SubjectPublicKeyInfo DER"
        )
        raise KeyFormatError(
            f"server key is stored {form}; the firmware reads the modulus at offset "
            f"{_FIRMWARE_MODULUS_OFFSET} of a SubjectPublicKeyInfo and would use a wrong key (protocol.md §2.3)"
        )
    check_server_public_key(key)
    return key


def _inspect_key(key_der: bytes) -> tuple[rsa.RSAPublicKey | None, KeyState, str | None]:
    if key_der[0] == _TYPE_ERASED:
        return (
            None,
            "blank",
            "first byte is 0xFF (erased); the device uses the built-in Particle cloud key (protocol.md §12.1)",
        )
    try:
        return _stored_spki(key_der), "ok", None
    except KeyFormatError as exc:
        return None, "corrupt", str(exc)


def _inspect_udp_key(key_der: bytes) -> tuple[ec.EllipticCurvePublicKey | None, KeyState, str | None]:
    if key_der[0] == _TYPE_ERASED:
        return None, "blank", "first byte is 0xFF (erased); Device OS then uses the Particle key it has built in"
    try:
        key = load_ec_public_key(key_der)
    except KeyFormatError as exc:
        return None, "corrupt", str(exc)
    if not key_der.startswith(udp_public_key_der(key)):
        return None, "corrupt", "the key is not stored as the 91-byte P-256 SubjectPublicKeyInfo Device OS reads"
    return key, "ok", None


def _inspect_address(block: bytes, *, udp: bool = False) -> tuple[ServerAddress | None, AddressState, str | None]:
    kind, length = block[0], block[1]
    raw_port = int.from_bytes(block[_PORT_IN_BLOCK : _PORT_IN_BLOCK + 2], "big")
    port = None if raw_port == _UNSET_PORT else raw_port
    fallback = f"the device uses {PARTICLE_CLOUD_ADDRESS.host}"
    if kind == _TYPE_IPV4:
        # parse_server_address.h reads the four bytes and ignores the length byte.
        address = ServerAddress(".".join(str(byte) for byte in block[2:6]), port, udp)
        if length != 4:
            return address, "corrupt", f"IPv4 address has length byte {length}, expected 4"
        return address, "ok", None
    if kind == _TYPE_DOMAIN:
        if length > _FIRMWARE_MAX_DOMAIN_BYTES:
            return None, "corrupt", f"domain length {length} does not fit the address block; {fallback}"
        raw = block[2 : 2 + length]
        # The firmware copies the bytes and NUL-terminates them, so an embedded NUL ends the name.
        address = ServerAddress(raw.split(b"\x00", 1)[0].decode("ascii", errors="backslashreplace"), port, udp)
        if length == 0:
            return address, "corrupt", "domain name is empty"
        if length > _MAX_DOMAIN_BYTES:
            return address, "corrupt", f"domain is {length} bytes and overlaps the port at block byte 66"
        if any(byte < 0x21 or byte > 0x7E for byte in raw):
            return address, "corrupt", "domain contains bytes that are not printable ASCII"
        return address, "ok", None
    if kind == _TYPE_ERASED:
        return None, "blank", f"address type byte is 0xFF (erased); {fallback}"
    return None, "corrupt", f"address type 0x{kind:02x} is neither 0 (IPv4) nor 1 (domain); {fallback}"


def parse_server_key_file(data: bytes, layout: Layout | None = None) -> ServerKeyFile:
    """Describe a server-key file or dump as the firmware would read it.

    Accepts a 512-byte Photon/P1 file, a 768-byte dump of the whole DCT server-key region (TCP uses the
    first 512 bytes), a 2048-byte Spark Core file and a 320-byte UDP file (Electron, Gen 3, P2: the P-256 key
    and the address at 192); with ``layout=None`` the layout follows from the size.
    Raises :class:`KeyFormatError` only for a size that fits no layout; problems with the key or the address
    are reported in the result.
    """
    udp = layout is Layout.UDP or (layout is None and len(data) == UDP_SERVER_KEY_FILE_SIZE)
    if udp and len(data) != UDP_SERVER_KEY_FILE_SIZE:
        raise KeyFormatError(f"a UDP server-key file is {UDP_SERVER_KEY_FILE_SIZE} bytes, not {len(data)}")
    chosen = Layout.UDP if udp else _detect_layout(data, layout)
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None
    if udp:
        key_der = bytes(data[:UDP_SERVER_KEY_ADDRESS_OFFSET])
        public_key, key_state, key_problem = _inspect_udp_key(key_der)
    else:
        key_der = bytes(data[:_SPKI_BYTES])
        public_key, key_state, key_problem = _inspect_key(key_der)
    block = bytes(data[chosen.address_offset : chosen.address_offset + _ADDRESS_BLOCK_BYTES])
    address, address_state, address_problem = _inspect_address(block, udp=udp)
    return ServerKeyFile(
        layout=chosen,
        key_der=key_der,
        public_key=public_key,
        key_state=key_state,
        address=address,
        address_state=address_state,
        raw_address_type=block[0],
        key_problem=key_problem,
        address_problem=address_problem,
    )


def is_particle_cloud_server_key(key: rsa.RSAPublicKey | rsa.RSAPrivateKey | bytes) -> bool:
    """True if ``key`` is Particle's production TCP server key (compared by :func:`fingerprint`).

    A device holding it talks to Particle's cloud, not to this one (protocol.md §12.2).
    """
    return fingerprint(key) == PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT
