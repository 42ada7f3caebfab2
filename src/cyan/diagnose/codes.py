"""What the numbers in a device log mean (field-failures.md §1.2, protocol.md §9.1–§9.4, §12.1).

One number can mean different things depending on where it was printed: `-19` after "Unable to receive key"
is a raw WICED socket code (legacy stack), `26` after "Handshake failed:" is a ProtocolError (0.8+), and
`-220` after "Cloud handshake failed, code=" is a system error (2.x+). `explain_code` therefore returns
every reading that fits, the likeliest first, and takes an optional hint saying where the number came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CodeKind",
    "CodeReading",
    "explain_code",
    "explain_code_text",
    "explain_key_error_flags",
    "parse_code",
    "protocol_error_name",
    "sos_meaning",
]


class CodeKind:
    """Where a number comes from. The values are stable: they appear in the JSON output."""

    PROTOCOL = "protocol_error"  # communication/inc/protocol_defs.h, also `cloud:err` and Device Vitals
    SYSTEM = "system_error"  # services/inc/system_error.h, 2.x `Cloud handshake failed, code=`
    SOCKET = "socket"  # Photon/P1 WICED result, negated (hal/src/photon/socket_hal.cpp)
    ERRNO = "errno"  # POSIX errno: the Linux virtual device's socket errors
    MBEDTLS = "mbedtls"  # Electron DTLS, printed in hex
    CLOUD_ERROR = "cloud_error"  # `Handling cloud error: N`, the number of orange blinks
    SOS = "sos"  # the blink count between two SOS patterns
    KEY_ERROR = "key_error_flags"  # `spark/device/key/error` bit mask


@dataclass(frozen=True, slots=True)
class CodeReading:
    """One way to read a number."""

    code: int
    kind: str
    name: str
    meaning: str
    #: Catalog entries (field-failures.md §2) this reading points at, likeliest first.
    entries: tuple[str, ...] = ()


# ProtocolError, with the real enumerator values (the header's comments are off by one from 21 on,
# field-failures.md §1.2, protocol.md §9.1).
_PROTOCOL: dict[int, tuple[str, str, tuple[str, ...]]] = {
    0: ("NO_ERROR", "no error", ()),
    1: ("PING_TIMEOUT", "the device pinged the cloud and heard nothing back within 10 s", ("C12",)),
    2: ("IO_ERROR", "a socket read or write failed", ("C12",)),
    3: ("INVALID_STATE", "the protocol was in a state that does not allow the operation", ()),
    4: ("INSUFFICIENT_STORAGE", "not enough room (for example for an update)", ()),
    5: ("MALFORMED_MESSAGE", "a message from the cloud could not be parsed", ("C8",)),
    6: (
        "DECRYPTION_ERROR",
        "the device could not decrypt the session key with its private key: the cloud encrypted it to a key "
        "that is not this device's (orange burst)",
        ("C6",),
    ),
    7: ("ENCRYPTION_ERROR", "the device could not encrypt a message", ()),
    8: (
        "AUTHENTICATION_ERROR",
        "the cloud's signature over the session key did not verify with the server public key the device holds "
        "(magenta burst)",
        ("C7",),
    ),
    9: ("BANDWIDTH_EXCEEDED", "too many messages", ()),
    10: (
        "MESSAGE_TIMEOUT",
        "an expected reply did not come in time; after a Hello on UDP this is the session-resume loop",
        ("C8",),
    ),
    11: ("MISSING_MESSAGE_ID", "a reply referred to an unknown message id", ()),
    12: ("MESSAGE_RESET", "the cloud answered with a CoAP reset", ()),
    13: ("SESSION_RESUMED", "a saved DTLS session was resumed (not an error)", ()),
    14: ("IO_ERROR_FORWARD_MESSAGE_CHANNEL", "I/O error in the message channel", ()),
    15: ("IO_ERROR_SET_DATA_MAX_EXCEEDED", "a message was larger than the buffer", ()),
    16: (
        "IO_ERROR_PARSING_SERVER_PUBLIC_KEY",
        "the server public key stored on the device could not be parsed: it is corrupt",
        ("C9",),
    ),
    17: ("IO_ERROR_GENERIC_ESTABLISH", "the (DTLS) handshake failed", ("C5", "C9")),
    18: ("IO_ERROR_GENERIC_RECEIVE", "a receive failed", ()),
    19: ("IO_ERROR_GENERIC_SEND", "a send failed", ()),
    20: ("IO_ERROR_GENERIC_MBEDTLS_SSL_WRITE", "a DTLS write failed", ()),
    21: ("IO_ERROR_DISCARD_SESSION", "the saved session was discarded", ("C8",)),
    22: ("IO_ERROR_LIGHTSSL_BLOCKING_SEND", "a blocking send failed during the handshake", ()),
    23: ("IO_ERROR_LIGHTSSL_BLOCKING_RECEIVE", "a blocking receive failed during the handshake", ()),
    24: ("IO_ERROR_LIGHTSSL_RECEIVE", "a receive failed", ()),
    25: (
        "IO_ERROR_LIGHTSSL_HANDSHAKE_NONCE",
        "the device did not receive the 40-byte nonce (handshake step S1)",
        ("C4",),
    ),
    26: (
        "IO_ERROR_LIGHTSSL_HANDSHAKE_RECV_KEY",
        "the device sent its handshake but never received the 384-byte session key (step S5): the cloud refused it",
        ("C5",),
    ),
    27: ("NOT_IMPLEMENTED", "not implemented", ()),
    28: ("MISSING_REQUEST_TOKEN", "a request from the cloud had no token", ("C12",)),
    29: ("NOT_FOUND", "not found", ()),
    30: ("NO_MEMORY", "out of memory", ("C13",)),
    31: ("INTERNAL", "internal error", ()),
    32: ("OTA_UPDATE_ERROR", "the update failed", ("C15",)),
    33: ("IO_ERROR_SOCKET_SEND_FAILED", "a socket send failed", ("C12",)),
    34: ("IO_ERROR_SOCKET_RECV_FAILED", "a socket receive failed", ("C12",)),
    35: ("IO_ERROR_REMOTE_END_CLOSED", "the cloud closed the connection", ("C5", "C12")),
    0x7FFFF: ("UNKNOWN", "unknown error", ()),
}

# System errors (services/inc/system_error.h). Device OS 2.x converts ProtocolError to these before it
# prints `Cloud handshake failed, code=` (protocol.md §9.1, `toSystemError`).
_SYSTEM: dict[int, tuple[str, str, tuple[str, ...]]] = {
    -100: ("UNKNOWN", "unknown error", ()),
    -110: ("BUSY", "busy", ()),
    -120: ("NOT_SUPPORTED", "not supported", ()),
    -130: (
        "NOT_ALLOWED",
        "on a handshake: AUTHENTICATION_ERROR (8) converted by 2.x; the server's signature did not verify",
        ("C7",),
    ),
    -140: ("CANCELLED", "cancelled", ()),
    -150: ("ABORTED", "aborted", ()),
    -160: ("TIMEOUT", "on a handshake: PING_TIMEOUT or MESSAGE_TIMEOUT converted by 2.x", ("C8", "C12")),
    -170: ("NOT_FOUND", "not found", ()),
    -180: ("ALREADY_EXISTS", "already exists", ()),
    -190: ("TOO_LARGE", "INSUFFICIENT_STORAGE converted by 2.x", ()),
    -200: ("LIMIT_EXCEEDED", "BANDWIDTH_EXCEEDED converted by 2.x", ()),
    -210: ("INVALID_STATE", "invalid state", ()),
    -220: (
        "IO",
        "on a handshake: any I/O ProtocolError converted by 2.x (25 nonce not received, 26 session key not "
        "received, ...); the preceding `Handshake failed:` line has the exact one",
        ("C5", "C4"),
    ),
    -230: ("NETWORK", "network error", ("C2", "C3")),
    -240: (
        "PROTOCOL",
        "on a handshake: DECRYPTION_ERROR (6) or another protocol error converted by 2.x",
        ("C6",),
    ),
    -250: ("INTERNAL", "internal error", ()),
    -260: ("NO_MEMORY", "out of memory", ("C13",)),
    -270: ("INVALID_ARGUMENT", "invalid argument", ()),
    -280: ("BAD_DATA", "bad data", ()),
    -290: ("OUT_OF_RANGE", "out of range", ()),
}

# WICED results on Photon/P1, negated by socket_hal.cpp (protocol.md §9.3, §9.4).
_SOCKET: dict[int, tuple[str, str, tuple[str, ...]]] = {
    -1: (
        "TIMEOUT_OR_CLOSED",
        "nothing arrived for 20 s (the blocking receive gave up), or the socket was already gone (Wi-Fi reset)",
        ("C4", "C5", "C8"),
    ),
    -2: ("WICED_TIMEOUT", "timed out", ()),
    -4: ("WICED_ERROR", "generic error", ()),
    -11: ("WICED_CONNECTION_LOST", "the connection was lost (Wi-Fi dropped)", ("C12",)),
    -16: ("WICED_WOULD_BLOCK", "would block", ()),
    -17: ("WICED_ABORTED", "aborted", ()),
    -18: (
        "WICED_CONNECTION_RESET",
        "the peer reset the connection (TCP RST): something refused or cut it at once",
        ("C4", "C5"),
    ),
    -19: (
        "WICED_CONNECTION_CLOSED",
        "the peer closed the connection in an orderly way (FIN). After the device sent its handshake, this is "
        "the cloud refusing it: wrong server key on the device, a regenerated device key, or an unknown device",
        ("C5", "C4"),
    ),
    -20: ("WICED_NOT_CONNECTED", "the socket is not connected", ("C3",)),
    -26: ("WICED_INVALID_SOCKET", "invalid socket", ()),
}

# POSIX errno values the Linux virtual device prints, e.g. `Failed to connect to 127.0.0.1:5683 (111)`.
_ERRNO: dict[int, tuple[str, str, tuple[str, ...]]] = {
    101: ("ENETUNREACH", "no route to the network", ("C2",)),
    104: ("ECONNRESET", "the connection was reset by the peer", ("C4", "C12")),
    110: ("ETIMEDOUT", "the connection attempt timed out: a firewall drops the packets, or the host is down", ("C3",)),
    111: ("ECONNREFUSED", "the host answered, but nothing listens on that port: the server is down", ("C3",)),
    113: ("EHOSTUNREACH", "no route to the host", ("C2", "C3")),
}

# mbedTLS errors the Electron logs in hex (field-failures.md §1.2).
_MBEDTLS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    -0x6800: ("MBEDTLS_ERR_SSL_TIMEOUT", "the DTLS peer did not answer in time", ("C8",)),
    -0x7780: (
        "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE",
        "the server sent a fatal alert: it refused the handshake",
        ("C5",),
    ),
    -0x7880: ("MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY", "the server closed the DTLS session", ("C5",)),
    -0x7180: ("MBEDTLS_ERR_SSL_INVALID_MAC", "a record failed its MAC check: the session keys differ", ("C8",)),
    -0x7B00: (
        "MBEDTLS_ERR_SSL_BAD_HS_SERVER_KEY_EXCHANGE",
        "the server's key exchange did not verify against the server key the device holds",
        ("C5", "C9"),
    ),
    -0x3B62: (
        "MBEDTLS_ERR_PK_INVALID_PUBKEY + ASN1_UNEXPECTED_TAG",
        "the server public key stored on the device is corrupt (ProtocolError 16 follows)",
        ("C9",),
    ),
}

_CLOUD_ERROR: dict[int, tuple[str, str, tuple[str, ...]]] = {
    2: (
        "INTERNET_TEST_FAILED",
        "2 orange blinks: the cloud socket failed and so did the internet test (TCP to 8.8.8.8:53)",
        ("C2", "C10"),
    ),
    3: (
        "CLOUD_UNREACHABLE",
        "3 orange blinks: the internet test passed but the cloud could not be reached",
        ("C3", "C10"),
    ),
}

_SOS: dict[int, str] = {
    1: "hard fault",
    2: "non-maskable interrupt fault",
    3: "memory manager fault",
    4: "bus fault",
    5: "usage fault",
    6: "invalid length",
    7: "exit",
    8: "out of heap memory",
    9: "SPI overrun",
    10: "assertion failure",
    11: "invalid case",
    12: "pure virtual call",
    13: "stack overflow",
    14: "heap error",
}

_KEY_ERROR_FLAGS: dict[int, str] = {
    1: "PUBLIC_SERVER_KEY_BLANK: the server public key was blank and a built-in (Particle) key is used from RAM",
    2: "PUBLIC_SERVER_KEY_CORRUPTED (defined, never set on Gen 2)",
    4: "SERVER_ADDRESS_BLANK: the server address was blank or invalid and device.spark.io is used from RAM",
    8: "SERVER_ADDRESS_CORRUPTED (defined, never set on Gen 2)",
    16: "PUBLIC_DEVICE_KEY_BLANK (defined, never set on Gen 2)",
    32: "PUBLIC_DEVICE_KEY_CORRUPTED (defined, never set on Gen 2)",
    64: "PRIVATE_DEVICE_KEY_BLANK (defined, never set on Gen 2)",
    128: "PRIVATE_DEVICE_KEY_CORRUPTED (defined, never set on Gen 2)",
}

_TABLES: dict[str, dict[int, tuple[str, str, tuple[str, ...]]]] = {
    CodeKind.PROTOCOL: _PROTOCOL,
    CodeKind.SYSTEM: _SYSTEM,
    CodeKind.SOCKET: _SOCKET,
    CodeKind.ERRNO: _ERRNO,
    CodeKind.MBEDTLS: _MBEDTLS,
    CodeKind.CLOUD_ERROR: _CLOUD_ERROR,
}

_NUMBER = re.compile(r"^\s*(?:[a-z:_ ]*[=:]\s*)?(?P<sign>[-+]?)\s*(?P<hex>0x)?(?P<digits>[0-9a-f]+)\s*$", re.IGNORECASE)


#: More digits than any code, count or time a device prints (a 32-bit number has 10). Longer runs are not
#: numbers to us; `int()` would even refuse a decimal string over 4300 digits (ValueError, Python 3.11+).
MAX_DIGITS = 20


def decimal(text: str) -> int | None:
    """The integer `text` writes in decimal (a sign and surrounding white space allowed), or None when it is
    not one or is longer than any number a device prints.

    `str.isdecimal`, not `isdigit`: superscripts and circled digits are digits to `isdigit` but not to `int()`.
    """
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("-", "+") else stripped
    if not digits.isdecimal() or len(digits) > MAX_DIGITS:
        return None
    return int(stripped)


def parse_code(text: str) -> tuple[int, bool] | None:
    """An integer from `-19`, `26`, `code=-19`, `0x1A` or `-3b62` (hex when it has letters or 0x).

    Returns the value and whether it was written in hex, or None for text that is not a number.
    """
    match = _NUMBER.match(text)
    if match is None:
        return None
    digits = match["digits"]
    if len(digits) > MAX_DIGITS:
        return None
    is_hex = bool(match["hex"]) or any(c in "abcdefABCDEF" for c in digits)
    if not is_hex and not digits.isdigit():
        return None
    value = int(digits, 16 if is_hex else 10)
    return (-value if match["sign"] == "-" else value), is_hex


def protocol_error_name(code: int) -> str | None:
    entry = _PROTOCOL.get(code)
    return entry[0] if entry else None


def sos_meaning(count: int) -> str | None:
    return _SOS.get(count)


def explain_key_error_flags(flags: int) -> list[str]:
    """The bits of a `spark/device/key/error` value (protocol.md §12.1; only 1 and 4 are ever set)."""
    return [text for bit, text in _KEY_ERROR_FLAGS.items() if flags & bit]


def _reading(kind: str, code: int) -> CodeReading | None:
    entry = _TABLES[kind].get(code)
    if entry is None:
        return None
    name, meaning, entries = entry
    return CodeReading(code, kind, name, meaning, entries)


def explain_code(code: int, hint: str | None = None, *, hex_written: bool = False) -> list[CodeReading]:
    """Every plausible reading of `code`, the likeliest first.

    `hint` is a `CodeKind` value when the context is known (a log line that says what it prints); then
    that reading comes first if it exists. Without a hint the sign and the size decide: small positive
    numbers are ProtocolErrors, -1..-99 raw socket codes, -100 and below system errors, hex values mbedTLS.
    """
    readings: list[CodeReading] = []

    def add(kind: str, value: int = code) -> None:
        if kind == CodeKind.SOS:
            meaning = sos_meaning(value)
            if meaning is not None:
                readings.append(CodeReading(value, CodeKind.SOS, f"SOS {value}", meaning, ("C13",)))
            return
        if kind == CodeKind.KEY_ERROR:
            bits = explain_key_error_flags(value)
            if bits:
                readings.append(CodeReading(value, CodeKind.KEY_ERROR, f"key error {value}", "; ".join(bits), ("C16",)))
            return
        reading = _reading(kind, value)
        if reading is not None and reading not in readings:
            readings.append(reading)

    if hint is not None:
        add(hint)
        if hint in (CodeKind.SOS, CodeKind.KEY_ERROR, CodeKind.CLOUD_ERROR):
            return readings  # numbers that only mean something in their own context
    if hex_written or hint == CodeKind.MBEDTLS:
        add(CodeKind.MBEDTLS)
    if code >= 0:
        add(CodeKind.PROTOCOL)
        add(CodeKind.ERRNO)
    elif code > -100:
        add(CodeKind.SOCKET)
    else:
        add(CodeKind.SYSTEM)
        add(CodeKind.MBEDTLS)
    return readings


_TEXT_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*sos\b", re.IGNORECASE), CodeKind.SOS),
    (re.compile(r"key.?error|key/error", re.IGNORECASE), CodeKind.KEY_ERROR),
    (re.compile(r"cloud.?error", re.IGNORECASE), CodeKind.CLOUD_ERROR),
    (re.compile(r"errno", re.IGNORECASE), CodeKind.ERRNO),
    (re.compile(r"mbedtls|dtls", re.IGNORECASE), CodeKind.MBEDTLS),
    (re.compile(r"system", re.IGNORECASE), CodeKind.SYSTEM),
    (re.compile(r"socket|wiced", re.IGNORECASE), CodeKind.SOCKET),
    (re.compile(r"cloud:err|protocol", re.IGNORECASE), CodeKind.PROTOCOL),
)
_LAST_NUMBER = re.compile(r"(?<![0-9a-z])(-?\s*(?:0x)?[0-9a-f]*[0-9][0-9a-f]*)\s*$", re.IGNORECASE)


def explain_code_text(text: str) -> list[CodeReading]:
    """Readings of a code as a person types it: `-19`, `26`, `code=-220`, `sos 8`, `key/error=5`,
    `cloud error 3`, `errno 111`, `-3b62`. An empty list when no number is found."""
    hint = next((kind for pattern, kind in _TEXT_HINTS if pattern.search(text)), None)
    match = _LAST_NUMBER.search(text.strip())
    if match is None:
        return []
    parsed = parse_code(match.group(1).replace(" ", ""))
    if parsed is None:
        return []
    value, hex_written = parsed
    decimal_only = hint in (CodeKind.SOS, CodeKind.KEY_ERROR, CodeKind.CLOUD_ERROR, CodeKind.ERRNO)
    if decimal_only and hex_written and not match.group(1).strip().lstrip("-").isdigit():
        return []  # "sos 8" and friends are decimal; a run of letters is not a number here
    return explain_code(value, hint, hex_written=hex_written)
