"""From log records to signals: what each line says about the connection, whatever the format.

The texts differ by Device OS version (field-failures.md §4.2–§4.6, protocol.md §9.2): legacy 0.5.x
`Handshake: Unable to receive key -19`, 0.6.1 `Unable to receive key -19`, 0.8+ `Handshake failed: 26`,
the cloud-debug firmware's `could not connect to device server by CoAP`. Every matcher runs on the
normalized text (lower case, typos fixed), and the first that matches a record wins, so the patterns are
ordered from the specific to the general.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .codes import decimal
from .readers import LogFormat, LogRecord, normalize

__all__ = ["Sig", "Signal", "extract_signals"]


class Sig:
    """Signal kinds."""

    DEVICE_ID = "device_id"
    WIFI_CONNECTING = "wifi_connecting"
    WIFI_CONNECTED = "wifi_connected"
    WIFI_FAILED = "wifi_failed"
    LISTENING = "listening"
    CLOUD_CONNECTING = "cloud_connecting"
    SERVER_ADDRESS = "server_address"
    DNS_OK = "dns_ok"
    DNS_FAILED = "dns_failed"
    DNS_SERVER_ZERO = "dns_server_zero"
    SOCKET_OK = "socket_ok"
    SOCKET_FAILED = "socket_failed"
    INTERNET_FAILED = "internet_failed"
    CLOUD_UNREACHABLE = "cloud_unreachable"
    CLOUD_ERROR = "cloud_error"
    WLAN_RESET = "wlan_reset"
    PING = "ping"
    COAP_TEST = "coap_test"
    HANDSHAKE_START = "handshake_start"
    STEP = "step"
    FAIL = "fail"
    SOCKET_ERROR = "socket_error"
    PROTOCOL_FAILED = "protocol_failed"
    HANDSHAKE_FAILED = "handshake_failed"
    HANDSHAKE_DONE = "handshake_done"
    HELLO_SENT = "hello_sent"
    SESSION_RESUMED = "session_resumed"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"
    SESSION_DROP = "session_drop"
    DROP_CAUSE = "drop_cause"
    CLOUD_STATUS = "cloud_status"
    STILL_TRYING = "still_trying"
    CLOUD_ERR_DIAG = "cloud_err_diag"
    KEY_GENERATED = "key_generated"
    SERVER_KEY_RESTORED = "server_key_restored"
    SERVER_ADDRESS_RESTORED = "server_address_restored"
    KEY_ERROR_FLAGS = "key_error_flags"
    LAST_RESET = "last_reset"
    SAFE_MODE = "safe_mode"
    PANIC = "panic"
    OTA_BEGIN = "ota_begin"
    OTA_CHUNK_BAD = "ota_chunk_bad"
    OTA_DONE = "ota_done"
    REBOOT = "reboot"


@dataclass(slots=True)
class Signal:
    kind: str
    record: LogRecord
    values: dict[str, str | int | bool | None] = field(default_factory=dict)

    @property
    def line(self) -> int:
        return self.record.line

    @property
    def time_ms(self) -> int | None:
        return self.record.time_ms

    def int(self, key: str) -> int | None:
        value = self.values.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def str(self, key: str) -> str | None:
        value = self.values.get(key)
        return value if isinstance(value, str) else None


Values = dict[str, str | int | bool | None]
_Builder = Callable[[re.Match[str], LogRecord], tuple[str, Values] | None]


def _num(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"\s*-?\d+\s*", text):
        return None
    return decimal(text)


def _negated(text: str | None) -> int | None:
    """A socket error the firmware prints without its sign."""
    value = decimal(text or "0")
    return None if value is None else -value


def _const(signal_kind: str, **values: str | int | bool | None) -> _Builder:
    return lambda _m, _r: (signal_kind, dict(values))


def _step(step: str) -> _Builder:
    return _const(Sig.STEP, step=step)


def _fail(step: str, kind: str, code: int | None = None) -> _Builder:
    def build(match: re.Match[str], record: LogRecord) -> tuple[str, Values]:
        groups = match.groupdict()
        value = _num(groups.get("code")) if code is None else code
        if value is None and record.code is not None:
            value = record.code
        return Sig.FAIL, {"step": step, "kind": kind, "code": value}

    return build


def _groups(kind: str, **convert: Callable[[str | None], str | int | bool | None]) -> _Builder:
    def build(match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
        values: Values = {}
        for name, text in match.groupdict().items():
            values[name] = convert[name](text) if name in convert else text
        return kind, values

    return build


def _dns_answer(match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
    host, ip = match["host"], match["ip"]
    if ip == "0.0.0.0":
        return Sig.DNS_FAILED, {"host": host, "try": None}
    return Sig.DNS_OK, {"host": host, "ip": ip}


def _cloud_status(match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
    return Sig.CLOUD_STATUS, {"status": match["status"]}


def _step_bytes(match: re.Match[str], _record: LogRecord) -> tuple[str, Values] | None:
    # Format A byte counts identify the handshake step even without the handshake lines (§4.2): the
    # nonce is 40 bytes in, the handshake 256 out, the session key 384 in, the Hello 18 out.
    received, written = match["received"], match["written"]
    direction, count = ("receive", decimal(received)) if received else ("write", decimal(written or "0"))
    steps = {("receive", 40): "S2", ("write", 256): "S5", ("receive", 384): "S6", ("write", 18): "S8"}
    step = None if count is None else steps.get((direction, count))
    if step is None:
        return None
    return Sig.STEP, {"step": step, "bytes": count}


def _brownout(_match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
    return Sig.LAST_RESET, {"reason": "brownout"}


def _event_loop(match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
    return Sig.SESSION_DROP, {"kind": "event_loop", "code": _num(match["code"])}


def _last_reset(match: re.Match[str], _record: LogRecord) -> tuple[str, Values]:
    return Sig.LAST_RESET, {"reason": match["reason"]}


_PATTERNS: tuple[tuple[re.Pattern[str], _Builder], ...] = tuple(
    (re.compile(pattern), builder)
    for pattern, builder in (
        # Identity and Wi-Fi.
        (r"^device (?P<id>[0-9a-f]{24}) started", _groups(Sig.DEVICE_ID)),
        (r"\bdevice ?id\s*[:=]?\s*(?P<id>[0-9a-f]{24})\b", _groups(Sig.DEVICE_ID)),
        (r"listening\(\): 1|entering listening mode|^listening mode", _const(Sig.LISTENING)),
        (r"resetting wlan due to (?P<count>\d+) failed connect attempts", _groups(Sig.WLAN_RESET, count=_num)),
        (r"^connecting to wi-?fi|wlan connecting|^arm_wlan_wd 1\b", _const(Sig.WIFI_CONNECTING)),
        (
            r"^connected to wi-?fi|wlan connected|dhcp success|^clr_wlan_wd 1\b|^connected to wi-?fi in",
            _const(Sig.WIFI_CONNECTED),
        ),
        (r"(?:wi-?fi|wlan|dhcp)\S*\s.*\b(?:failed|timeout|timed out)\b", _const(Sig.WIFI_FAILED)),
        # Cloud connection status from application code on firmware without system logs (§4.6).
        (
            r"cloud.?status\b.*?\b(?P<status>disconnecting|disconnected|connecting|connected)\b",
            _cloud_status,
        ),
        # S0: address, DNS, socket.
        (r"^cloud: connecting|^connecting to cloud", _const(Sig.CLOUD_CONNECTING)),
        # particle-iot/cloud-debug reports every 10 s while the cloud is not connected (§4.5).
        (r"^still trying to connect to the cloud", _const(Sig.STILL_TRYING)),
        (
            r"(?:read server address =|read_serveraddress\(\) =)\s*type:\s*(?P<type>\d+)"
            r"(?:,\s*(?:domain:\s*(?P<domain>[^,\s]*)|defaulting to (?P<default>[^,\s]+)))?"
            r"(?:,\s*ip:\s*(?P<ip>[\d.]*))?(?:,\s*port:\s*(?P<port>\d+))?",
            _groups(Sig.SERVER_ADDRESS, type=_num, port=_num),
        ),
        (r"resolved host (?P<host>\S+) to (?P<ip>[\d.]+)", _groups(Sig.DNS_OK)),
        (r"unable to resolve ip for (?P<host>\S+)", _groups(Sig.DNS_FAILED)),
        (r"^failed to get (?P<host>\S+) from dns,? try (?P<try>\d+)", _groups(Sig.DNS_FAILED, **{"try": _num})),
        (r"^dnsserverip=0\.0\.0\.0", _const(Sig.DNS_SERVER_ZERO)),
        (r"^(?P<host>[a-z0-9-]+(?:\.[a-z0-9-]+)+)=(?P<ip>\d+\.\d+\.\d+\.\d+)$", _dns_answer),
        (r"connected to device server coap", _const(Sig.COAP_TEST, ok=True)),
        (r"could not connect to device server by coap", _const(Sig.COAP_TEST, ok=False)),
        (
            r"connection failed to (?P<ip>[\d.]+):(?P<port>\d+),? code\s*=\s*(?P<code>-?\d+)",
            _groups(Sig.SOCKET_FAILED, port=_num, code=_num),
        ),
        (r"cloud socket connection failed:?\s*(?P<code>-?\d+)", _groups(Sig.SOCKET_FAILED, code=_num)),
        # 3.x: "Failed to connect to A.B.C.D:5683 (111)"; 1.x/2.x: "Cloud socket=N, failed to connect to
        # A.B.C.D#5683, errno=N". The errno values are lwIP's, the same numbers as POSIX.
        (
            r"failed to connect to (?P<ip>[\d.]+)[:#](?P<port>\d+),?\s*(?:\(|errno\s*=\s*)(?P<errno>\d+)\)?",
            _groups(Sig.SOCKET_FAILED, port=_num, errno=_num),
        ),
        (r"connected to cloud (?P<ip>[\d.]+):(?P<port>\d+)", _groups(Sig.SOCKET_OK, port=_num)),
        (r"^cloud socket connected", _const(Sig.SOCKET_OK)),
        (
            r"(?:^|socket=\d+, )connected to (?P<ip>\d+\.\d+\.\d+\.\d+)[:#](?P<port>\d+)$",
            _groups(Sig.SOCKET_OK, port=_num),
        ),
        (r"internet test failed", _const(Sig.INTERNET_FAILED)),
        (r"internet available, cloud not reachable", _const(Sig.CLOUD_UNREACHABLE)),
        (r"handling cloud error:?\s*(?P<code>\d+)", _groups(Sig.CLOUD_ERROR, code=_num)),
        (
            r"^ping (?P<target>gateway|dnsserverip|addr (?P<ip>\S+))\s*=\s*(?P<ok>\d)",
            _groups(Sig.PING, ok=lambda t: t == "1"),
        ),
        # Handshake, legacy and new stack (§4.4, protocol.md §9.2).
        (r"starting handshake|establish secure connection", _const(Sig.HANDSHAKE_START)),
        (r"could not receive nonce:?\s*(?P<code>-?\d+)?", _fail("S1", "nonce")),
        (r"rsa encrypt error:?\s*(?P<code>-?\d+)?", _fail("S2", "rsa_encrypt")),
        (r"unable to receive key:?\s*(?P<code>-?\d+)?", _fail("S5", "receive_key")),
        (r"decryption failed with code (?P<code>-?\d+)", _fail("S6", "decrypt", 6)),
        (r"signature validation failed with code (?P<code>-?\d+)", _fail("S6", "signature", 8)),
        (r"could not set key,?\s*(?P<code>-?\d+)?", _fail("S6", "set_key")),
        (r"could not send hello message:?\s*(?P<code>-?\d+)?", _fail("S7", "hello_send")),
        (r"could not receive hello response:?\s*(?P<code>-?\d+)?", _fail("S8", "hello_receive")),
        (
            r"unable to parse negotiated pub key:?\s*(?P<code>-?[0-9a-f]+)?",
            _const(Sig.FAIL, step="dtls", kind="server_key"),
        ),
        (r"setup_context error:?\s*(?P<code>-?\d+)?", _const(Sig.FAIL, step="dtls", kind="setup_context")),
        (r"cloud handshake failed,? code\s*=\s*(?P<code>-?\d+)", _groups(Sig.HANDSHAKE_FAILED, code=_num)),
        (
            r"handshake failed(?: with code|:)?\s*(?P<code>-?[0-9a-f]+)\b",
            _groups(Sig.PROTOCOL_FAILED, code=lambda t: t),
        ),
        (r"socket \d+ receive fail (?P<code>\d+)", _groups(Sig.SOCKET_ERROR, code=_negated)),
        (r"socket_receive on \S+ returned (?P<code>-?\d+)", _groups(Sig.SOCKET_ERROR, code=_num)),
        (r"^receive error (?P<code>-?\d+)", _groups(Sig.SOCKET_ERROR, code=_num)),
        (r"^receive timeout", _const(Sig.SOCKET_ERROR, code=-1, timeout=True)),
        (r"started[:,] receive nonce", _step("S1")),
        (r"encrypting (?:handshake )?nonce", _step("S2")),
        (r"sending encrypted nonce", _step("S3")),
        (r"^(?:handshake: )?receive key$", _step("S5")),
        (r"^(?:handshake: )?setting key$", _step("S6")),
        (r"sending hello message", _const(Sig.HELLO_SENT)),
        (r"receiving hello response", _step("S8")),
        (
            r"socket \d+ receive bytes (?P<received>\d+) of (?P=received)|write (?P<written>\d+) bytes to socket",
            _step_bytes,
        ),
        (r"resumed session - not sending hello|restored session from persisted session", _const(Sig.SESSION_RESUMED)),
        (r"^completed$|^handshake: completed|^handshake completed", _const(Sig.HANDSHAKE_DONE)),
        (
            r"^cloud connected|^connected to the cloud|successfully connected to the particle cloud",
            _const(Sig.CONNECTED),
        ),
        (r"^cloud: disconnecting", _const(Sig.DISCONNECTING)),
        (r"^cloud: disconnected", _const(Sig.DISCONNECTED)),
        # The session ends (C12).
        (r"disconnecting cloud due to inactivity", _const(Sig.SESSION_DROP, kind="inactivity")),
        (r"communication loop error", _const(Sig.SESSION_DROP, kind="loop_error")),
        (r"bytes received error:?\s*(?P<code>-?\d+)", _groups(Sig.SESSION_DROP, code=_num)),
        (r"lost cloud connection after", _const(Sig.SESSION_DROP, kind="lost")),
        # The new stack's session loop failed with a ProtocolError (1 is PING_TIMEOUT): a session existed.
        (r"event loop error:?\s*(?P<code>-?\d+)", _event_loop),
        (r"received error coapmessage", _const(Sig.DROP_CAUSE, kind="coap_error")),
        (r"\bcloud:err\b\D{0,4}(?P<code>\d+)", _groups(Sig.CLOUD_ERR_DIAG, code=_num)),
        # Keys and the server block (§3.1, §3.2, C16).
        (r"public server key was blank", _const(Sig.SERVER_KEY_RESTORED)),
        (r"public server address was blank", _const(Sig.SERVER_ADDRESS_RESTORED)),
        (r"spark/device/key/error\W{1,3}(?P<flags>\d+)", _groups(Sig.KEY_ERROR_FLAGS, flags=_num)),
        (
            r"\b(?:generating|generated|generate) (?:a )?(?:new )?(?:device )?(?:private )?keys?\b|blinking white",
            _const(Sig.KEY_GENERATED),
        ),
        # History: power, crashes, safe mode, updates (C13, C15, C17).
        (
            r"(?:last_reset|reset.?reason)\W+.*?(?P<reason>power_brownout|power_down|power_management|panic[, ]*\w*"
            r"|watchdog|pin_reset|update|user)\b",
            _last_reset,
        ),
        (r"reset_reason_(?P<reason>power_brownout|power_down|power_management|panic|watchdog|pin_reset)", _last_reset),
        (r"\b(?P<reason>brown-?out)\b.*\breset\b|\breset\b.*\b(?P<reason2>brown-?out)\b", _brownout),
        (
            r"spark/status/safe-mode|enter\w* safe.?mode|\bin safe.?mode|safe.?mode healer|breathing magenta",
            _const(Sig.SAFE_MODE),
        ),
        (r"\bsos\b\D{0,12}(?P<code>\d+)|hard.?fault|out of heap|stack overflow", _groups(Sig.PANIC, code=_num)),
        (r"received updatebegin|starting file length (?P<size>\d+)", _groups(Sig.OTA_BEGIN, size=_num)),
        (r"invalid chunk crc|chunk bad", _const(Sig.OTA_CHUNK_BAD)),
        (
            r"update done: all done|update done in|send spark/device/ota_result|updatedone response",
            _const(Sig.OTA_DONE),
        ),
    )
)


def _event_signal(record: LogRecord) -> tuple[str, Values] | None:
    """Cloud events (`particle subscribe` output, event streams)."""
    name = (record.event_name or "").lower()
    data = record.event_data or ""
    if name == "spark/device/last_reset":
        return Sig.LAST_RESET, {"reason": data.strip().lower() or None}
    if name == "spark/device/key/error":
        return Sig.KEY_ERROR_FLAGS, {"flags": _num(data)}
    if name == "spark/status/safe-mode":
        return Sig.SAFE_MODE, {"detail": data[:500]}
    if name == "spark/flash/status":
        # The update's progress as the cloud forwards it: "started", "success" or "failed".
        state = data.strip().lower()
        if state.startswith("started"):
            return Sig.OTA_BEGIN, {"size": None}
        if state.startswith("success"):
            return Sig.OTA_DONE, {}
        return None
    if name == "spark/status" and data.strip().lower() in ("online", "offline"):
        return (Sig.CONNECTED if data.strip().lower() == "online" else Sig.DISCONNECTED), {"event": True}
    return None


def _signal(record: LogRecord) -> Signal | None:
    if record.format == LogFormat.EVENT:
        found = _event_signal(record)
        return Signal(found[0], record, found[1]) if found else None
    text = normalize(record.message)
    if not text:
        return None
    for pattern, builder in _PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        built = builder(match, record)
        if built is None:
            continue
        kind, values = built
        return Signal(kind, record, values)
    if record.level == "PANIC":
        return Signal(Sig.PANIC, record, {"code": None})
    return None


#: A jump back in the millisecond counter larger than this is a restart, not jitter.
_REBOOT_JUMP_MS = 1000
#: The counter wraps after 2^32 ms (about 49.7 days, §4.3): a jump back from near the top is a wrap.
_WRAP_NEAR_MS = 2**32 - 10 * 60 * 1000


def extract_signals(records: Iterable[LogRecord]) -> list[Signal]:
    """The signals of `records` in order, with a REBOOT where the millisecond counter goes back."""
    found: list[Signal] = []
    last_time: int | None = None
    for record in records:
        if record.duplicate:
            continue
        if record.time_ms is not None:
            if last_time is not None and record.time_ms + _REBOOT_JUMP_MS < last_time < _WRAP_NEAR_MS:
                found.append(Signal(Sig.REBOOT, record, {"from_ms": last_time}))
            last_time = record.time_ms
        signal = _signal(record)
        if signal is not None:
            found.append(signal)
    return found
