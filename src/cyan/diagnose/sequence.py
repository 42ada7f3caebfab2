"""The sequence analyser: connection attempts in a device log and the step where each one stopped.

The step model is field-failures.md §1.1 (S0 address/DNS/TCP connect … S9 system events), with `wifi`
before it, `session` after it and `dtls` for the Electron's UDP handshake. An attempt starts at
`Cloud: connecting` (or at the first handshake line when a capture starts in the middle), and ends at
`Cloud: disconnected`, at the next attempt, at a restart (the millisecond counter going back) or at the end
of the log. The *first* failure of an attempt is where it stopped: later lines are consequences (a
virtual device that failed to connect still logs a nonce timeout).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .codes import CodeKind, decimal
from .readers import LogFormat, LogRecord
from .signals import Sig, Signal, extract_signals

__all__ = [
    "STEP_DEPTH",
    "STEP_NAMES",
    "Attempt",
    "AttemptError",
    "DeviceStep",
    "LogAnalysis",
    "analyse",
]


class DeviceStep:
    """Connection steps, as the device sees them. The values are stable (JSON output)."""

    WIFI = "wifi"
    S0 = "S0"
    S1 = "S1"
    S2 = "S2"
    S3 = "S3"
    S5 = "S5"
    S6 = "S6"
    S7 = "S7"
    S8 = "S8"
    S9 = "S9"
    SESSION = "session"
    DTLS = "dtls"
    UNKNOWN = "unknown"


STEP_NAMES: dict[str, str] = {
    DeviceStep.WIFI: "Wi-Fi (before the cloud)",
    DeviceStep.S0: "server address, DNS and TCP connection to port 5683",
    DeviceStep.S1: "receive the server's 40-byte nonce",
    DeviceStep.S2: "encrypt the handshake with the server public key",
    DeviceStep.S3: "send the 256-byte encrypted handshake",
    DeviceStep.S5: "receive the 384-byte session key",
    DeviceStep.S6: "decrypt the session key and verify the server's signature",
    DeviceStep.S7: "send the Hello",
    DeviceStep.S8: "receive the server's Hello",
    DeviceStep.S9: "system events after the handshake",
    DeviceStep.SESSION: "connected session",
    DeviceStep.DTLS: "DTLS handshake (Electron, UDP)",
    DeviceStep.UNKNOWN: "a step the log does not show",
}

#: How far into a connection a step is; the deepest failure is the most informative one.
STEP_DEPTH: dict[str, int] = {
    DeviceStep.UNKNOWN: -1,
    DeviceStep.WIFI: 0,
    DeviceStep.S0: 1,
    DeviceStep.S1: 2,
    DeviceStep.S2: 3,
    DeviceStep.S3: 4,
    DeviceStep.DTLS: 5,
    DeviceStep.S5: 5,
    DeviceStep.S6: 6,
    DeviceStep.S7: 7,
    DeviceStep.S8: 8,
    DeviceStep.S9: 9,
    DeviceStep.SESSION: 10,
}

# The step a ProtocolError says the handshake stopped at (protocol.md §9.1, field-failures.md §1.2).
_PROTOCOL_STEP = {25: DeviceStep.S1, 26: DeviceStep.S5, 6: DeviceStep.S6, 8: DeviceStep.S6, 10: DeviceStep.S8}
_PROTOCOL_KIND = {25: "nonce", 26: "receive_key", 6: "decrypt", 8: "signature", 10: "hello_receive"}
# 2.x system errors for a handshake (`toSystemError`, protocol.md §9.1).
_SYSTEM_STEP = {-130: (DeviceStep.S6, "signature"), -240: (DeviceStep.S6, "decrypt")}


@dataclass(slots=True)
class AttemptError:
    """The first failure of an attempt."""

    #: What failed: dns_failed, socket_failed, cloud_error, nonce, rsa_encrypt, receive_key, decrypt,
    #: signature, set_key, hello_send, hello_receive, server_key, setup_context, dtls_handshake, handshake,
    #: status (an application's cloud_status went back to disconnected), socket.
    kind: str
    step: str
    code: int | None
    #: A `CodeKind` value: how to read `code`.
    code_kind: str | None
    line: int
    message: str


@dataclass(slots=True)
class Attempt:
    """One connection attempt."""

    index: int
    first_line: int
    last_line: int
    boot: int
    start_ms: int | None = None
    end_ms: int | None = None
    #: The furthest step the attempt entered.
    reached: str = DeviceStep.S0
    #: connected, dropped, failed, incomplete (the log ends) or interrupted (the device restarted).
    outcome: str = "incomplete"
    error: AttemptError | None = None
    #: `Cloud handshake failed, code=N`: raw socket code (legacy), ProtocolError (0.8–1.5), system error (2.x+).
    handshake_code: int | None = None
    #: `Handshake failed: N` of the new stack (a ProtocolError).
    protocol_code: int | None = None
    #: A low-level socket receive error seen during the attempt.
    socket_code: int | None = None
    #: `Handling cloud error: N` (2 or 3, the orange blinks).
    cloud_error: int | None = None
    #: The internet test after a failed socket: "failed" or "ok" (`Internet available, Cloud not reachable`).
    internet: str | None = None
    server_address: dict[str, str | int | bool | None] | None = None
    resolved_host: str | None = None
    resolved_ip: str | None = None
    socket_connected: bool = False
    connected_ip: str | None = None
    hello_sent: int = 0
    resumed: bool = False
    connected: bool = False
    #: How the session ended (C12): inactivity, loop_error, lost, bytes_error, status, reconnect.
    drop_kind: str | None = None
    drop_code: int | None = None
    drop_cause: str | None = None
    drop_line: int | None = None
    #: "reset" when a restart ended a connected session (an update does that on purpose).
    ended_by: str | None = None
    #: Milliseconds between entering the failing step and the failure (e.g. `Receive key` to the error).
    failure_after_ms: int | None = None
    step_started_ms: dict[str, int] = field(default_factory=dict)
    #: Lines of the signals of this attempt.
    lines: list[int] = field(default_factory=list)
    closed: bool = False
    #: Signal kinds applied so far (a second summary of a failure belongs to the next attempt).
    kinds: set[str] = field(default_factory=set)

    @property
    def stopped_at(self) -> str | None:
        if self.outcome == "failed" and self.error is not None:
            return self.error.step
        if self.outcome == "dropped":
            return DeviceStep.SESSION
        if self.outcome in ("incomplete", "interrupted"):
            return self.reached
        return None

    def enter(self, step: str, time_ms: int | None) -> None:
        if STEP_DEPTH[step] > STEP_DEPTH[self.reached]:
            self.reached = step
        if time_ms is not None:
            self.step_started_ms.setdefault(step, time_ms)


@dataclass(slots=True)
class LogAnalysis:
    """Everything the analyser found in one log."""

    records: list[LogRecord]
    signals: list[Signal]
    attempts: list[Attempt]
    device_id: str | None
    firmware: str | None
    reboots: int

    def of(self, *kinds: str) -> list[Signal]:
        """Signals of these kinds, in order."""
        return [s for s in self.signals if s.kind in kinds]

    @property
    def formats(self) -> dict[str, int]:
        return dict(Counter(r.format for r in self.records if r.raw.strip()))

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == "failed"]

    @property
    def primary(self) -> Attempt | None:
        """The attempt that says the most: the failed one that got furthest (the latest of those), else the
        last dropped session, else the last attempt."""
        failed = self.failed
        if failed:
            return max(failed, key=lambda a: (STEP_DEPTH[a.error.step if a.error else a.reached], a.index))
        dropped = [a for a in self.attempts if a.outcome == "dropped"]
        if dropped:
            return dropped[-1]
        return self.attempts[-1] if self.attempts else None

    def record(self, line: int) -> LogRecord | None:
        index = line - 1
        if 0 <= index < len(self.records) and self.records[index].line == line:
            return self.records[index]
        return next((r for r in self.records if r.line == line), None)


_ATTEMPT_KINDS = {
    Sig.SERVER_ADDRESS,
    Sig.DNS_OK,
    Sig.DNS_FAILED,
    Sig.SOCKET_OK,
    Sig.SOCKET_FAILED,
    Sig.INTERNET_FAILED,
    Sig.CLOUD_UNREACHABLE,
    Sig.CLOUD_ERROR,
    Sig.HANDSHAKE_START,
    Sig.STEP,
    Sig.FAIL,
    Sig.SOCKET_ERROR,
    Sig.PROTOCOL_FAILED,
    Sig.HANDSHAKE_FAILED,
    Sig.HANDSHAKE_DONE,
    Sig.HELLO_SENT,
    Sig.SESSION_RESUMED,
    Sig.CONNECTED,
    Sig.DISCONNECTING,
    Sig.DISCONNECTED,
    Sig.SESSION_DROP,
    Sig.DROP_CAUSE,
    Sig.WLAN_RESET,
}
# Kinds that only make sense inside an attempt already under way; alone they start nothing.
_TRAILING = {
    Sig.DISCONNECTING,
    Sig.DISCONNECTED,
    Sig.SESSION_DROP,
    Sig.DROP_CAUSE,
    Sig.INTERNET_FAILED,
    Sig.CLOUD_UNREACHABLE,
    Sig.CLOUD_ERROR,
    Sig.WLAN_RESET,
}


def _code_kind(code: int | None) -> str | None:
    if code is None:
        return None
    if code <= -100:
        return CodeKind.SYSTEM
    if code < 0:
        return CodeKind.SOCKET
    return CodeKind.PROTOCOL


class _Builder:
    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.current: Attempt | None = None
        self.boot = 0

    def start(self, signal: Signal) -> Attempt:
        self.finish()
        attempt = Attempt(len(self.attempts) + 1, signal.line, signal.line, self.boot, start_ms=signal.time_ms)
        self.attempts.append(attempt)
        self.current = attempt
        return attempt

    def finish(self, *, restart: bool = False) -> None:
        attempt = self.current
        if attempt is None:
            return
        self.current = None
        attempt.closed = True
        if attempt.connected:
            if restart and attempt.drop_kind is None:
                attempt.ended_by = "reset"
                attempt.outcome = "connected"
            elif attempt.drop_kind is not None:
                attempt.outcome = "dropped"
            else:
                attempt.outcome = "connected"
        elif attempt.error is not None:
            attempt.outcome = "failed"
        else:
            attempt.outcome = "interrupted" if restart else "incomplete"

    def reconnect(self, signal: Signal) -> None:
        """A new attempt begins; a session still open at that point ended without saying why."""
        attempt = self.current
        if attempt is not None and not attempt.connected and attempt.error is None and len(attempt.lines) <= 1:
            # Two announcements of one attempt (cloud-debug's "connecting to cloud", then the system's own).
            attempt.lines.append(signal.line)
            attempt.last_line = signal.line
            return
        if attempt is not None and attempt.connected and attempt.drop_kind is None:
            attempt.drop_kind = "reconnect"
            attempt.drop_line = signal.line
        self.start(signal)


def _fail(attempt: Attempt, signal: Signal, kind: str, step: str, code: int | None, code_kind: str | None) -> None:  # noqa: PLR0917
    if attempt.error is not None:
        return
    attempt.error = AttemptError(kind, step, code, code_kind, signal.line, signal.record.message)
    if signal.time_ms is not None:
        began = attempt.step_started_ms.get(step)
        if began is None and attempt.start_ms is not None:
            began = attempt.start_ms
        if began is not None:
            attempt.failure_after_ms = signal.time_ms - began


def _apply(attempt: Attempt, signal: Signal) -> None:
    kind = signal.kind
    attempt.kinds.add(kind)
    attempt.last_line = signal.line
    attempt.lines.append(signal.line)
    if signal.time_ms is not None:
        attempt.end_ms = signal.time_ms
        if attempt.start_ms is None:
            attempt.start_ms = signal.time_ms
    if kind == Sig.SERVER_ADDRESS:
        attempt.server_address = dict(signal.values)
    elif kind == Sig.DNS_OK:
        attempt.resolved_host, attempt.resolved_ip = signal.str("host"), signal.str("ip")
    elif kind == Sig.DNS_FAILED:
        attempt.resolved_host = signal.str("host")
        _fail(attempt, signal, "dns_failed", DeviceStep.S0, None, None)
    elif kind == Sig.SOCKET_OK:
        attempt.socket_connected = True
        attempt.connected_ip = signal.str("ip") or attempt.connected_ip
    elif kind == Sig.SOCKET_FAILED:
        errno = signal.int("errno")
        if errno is not None:
            _fail(attempt, signal, "socket_failed", DeviceStep.S0, errno, CodeKind.ERRNO)
        else:
            code = signal.int("code")
            _fail(attempt, signal, "socket_failed", DeviceStep.S0, code, _code_kind(code))
    elif kind == Sig.INTERNET_FAILED:
        attempt.internet = "failed"
    elif kind == Sig.CLOUD_UNREACHABLE:
        attempt.internet = "ok"
    elif kind == Sig.CLOUD_ERROR:
        attempt.cloud_error = signal.int("code")
        _fail(attempt, signal, "cloud_error", DeviceStep.S0, attempt.cloud_error, CodeKind.CLOUD_ERROR)
    elif kind == Sig.HANDSHAKE_START:
        attempt.socket_connected = True
        attempt.enter(DeviceStep.S1, signal.time_ms)
    elif kind == Sig.STEP:
        step = signal.str("step") or DeviceStep.UNKNOWN
        attempt.socket_connected = True
        attempt.enter(step, signal.time_ms)
    elif kind == Sig.HELLO_SENT:
        attempt.hello_sent += 1
        attempt.enter(DeviceStep.S7, signal.time_ms)
    elif kind == Sig.FAIL:
        _apply_fail(attempt, signal)
    elif kind == Sig.SOCKET_ERROR:
        if attempt.socket_code is None:
            attempt.socket_code = signal.int("code")
    elif kind == Sig.PROTOCOL_FAILED:
        _apply_protocol_failed(attempt, signal)
    elif kind == Sig.HANDSHAKE_FAILED:
        _apply_handshake_failed(attempt, signal)
    elif kind == Sig.HANDSHAKE_DONE:
        attempt.enter(DeviceStep.S6, signal.time_ms)
    elif kind == Sig.SESSION_RESUMED:
        attempt.resumed = True
    elif kind == Sig.CONNECTED:
        attempt.connected = True
        attempt.socket_connected = True
        attempt.enter(DeviceStep.SESSION, signal.time_ms)
    elif kind == Sig.SESSION_DROP:
        if attempt.connected:
            if attempt.drop_kind is None:
                attempt.drop_kind = signal.str("kind") or "bytes_error"
                attempt.drop_code = signal.int("code")
                attempt.drop_line = signal.line
        else:
            code = signal.int("code")
            _fail(attempt, signal, "socket", attempt.reached, code, _code_kind(code))
    elif kind == Sig.DROP_CAUSE:
        attempt.drop_cause = signal.str("kind")


def _apply_fail(attempt: Attempt, signal: Signal) -> None:
    step = signal.str("step") or attempt.reached
    kind = signal.str("kind") or "handshake"
    code = signal.int("code")
    if kind == "set_key":
        # 0.6.x forgets the argument of this message, so its number is garbage unless it is 6 or 8 (§4.4).
        if code == 6:
            kind = "decrypt"
        elif code == 8:
            kind = "signature"
        else:
            code = None
    if step == DeviceStep.DTLS:
        attempt.socket_connected = True
        _fail(attempt, signal, kind, step, None, None)
        return
    if code is None and attempt.socket_code is not None and kind in ("nonce", "receive_key", "hello_receive"):
        code = attempt.socket_code
    attempt.enter(step, None)
    code_kind = CodeKind.PROTOCOL if kind in ("decrypt", "signature") else _code_kind(code)
    _fail(attempt, signal, kind, step, code, code_kind)


def _apply_protocol_failed(attempt: Attempt, signal: Signal) -> None:
    text = signal.str("code") or ""
    category = (signal.record.category or "").lower()
    if "dtls" in category:
        # mbedTLS codes are printed as `-%x` (field-failures.md §1.2).
        digits = text.lstrip("-")
        value = -int(digits, 16) if digits and all(c in "0123456789abcdef" for c in digits) else None
        attempt.socket_connected = True
        _fail(attempt, signal, "dtls_handshake", DeviceStep.DTLS, value, CodeKind.MBEDTLS)
        return
    code = decimal(text)
    if code is None:
        return
    attempt.protocol_code = code
    if attempt.error is not None:
        if attempt.error.kind == "set_key" and code in (6, 8):
            attempt.error.kind = _PROTOCOL_KIND[code]
            attempt.error.code, attempt.error.code_kind = code, CodeKind.PROTOCOL
        return
    step = _PROTOCOL_STEP.get(code, attempt.reached)
    if code == 16:
        step = DeviceStep.DTLS
    _fail(attempt, signal, _PROTOCOL_KIND.get(code, "handshake"), step, code, CodeKind.PROTOCOL)


def _apply_handshake_failed(attempt: Attempt, signal: Signal) -> None:
    code = signal.int("code")
    attempt.handshake_code = code
    error = attempt.error
    if error is not None:
        if error.kind == "set_key" and code in (6, 8):
            error.kind = _PROTOCOL_KIND[code]
            error.code, error.code_kind = code, CodeKind.PROTOCOL
        elif error.code is None and code is not None and code < 0 and code > -100:
            error.code, error.code_kind = code, CodeKind.SOCKET
        return
    if code is None:
        _fail(attempt, signal, "handshake", attempt.reached, None, None)
        return
    if code <= -100:
        step, kind = _SYSTEM_STEP.get(code, (attempt.reached, "handshake"))
        _fail(attempt, signal, kind, step, code, CodeKind.SYSTEM)
        return
    if code > 0:
        step = _PROTOCOL_STEP.get(code, attempt.reached)
        _fail(attempt, signal, _PROTOCOL_KIND.get(code, "handshake"), step, code, CodeKind.PROTOCOL)
        return
    # A raw socket code (legacy stack): the step is the one the attempt was in. When the log shows no step
    # at all, -19 almost always comes from the session-key read (S5, protocol.md §9.3).
    step = attempt.reached
    if step in (DeviceStep.S0, DeviceStep.S1) and not attempt.step_started_ms and code == -19:
        step = DeviceStep.UNKNOWN
    kind = {DeviceStep.S1: "nonce", DeviceStep.S5: "receive_key", DeviceStep.S8: "hello_receive"}.get(step, "handshake")
    _fail(attempt, signal, kind, step, code, CodeKind.SOCKET)


_REPORTED = re.compile(r"system version:\s*(?P<version>\d+\.\d+\.\d+[\w.+-]*)", re.IGNORECASE)
_PLATFORM = re.compile(r"^platform:\s*(?P<platform>[a-z0-9 ]+)$", re.IGNORECASE)


def _firmware(records: list[LogRecord], signals: list[Signal]) -> str | None:
    """The Device OS version an application reported (cloud-debug prints it), else a guess at the generation
    from the texts and categories (field-failures.md §4.1)."""
    for record in records[:400]:
        reported = _REPORTED.search(record.message)
        if reported is not None:
            platform = next(
                (m["platform"].strip() for r in records[:400] if (m := _PLATFORM.match(r.message.strip()))), None
            )
            return f"Device OS {reported['version']}" + (f" on {platform}" if platform else "") + " (as reported)"
    return _firmware_guess(records, signals)


def _firmware_guess(records: list[LogRecord], signals: list[Signal]) -> str | None:
    categories = {(r.category or "").lower() for r in records if r.category}
    formats = {r.format for r in records}
    virtual = any("virtual wlan" in r.message.lower() for r in records[:200])
    note = " (Linux virtual device)" if virtual else ""
    if any(c.startswith("comm.dtls") for c in categories):
        return "Electron, Device OS 0.6 or later (UDP/DTLS)" + note
    if any(c.startswith("comm.lightssl") or c == "comm.protocol.handshake" for c in categories):
        system_codes = any(s.kind == Sig.HANDSHAKE_FAILED and (s.int("code") or 0) <= -100 for s in signals)
        if system_codes:
            return "Device OS 2.x or later, new protocol stack" + note
        return "Device OS 0.8 or later, new protocol stack" + note
    if any(c.startswith("comm.sparkprotocol") for c in categories):
        return "Device OS 0.6.1 to 0.7.x, legacy protocol stack" + note
    if LogFormat.FORMAT_A in formats:
        return "Device OS 0.4.x/0.5.x debug build, legacy protocol stack"
    if "comm" in categories or any(r.category == "system" for r in records):
        return "Device OS 0.6 or later" + note
    if LogFormat.JSON in formats:
        return "Device OS 0.6 or later (JSON log handler)"
    if LogFormat.CLOUDDEBUG in formats:
        return "cloud-debug firmware output"
    return None


def analyse(records: Iterable[LogRecord]) -> LogAnalysis:
    """Split the log into connection attempts and find where each stopped."""
    records = list(records)
    signals = extract_signals(records)
    builder = _Builder()
    device_id: str | None = None
    reboots = 0
    for signal in signals:
        kind = signal.kind
        if kind == Sig.DEVICE_ID:
            device_id = device_id or signal.str("id")
            continue
        if kind == Sig.REBOOT:
            builder.finish(restart=True)
            builder.boot += 1
            reboots += 1
            continue
        if kind == Sig.CLOUD_CONNECTING:
            builder.reconnect(signal)
            continue
        if kind == Sig.CLOUD_STATUS:
            _cloud_status(builder, signal)
            continue
        if kind == Sig.STILL_TRYING:
            # An application's report that the cloud is still not connected: on firmware that prints no
            # system log (Photon/P1 0.7.0-3.3.x, field-failures.md §0.5) the only sign of a failing attempt.
            trying = builder.current or builder.start(signal)
            trying.lines.append(signal.line)
            trying.last_line = signal.line
            if not trying.connected and trying.error is None and not trying.step_started_ms:
                _fail(trying, signal, "status", DeviceStep.UNKNOWN, None, None)
            continue
        if kind not in _ATTEMPT_KINDS:
            continue
        if signal.record.format == LogFormat.CLOUDDEBUG and kind in (Sig.DNS_OK, Sig.DNS_FAILED):
            continue  # cloud-debug's own checks before it connects, not part of an attempt (§4.5)
        if signal.record.format == LogFormat.EVENT:
            continue  # spark/status online/offline as the cloud saw it, not the device's own account
        attempt = builder.current
        event_loop = kind == Sig.SESSION_DROP and signal.str("kind") == "event_loop"
        if attempt is not None and (_starts_another(attempt, signal) or (event_loop and attempt.error is not None)):
            attempt = builder.start(signal)
        if event_loop and (attempt is None or (not attempt.connected and not attempt.lines)):
            # The session loop only runs once connected: an error there shows a session, even in a capture
            # without the lines of its handshake.
            attempt = attempt or builder.start(signal)
            attempt.connected = True
            attempt.enter(DeviceStep.SESSION, signal.time_ms)
        if attempt is None:
            if kind in _TRAILING:
                previous = builder.attempts[-1] if builder.attempts else None
                if previous is not None and kind in (Sig.SESSION_DROP, Sig.DROP_CAUSE) and previous.connected:
                    _apply(previous, signal)
                continue
            attempt = builder.start(signal)
        _apply(attempt, signal)
        if kind == Sig.DISCONNECTED:
            builder.finish()
    builder.finish()
    for record in records:
        if device_id is None and record.format == LogFormat.EVENT and record.detail and len(record.detail) == 24:
            device_id = record.detail.lower()
    return LogAnalysis(records, signals, builder.attempts, device_id, _firmware(records, signals), reboots)


_SUMMARIES = (Sig.PROTOCOL_FAILED, Sig.HANDSHAKE_FAILED)


def _starts_another(attempt: Attempt, signal: Signal) -> bool:
    """In a capture without `Cloud: connecting` lines (errors only, say), a failure's summary that repeats,
    or a failure after the summary, is the next attempt's."""
    handshake = (Sig.FAIL, Sig.SOCKET_FAILED, Sig.DNS_FAILED, Sig.STEP, Sig.HANDSHAKE_START, *_SUMMARIES)
    if attempt.connected and attempt.drop_kind is not None:
        return signal.kind in handshake or (signal.kind == Sig.SESSION_DROP and signal.str("kind") == "event_loop")
    if attempt.error is None:
        return False
    if signal.kind in _SUMMARIES:
        return signal.kind in attempt.kinds
    if signal.kind in (Sig.FAIL, Sig.SOCKET_FAILED, Sig.DNS_FAILED, Sig.STEP, Sig.HANDSHAKE_START):
        return any(kind in attempt.kinds for kind in _SUMMARIES)
    return False


def _cloud_status(builder: _Builder, signal: Signal) -> None:
    """`cloud_status` from application code, the only trace on Photon/P1 0.7.0+ (§0.5, §4.6): 1 → 0 without 8
    is a failed attempt whose step the log cannot show."""
    status = signal.str("status")
    attempt = builder.current
    if status == "connecting":
        if attempt is not None and not attempt.connected and attempt.error is None and len(attempt.lines) <= 1:
            attempt.lines.append(signal.line)
            return
        builder.reconnect(signal)
        return
    if attempt is None:
        return
    _apply(attempt, signal)
    if status == "connected":
        attempt.connected = True
        attempt.enter(DeviceStep.SESSION, signal.time_ms)
        return
    if attempt.connected:
        if attempt.drop_kind is None:
            attempt.drop_kind, attempt.drop_line = "status", signal.line
    else:
        _fail(attempt, signal, "status", DeviceStep.UNKNOWN, None, None)
    builder.finish()
