"""The USB-side half of a diagnosis: what the keys on a device (or in a dump or key file) will do.

Given the bytes the firmware reads, this says whether the device private key is present, well-formed and
read correctly by the firmware's fixed-offset parser (protocol.md §2.2, §A.3), which public key the device
will present in the handshake and whether the cloud holds that key, and whether the server key and address
point the device at this cloud, at Particle's (protocol.md §12.1), at another one, or nowhere usable.

The UDP devices' (Electron, Gen 3, P2) files are judged the same way against the cloud's UDP side: a P-256
device key as Device OS stores it (SEC1 DER, DCT 3106) and the 320-byte server-key file (the P-256 key, the
address at 192; DCT 3298), udp-dtls.md §1.2.

Nothing here looks anything up: the caller passes what the cloud knows as :class:`CloudFacts`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._codec import check_device_public_key, fingerprint, load_private_key, load_public_key
from ._dct import DctImage, key_layout
from ._der import outer_sequence
from ._device import (
    device_public_key_der_from_private,
    encode_device_private_key,
    firmware_parse_device_key,
    is_firmware_parsable,
)
from ._ecc import UDP_SERVER_KEY_FILE_SIZE, load_ec_private_key, load_ec_public_key, udp_public_key_der
from ._errors import KeyFormatError
from ._server_file import (
    PARTICLE_CLOUD_ADDRESS,
    PARTICLE_UDP_ADDRESS,
    TCP_LAYOUTS,
    Layout,
    ServerAddress,
    ServerKeyFile,
    is_particle_cloud_server_key,
    parse_server_key_file,
)

__all__ = [
    "CloudFacts",
    "Finding",
    "KeyInspection",
    "PrivateKeyReport",
    "ServerKeyReport",
    "addresses_of",
    "inspect_file",
    "inspect_image",
    "inspect_key_areas",
    "inspect_private_key",
]

PrivateKeyState = Literal["ok", "blank", "malformed", "unparsable"]
CloudMatch = Literal["match", "mismatch", "unregistered", "not_checked"]
ServerIdentity = Literal["this_cloud", "particle", "other", "unknown"]
Severity = Literal["info", "warning", "problem"]
Source = Literal["dct", "private_key", "public_key", "server_key", "device"]

_ERASED = 0xFF
_HANDSHAKE_KEY_END = 139  # the firmware copies private-key bytes 11..138 into the handshake key (protocol.md §2.2)
_PEM_MARK = b"-----BEGIN "
_SPKI_2048_HEADER = bytes.fromhex("30820122")  # SEQUENCE of a 294-byte RSA-2048 SubjectPublicKeyInfo
_SPKI_P256_HEADER = bytes.fromhex("3059")  # SEQUENCE of a 91-byte P-256 SubjectPublicKeyInfo
#: `PrivateKeyReport.encoding` of the UDP devices' keys.
_EC_ENCODINGS = ("P-256 SEC1 DER", "P-256 PKCS#8 DER", "P-256 PEM", "P-256 public key")
_PARTICLE_DOMAINS = ("spark.io", "particle.io")


@dataclass(frozen=True)
class CloudFacts:
    """What the caller learned from the cloud before the inspection; empty means "not looked up".

    ``device_registered`` is None when the device was not looked up, False when the cloud has no key for
    it, True when ``device_key_fingerprint`` is the key it holds.
    """

    device_id: str | None = None
    device_registered: bool | None = None
    device_key_fingerprint: str | None = None
    #: Fingerprints of this cloud's server keys (normally one).
    server_key_fingerprints: tuple[str, ...] = ()
    #: The addresses this cloud publishes for devices (from its server-key files).
    addresses: tuple[ServerAddress, ...] = ()
    #: The same for the UDP devices: the fingerprint of this cloud's P-256 server key, and the addresses of
    #: its 320-byte files.
    udp_server_key_fingerprints: tuple[str, ...] = ()
    udp_addresses: tuple[ServerAddress, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One line of the verdict: ``code`` is stable and machine-readable, ``message`` and ``advice`` are for people."""

    severity: Severity
    code: str
    message: str
    advice: str | None = None


@dataclass(frozen=True)
class PrivateKeyReport:
    """The device private key as the firmware will use it.

    ``state``: "ok" (RSA-1024, e=65537, consistent, and the firmware's offset walk reads exactly its numbers),
    "blank" (first byte 0xFF: the device makes a new key at boot, protocol.md §12.1), "malformed" (not a usable
    device key at all) or "unparsable" (a valid key the firmware would misread, protocol.md §A.3).

    ``presented_fingerprint`` is the key the device will send in the handshake, rebuilt the way the firmware
    does it from bytes 11..138 (protocol.md §2.2); it is what the server compares, even for a broken key.
    """

    state: PrivateKeyState
    problem: str | None = None
    fingerprint: str | None = None
    presented_fingerprint: str | None = None
    #: "fixed-width" (the firmware's own 611-byte layout), "der" (standard DER) or "pem" (a PEM file).
    encoding: str | None = None
    #: Photon/P1 DCT images: whether the public-key area at 1250 holds the key derived from this one.
    public_area_matches: bool | None = None


@dataclass(frozen=True)
class ServerKeyReport:
    """The server key and address as the firmware will use them (see :class:`cyan.keys.ServerKeyFile`)."""

    parsed: ServerKeyFile
    identity: ServerIdentity | None
    fingerprint: str | None

    @property
    def key_state(self) -> str:
        return self.parsed.key_state

    @property
    def address(self) -> ServerAddress:
        """The address the device really connects to, including the ``device.spark.io`` fallback."""
        return self.parsed.effective_address


@dataclass(frozen=True)
class KeyInspection:
    """Everything found, and the verdict as findings; ``healthy`` means no finding is a problem."""

    source: Source
    layout: Layout
    private_key: PrivateKeyReport | None = None
    cloud: CloudMatch = "not_checked"
    cloud_fingerprint: str | None = None
    server_key: ServerKeyReport | None = None
    findings: tuple[Finding, ...] = field(default=())
    device_id: str | None = None

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "problem" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``cyan keys inspect --json``); it never contains private key bytes."""
        private: dict[str, Any] | None = None
        if self.private_key is not None:
            p = self.private_key
            private = {
                "state": p.state,
                "problem": p.problem,
                "fingerprint": p.fingerprint,
                "presented_fingerprint": p.presented_fingerprint,
                "encoding": p.encoding,
                "public_area_matches": p.public_area_matches,
            }
        server: dict[str, Any] | None = None
        if self.server_key is not None:
            s = self.server_key.parsed
            server = {
                "key_state": s.key_state,
                "key_problem": s.key_problem,
                "identity": self.server_key.identity,
                "fingerprint": self.server_key.fingerprint,
                "address_state": s.address_state,
                "address_problem": s.address_problem,
                "address": None if s.address is None else {"host": s.address.host, "port": s.address.port},
                "effective_address": str(s.effective_address),
            }
        return {
            "source": self.source,
            "layout": self.layout.value,
            "device_id": self.device_id,
            "healthy": self.healthy,
            "private_key": private,
            "cloud": {"match": self.cloud, "fingerprint": self.cloud_fingerprint},
            "server_key": server,
            "findings": [
                {"severity": f.severity, "code": f.code, "message": f.message, "advice": f.advice}
                for f in self.findings
            ],
        }


# -- the device private key --------------------------------------------------------------------------------


def _presented(data: bytes) -> str | None:
    """Fingerprint of the public key the firmware would build from these bytes, if it builds one at all."""
    if len(data) < _HANDSHAKE_KEY_END or data[0] == _ERASED:
        return None
    spki = device_public_key_der_from_private(data)
    try:
        return fingerprint(load_public_key(spki))
    except KeyFormatError:
        return "SHA256:" + hashlib.sha256(spki).hexdigest()


def inspect_private_key(data: bytes) -> PrivateKeyReport:
    """Judge a device private key: a DCT key area (612 or 1024 bytes, trailing fill is normal) or a key file."""
    if not data or data[0] == _ERASED:
        return PrivateKeyReport(
            state="blank",
            problem="the key area is erased (first byte 0xFF); the device generates a new key at boot and "
            "presents that one (protocol.md §12.1)",
        )
    pem = data.lstrip().startswith(_PEM_MARK)
    try:
        key = load_private_key(data)
        check_device_public_key(key)
    except KeyFormatError as exc:
        return PrivateKeyReport(state="malformed", problem=str(exc), presented_fingerprint=_presented(data))
    key_fingerprint = fingerprint(key)
    if pem:
        # What a device would hold is the DER that `cyan keys load` writes, always firmware-parsable.
        return PrivateKeyReport(
            state="ok", fingerprint=key_fingerprint, presented_fingerprint=key_fingerprint, encoding="pem"
        )
    der = outer_sequence(data, "device private key")
    encoding = "fixed-width" if der == encode_device_private_key(key) else "der"
    if not is_firmware_parsable(der):
        try:
            firmware_parse_device_key(der)
        except KeyFormatError as exc:
            problem = str(exc)
        else:
            problem = "the firmware's offset walk reads numbers that differ from the key's (protocol.md §A.3)"
        return PrivateKeyReport(
            state="unparsable",
            problem=problem,
            fingerprint=key_fingerprint,
            presented_fingerprint=_presented(der),
            encoding=encoding,
        )
    return PrivateKeyReport(
        state="ok", fingerprint=key_fingerprint, presented_fingerprint=_presented(der), encoding=encoding
    )


def _public_area_matches(private_area: bytes, public_area: bytes | None) -> bool | None:
    if public_area is None or not private_area or private_area[0] == _ERASED or len(private_area) < _HANDSHAKE_KEY_END:
        return None
    expected = device_public_key_der_from_private(private_area)
    return public_area[: len(expected)] == expected


# -- the verdict -------------------------------------------------------------------------------------------


def _private_findings(report: PrivateKeyReport, device: str) -> list[Finding]:
    restore = f"cyan keys restore {device} --escrow FILE"
    doctor = f"cyan keys doctor {device}"
    if report.state == "blank":
        return [
            Finding(
                "problem",
                "private_key_blank",
                "No device private key: the area is erased. At the next boot the device makes a new key "
                "(blinking white) and presents it; a cloud that holds the old key refuses it.",
                f"Put the device's key back from escrow ({restore}) or give it a new registered key ({doctor}).",
            )
        ]
    if report.state == "malformed":
        return [
            Finding(
                "problem",
                "private_key_malformed",
                f"The device private key is corrupt: {report.problem}. The firmware does not check it and keeps "
                "using it, so every handshake fails (protocol.md §12.1).",
                f"Restore it ({restore}) or replace it ({doctor}).",
            )
        ]
    if report.state == "unparsable":
        return [
            Finding(
                "problem",
                "private_key_unparsable",
                f"The private key is valid, but the firmware reads it at fixed offsets and would misread it: "
                f"{report.problem}.",
                "Save it and load it again: `cyan keys save key.der` then `cyan keys load key.der` writes it in "
                "the firmware's fixed-width layout, keeping the same identity.",
            )
        ]
    encoding = f", {report.encoding} encoding" if report.encoding else ""
    if report.encoding in _EC_ENCODINGS:
        return [
            Finding(
                "info",
                "private_key_ok",
                f"P-256 device private key (a UDP device's{encoding}); the device proves it in the DTLS handshake.",
            )
        ]
    findings = [Finding("info", "private_key_ok", f"Device private key is present and firmware-parsable{encoding}.")]
    if report.public_area_matches is False:
        findings.append(
            Finding(
                "info",
                "public_key_area_stale",
                "The public-key area at DCT 1250 does not hold this key's public key; the firmware rewrites it "
                "at boot (protocol.md §11).",
            )
        )
    return findings


def _cloud_findings(
    report: PrivateKeyReport, facts: CloudFacts, device: str
) -> tuple[CloudMatch, str | None, list[Finding]]:
    if facts.device_registered is None or facts.device_id is None:
        return "not_checked", None, []
    if not facts.device_registered or facts.device_key_fingerprint is None:
        advice = f"Register the key: cyan keys send {device} KEY_FILE" if report.state == "ok" else None
        return (
            "unregistered",
            None,
            [
                Finding(
                    "problem",
                    "device_not_registered",
                    f"The cloud holds no key for {facts.device_id}; it refuses the device (unknown_device).",
                    advice,
                )
            ],
        )
    held = facts.device_key_fingerprint
    presented = report.presented_fingerprint
    if presented is None:
        # Blank key: whatever the device makes at boot will not be what the cloud holds.
        return "mismatch", held, []
    if presented == held:
        return "match", held, [Finding("info", "cloud_key_match", f"The cloud holds this key for {facts.device_id}.")]
    if report.encoding in _EC_ENCODINGS:
        return (
            "mismatch",
            held,
            [
                Finding(
                    "problem",
                    "cloud_key_mismatch",
                    f"The device proves {presented} in its DTLS handshake but the cloud holds {held} for "
                    f"{facts.device_id}: the server refuses it after its Hello (key_mismatch).",
                    f"If the device's key is the right one, register it: cyan keys send {device} KEY_FILE (or "
                    "particle keys send). If the cloud's is, write the device's own key back to DCT 3106 over DFU.",
                )
            ],
        )
    return (
        "mismatch",
        held,
        [
            Finding(
                "problem",
                "cloud_key_mismatch",
                f"The device presents {presented} but the cloud holds {held} for {facts.device_id}: the server "
                "refuses the handshake (key_mismatch).",
                f"If the device's key is the right one, register it: cyan keys send {device} KEY_FILE. If the "
                f"cloud's is, put it back: cyan keys restore {device} --escrow FILE.",
            )
        ],
    )


def _server_identity(parsed: ServerKeyFile, facts: CloudFacts) -> tuple[ServerIdentity | None, str | None]:
    if parsed.public_key is None:
        return None, None
    key_fingerprint = fingerprint(parsed.public_key)
    ours = facts.udp_server_key_fingerprints if parsed.layout is Layout.UDP else facts.server_key_fingerprints
    if key_fingerprint in ours:
        return "this_cloud", key_fingerprint
    if isinstance(parsed.public_key, rsa.RSAPublicKey) and is_particle_cloud_server_key(parsed.public_key):
        return "particle", key_fingerprint
    if ours:
        return "other", key_fingerprint
    return "unknown", key_fingerprint


def _is_particle_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in _PARTICLE_DOMAINS)


def _udp_server_findings(report: ServerKeyReport, facts: CloudFacts) -> list[Finding]:
    """The 320-byte file of a UDP device: the P-256 key it checks the server's signature with, and where it
    connects (udp-dtls.md §1.1-§1.2)."""
    parsed = report.parsed
    point = (
        "Point it at this cloud: cyan keys server --protocol udp -o udp_server_key.der, then write that file to "
        "DCT 3298 over DFU (particle keys server udp_server_key.der)"
    )
    findings: list[Finding] = []
    if parsed.key_state == "blank":
        findings.append(
            Finding(
                "problem",
                "server_key_blank",
                "No UDP server key: the area is erased. Device OS then uses the Particle key it has built in, so it "
                "cannot talk to this cloud.",
                point,
            )
        )
    elif parsed.key_state == "corrupt":
        findings.append(
            Finding(
                "problem",
                "server_key_corrupt",
                f"The UDP server key is unusable: {parsed.key_problem}. The device cannot check the server's "
                "signature, so every DTLS handshake fails.",
                point,
            )
        )
    elif report.identity == "other":
        findings.append(
            Finding(
                "problem",
                "server_key_foreign",
                f"The UDP server key {report.fingerprint} belongs to another cloud; this cloud's is "
                f"{', '.join(facts.udp_server_key_fingerprints)}. The device rejects this cloud's signed key "
                "exchange (bad_signature on the device) and the server records a failed DTLS handshake.",
                point,
            )
        )
    elif report.identity == "this_cloud":
        findings.append(Finding("info", "server_key_this_cloud", "The UDP server key is this cloud's P-256 key."))
    else:
        findings.append(
            Finding(
                "info",
                "server_key_unchecked",
                f"UDP server key {report.fingerprint} (not compared with a cloud: give --data-dir or --server-key).",
            )
        )
    if parsed.address_state == "blank":
        findings.append(
            Finding(
                "problem",
                "server_address_blank",
                f"No server address: the device falls back to Particle's {PARTICLE_UDP_ADDRESS.host} "
                "(udp-dtls.md §1.1).",
                point,
            )
        )
    elif parsed.address_state == "corrupt":
        findings.append(
            Finding(
                "problem",
                "server_address_corrupt",
                f"The server address block is invalid: {parsed.address_problem}.",
                point,
            )
        )
    else:
        address = parsed.effective_address
        stored = (
            f" (the file stores port {parsed.address.port}, which Device OS ignores over UDP)"
            if (parsed.address is not None and parsed.address.port not in (None, 0, address.effective_port))
            else ""
        )
        if facts.udp_addresses and not any(a.host.lower() == address.host.lower() for a in facts.udp_addresses):
            published = ", ".join(str(a) for a in facts.udp_addresses)
            findings.append(
                Finding(
                    "warning",
                    "server_address_unexpected",
                    f"The device connects to {address}{stored}; this cloud publishes {published}. That is fine only "
                    f"if {address.host} also reaches this cloud's UDP port.",
                    point,
                )
            )
        else:
            findings.append(Finding("info", "server_address_set", f"The device connects to {address}{stored}."))
    return findings


def _server_findings(report: ServerKeyReport, facts: CloudFacts) -> list[Finding]:
    parsed = report.parsed
    if parsed.layout is Layout.UDP:
        return _udp_server_findings(report, facts)
    point = "Point it at this cloud: cyan keys server -o server.der && cyan keys load server.der"
    findings: list[Finding] = []
    if parsed.key_state == "blank":
        findings.append(
            Finding(
                "problem",
                "server_key_blank",
                "No server key: the area is erased. Device OS 0.7.0+ then uses Particle's built-in key "
                "(protocol.md §12.1), so it cannot talk to this cloud.",
                point,
            )
        )
    elif parsed.key_state == "corrupt":
        findings.append(
            Finding(
                "problem",
                "server_key_corrupt",
                f"The server key is unusable: {parsed.key_problem}. The device encrypts with a wrong key and "
                "the handshake fails at the first step ('Unable to receive key', protocol.md §9.3).",
                point,
            )
        )
    elif report.identity == "particle":
        findings.append(
            Finding(
                "problem",
                "server_key_particle",
                "The server key is Particle's production key: the device talks to the Particle cloud, not to this one.",
                point,
            )
        )
    elif report.identity == "other":
        findings.append(
            Finding(
                "problem",
                "server_key_foreign",
                f"The server key {report.fingerprint} belongs to another cloud; this cloud's is "
                f"{', '.join(facts.server_key_fingerprints)}. The handshake fails at the nonce step "
                "(nonce_mismatch).",
                point,
            )
        )
    elif report.identity == "this_cloud":
        findings.append(Finding("info", "server_key_this_cloud", "The server key is this cloud's."))
    else:
        findings.append(
            Finding(
                "info",
                "server_key_unchecked",
                f"Server key {report.fingerprint} (not compared with a cloud: give --data-dir or --server-key).",
            )
        )

    if parsed.address_state == "blank":
        findings.append(
            Finding(
                "problem",
                "server_address_blank",
                f"No server address: the device falls back to {PARTICLE_CLOUD_ADDRESS.host} (protocol.md §12.1).",
                point,
            )
        )
    elif parsed.address_state == "corrupt":
        findings.append(
            Finding(
                "problem",
                "server_address_corrupt",
                f"The server address block is invalid: {parsed.address_problem}.",
                point,
            )
        )
    else:
        address = parsed.effective_address
        if _is_particle_host(address.host) and report.identity not in ("particle", None):
            findings.append(
                Finding(
                    "problem",
                    "server_address_particle",
                    f"The server address {address} is Particle's, but the key is not Particle's.",
                    point,
                )
            )
        elif facts.addresses and not any(
            a.host.lower() == address.host.lower() and a.effective_port == address.effective_port
            for a in facts.addresses
        ):
            published = ", ".join(str(a) for a in facts.addresses)
            findings.append(
                Finding(
                    "warning",
                    "server_address_unexpected",
                    f"The device connects to {address}; this cloud publishes {published}. That is fine only if "
                    f"{address.host} also reaches this cloud.",
                    point,
                )
            )
        else:
            findings.append(Finding("info", "server_address_set", f"The device connects to {address}."))
    return findings


def _inspection(
    source: Source,
    layout: Layout,
    *,
    private: PrivateKeyReport | None,
    server_area: bytes | None,
    facts: CloudFacts,
) -> KeyInspection:
    device = facts.device_id or "DEVICE_ID"
    findings: list[Finding] = []
    cloud: CloudMatch = "not_checked"
    held: str | None = None
    if private is not None:
        findings += _private_findings(private, device)
        cloud, held, more = _cloud_findings(private, facts, device)
        findings += more
    server: ServerKeyReport | None = None
    if server_area is not None:
        parsed = parse_server_key_file(server_area, layout)
        identity, server_fingerprint = _server_identity(parsed, facts)
        server = ServerKeyReport(parsed=parsed, identity=identity, fingerprint=server_fingerprint)
        findings += _server_findings(server, facts)
    return KeyInspection(
        source=source,
        layout=layout,
        private_key=private,
        cloud=cloud,
        cloud_fingerprint=held,
        server_key=server,
        findings=tuple(findings),
        device_id=facts.device_id,
    )


def inspect_key_areas(
    private_area: bytes | None,
    server_area: bytes | None,
    layout: Layout,
    facts: CloudFacts = CloudFacts(),
    *,
    public_area: bytes | None = None,
    source: Source = "device",
) -> KeyInspection:
    """Inspect the key areas as read from a device (either may be None when it was not read)."""
    private = None
    if private_area is not None and layout is Layout.UDP:
        private = _udp_private_area(private_area)
    elif private_area is not None:
        private = inspect_private_key(private_area)
        matches = _public_area_matches(private_area, public_area)
        if matches is not None and private.state != "blank":
            private = PrivateKeyReport(**{**private.__dict__, "public_area_matches": matches})
    return _inspection(source, layout, private=private, server_area=server_area, facts=facts)


def _udp_private_area(area: bytes) -> PrivateKeyReport:
    """The 192-byte key slot of a UDP device (DCT 3106): SEC1 DER, then erased fill."""
    if not area or area[0] == _ERASED:
        return PrivateKeyReport(
            state="blank",
            problem="the key area is erased (first byte 0xFF); the device generates a new P-256 key at boot and "
            "presents that one (udp-dtls.md §1.2)",
        )
    try:
        report = _ec_private_report(outer_sequence(area, "the device private key"))
    except KeyFormatError as exc:
        return PrivateKeyReport(state="malformed", problem=str(exc))
    if report is None:
        return PrivateKeyReport(
            state="malformed", problem="the key area holds no P-256 private key (SEC1 DER, as Device OS stores it)"
        )
    return report


def inspect_image(image: DctImage, facts: CloudFacts = CloudFacts()) -> KeyInspection:
    """Inspect a whole DCT image (Photon/P1) or external-flash image (Core)."""
    return inspect_key_areas(
        image.private_key_area,
        image.server_key_area,
        image.layout,
        facts,
        public_area=image.public_key_area,
        source="dct",
    )


def _looks_like_key(data: bytes, offset: int) -> bool:
    return data[offset : offset + 2] == b"\x30\x82"


def _image_layout(data: bytes) -> Layout:
    """Photon/P1 unless only the Core's areas hold DER (a Core image is at least 0x2400 bytes)."""
    photon, core = key_layout(Layout.PHOTON), key_layout(Layout.CORE)
    if len(data) < core.image_size:
        return Layout.PHOTON
    photon_score = _looks_like_key(data, photon.private_key.address) + _looks_like_key(data, photon.server_key.address)
    core_score = _looks_like_key(data, core.private_key.address) + _looks_like_key(data, core.server_key.address)
    return Layout.CORE if core_score > photon_score else Layout.PHOTON


def _is_server_key_file(data: bytes) -> bool:
    if len(data) == UDP_SERVER_KEY_FILE_SIZE:
        return data.startswith(_SPKI_P256_HEADER) or data[0] == _ERASED
    sizes = {size for layout in TCP_LAYOUTS for size in (layout.size, layout.max_size)}
    if len(data) not in sizes:
        return False
    return data.startswith(_SPKI_2048_HEADER) or data.count(_ERASED) == len(data) or data[0] == _ERASED


def _ec_private_report(data: bytes) -> PrivateKeyReport | None:
    """A UDP device's P-256 key, as Device OS stores it (SEC1 DER) or in another form; None for anything else."""
    try:
        key = load_ec_private_key(data)
    except KeyFormatError:
        return None
    key_fingerprint = fingerprint(key)
    if data.lstrip().startswith(_PEM_MARK):
        encoding = "P-256 PEM"
    elif data.startswith(b"\x30") and b"\x2a\x86\x48\xce\x3d\x02\x01" in data[:32]:
        encoding = "P-256 PKCS#8 DER"  # the key algorithm's OID leads: PKCS#8, not the SEC1 Device OS stores
    else:
        encoding = "P-256 SEC1 DER"
    return PrivateKeyReport(
        state="ok", fingerprint=key_fingerprint, presented_fingerprint=key_fingerprint, encoding=encoding
    )


def inspect_file(data: bytes, layout: Layout | None = None, facts: CloudFacts = CloudFacts()) -> KeyInspection:
    """Inspect whatever an operator has: a DCT dump (``dfu-util -U``), a server-key file, a key-area dump, or
    a private or public key file (PEM or DER).

    Sizes decide: 512, 768 and 2048 bytes holding a server key or erased are a server-key file; anything at
    least as long as a Photon's key areas (2594 bytes) is an image, a Core's when only the Core's areas hold
    keys or ``layout`` says so; everything else is a key.
    """
    if not data:
        raise KeyFormatError("the file is empty")
    chosen = layout or Layout.PHOTON
    if not data.lstrip().startswith(_PEM_MARK) and _is_server_key_file(data):
        server_layout = layout or (
            Layout.UDP
            if len(data) == UDP_SERVER_KEY_FILE_SIZE
            else Layout.CORE
            if len(data) == Layout.CORE.size
            else Layout.PHOTON
        )
        return _inspection("server_key", server_layout, private=None, server_area=data, facts=facts)
    udp_private = _ec_private_report(data)
    if udp_private is not None:
        return _inspection("private_key", Layout.UDP, private=udp_private, server_area=None, facts=facts)
    if not data.lstrip().startswith(_PEM_MARK) and len(data) >= key_layout(Layout.PHOTON).server_key.end:
        return inspect_image(DctImage(layout or _image_layout(data), data), facts)
    private = inspect_private_key(data)
    if private.state == "malformed" and not _holds_private_key(data):
        public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None
        try:
            public = load_public_key(data)
        except KeyFormatError:
            try:
                public = load_ec_public_key(data)
            except KeyFormatError:
                public = None
        if public is not None:
            udp = isinstance(public, ec.EllipticCurvePublicKey)
            return _public_inspection(public, Layout.UDP if udp else chosen, facts)
    return _inspection("private_key", chosen, private=private, server_area=None, facts=facts)


def _holds_private_key(data: bytes) -> bool:
    try:
        load_private_key(data)
    except KeyFormatError:
        return False
    return True


def _public_inspection(
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, layout: Layout, facts: CloudFacts
) -> KeyInspection:
    """A public key file: only its size and whether the cloud holds it can be said."""
    device = facts.device_id or "DEVICE_ID"
    key_fingerprint = fingerprint(public)
    encoding = None
    if isinstance(public, rsa.RSAPublicKey):
        try:
            check_device_public_key(public)
        except KeyFormatError as exc:
            finding = Finding("problem", "public_key_unusable", f"Not a device public key: {exc}.")
            return KeyInspection(source="public_key", layout=layout, findings=(finding,), device_id=facts.device_id)
    else:
        encoding = "P-256 public key"
        udp_public_key_der(public)  # P-256 only (load_ec_public_key checked the curve)
    report = PrivateKeyReport(
        state="ok", fingerprint=key_fingerprint, presented_fingerprint=key_fingerprint, encoding=encoding
    )
    cloud, held, findings = _cloud_findings(report, facts, device)
    findings.insert(0, Finding("info", "public_key", f"Device public key {key_fingerprint}."))
    return KeyInspection(
        source="public_key",
        layout=layout,
        cloud=cloud,
        cloud_fingerprint=held,
        findings=tuple(findings),
        device_id=facts.device_id,
    )


def addresses_of(files: Iterable[bytes]) -> tuple[ServerAddress, ...]:
    """The addresses held by server-key files (for :attr:`CloudFacts.addresses`); unusable files are skipped."""
    found: list[ServerAddress] = []
    for data in files:
        try:
            parsed = parse_server_key_file(data)
        except KeyFormatError:
            continue
        if parsed.address is not None and parsed.address_state == "ok" and parsed.address not in found:
            found.append(parsed.address)
    return tuple(found)
