"""Device log readers: every Device OS log format, one normalized record per line.

Formats (field-failures.md §4):

- `format_a`: 0.4.x–0.5.x debug builds, ``0000009436:ERROR: int SparkProtocol::handshake() (108):msg``
  (§4.2; the level is padded to five characters, the function name replaces the file name).
- `format_b`: the 0.6+ log handler, ``0000001000 [system] INFO: msg`` with optional ``file:line, func():``
  and a trailing `` [code = N, details = ...]`` (§4.3).
- `json`: the JSON log handler, one object per line with ``l m c f ln fn t code detail`` (§4.3).
- `event`: a cloud event as `particle subscribe` or an event stream prints it (``{"name":..,"data":..}``,
  or ``event:``/``data:`` lines): how `spark/device/last_reset`, `spark/status/safe-mode` and
  `spark/device/key/error` reach people (§4.6).
- `clouddebug`: the plain lines of the photon-clouddebug firmware (§4.5).
- `unparsed`: anything else, kept with its text. Reading never fails: garbage becomes `unparsed`.

Parsing is tolerant on purpose: real captures interleave application output with log lines, repeat
every line when two handlers write to the same port, wrap the millisecond counter and carry the
firmware's own typos. `normalize` gives the lower-case, typo-corrected text the matchers use; the record
keeps the original.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .codes import decimal

__all__ = ["LogFormat", "LogRecord", "normalize", "read_lines", "read_text"]


class LogFormat:
    """Format names; stable, they appear in the JSON output."""

    FORMAT_A = "format_a"
    FORMAT_B = "format_b"
    JSON = "json"
    EVENT = "event"
    CLOUDDEBUG = "clouddebug"
    UNPARSED = "unparsed"


@dataclass(slots=True)
class LogRecord:
    """One line of a device log, normalized."""

    #: 1-based line number in the input.
    line: int
    #: The line as read (control characters removed).
    raw: str
    format: str
    #: Milliseconds since boot, when the line carries them.
    time_ms: int | None = None
    #: TRACE, INFO, WARN, ERROR or PANIC (0.5.x LOG/DEBUG read as TRACE).
    level: str | None = None
    category: str | None = None
    #: The C function of a Format A line, or the source function of a Format B line.
    function: str | None = None
    message: str = ""
    #: The `code = N` attribute of a Format B/JSON line.
    code: int | None = None
    detail: str | None = None
    #: Text before the log line on the same physical line (interleaved application output).
    prefix: str | None = None
    #: The same record as the line before: a second log handler writing to the same port.
    duplicate: bool = False
    #: Cloud events (`event` format): the event name and its data.
    event_name: str | None = None
    event_data: str | None = None

    @property
    def parsed(self) -> bool:
        return self.format != LogFormat.UNPARSED


# Typos and spellings of the firmware (field-failures.md §4.3), corrected before matching.
_TYPOS = (
    (re.compile(r"hanshake"), "handshake"),
    (re.compile(r"reciev"), "receiv"),
    (re.compile(r"presense"), "presence"),
    (re.compile(r"setup_contex\b"), "setup_context"),
    (re.compile(r"\s+"), " "),
)


def normalize(text: str) -> str:
    """Lower case, the firmware's typos corrected, runs of white space collapsed."""
    out = text.lower()
    for pattern, replacement in _TYPOS:
        out = pattern.sub(replacement, out)
    return out.strip()


_LEVELS = {
    "TRACE": "TRACE",
    "LOG": "TRACE",
    "DEBUG": "TRACE",
    "ALL": "TRACE",
    "INFO": "INFO",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "PANIC": "PANIC",
}
# LogLevel numbers of Device OS (services/inc/logging.h), for JSON handlers that write them as numbers.
_LEVEL_NUMBERS = {1: "TRACE", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "PANIC"}

_B_BODY = (
    r"(?:\[(?P<cat>[^\]\s]*)\]\s+)?"
    r"(?:(?P<file>[^:\s\[\]]+):(?P<ln>\d+), (?P<func>[^(\s][^(]*)\(\):\s+)?"
    r"(?P<lvl>TRACE|INFO|WARN|WARNING|ERROR|PANIC|DEBUG|LOG|ALL)\s*:\s?(?P<msg>.*)$"
)
# A Format B line at the start of the line; the timestamp may be bracketed or missing (pasted logs).
_B = re.compile(r"^\s*(?:\[?(?P<ms>\d{1,10})\s*\]?\s+)?" + _B_BODY)
# Elsewhere in the line (application output interleaved before it): the full 10-digit timestamp needed.
_B_INSIDE = re.compile(r"(?P<ms>\d{10})\s+" + _B_BODY)
# A log line behind some other prefix (a syslog date, a terminal's time stamp): a dotted category is needed.
_B_ANY = re.compile(
    r"(?P<ms>)\[(?P<cat>(?:app|system|comm|hal|net|wiring|ncp|sys)(?:\.[\w.]+)?)\]\s+"
    r"(?P<file>)(?P<ln>)(?P<func>)"
    r"(?P<lvl>TRACE|INFO|WARN|WARNING|ERROR|PANIC|DEBUG|LOG|ALL)\s*:\s?(?P<msg>.*)$"
)
# The level may also be bracketed (`<DEBUG>`), as some older debug builds print it.
_A = re.compile(
    r"(?P<ms>\d{10}):<?(?P<lvl>LOG  |DEBUG|INFO |WARN |ERROR|PANIC|LOG|INFO|WARN)>?\s*:?\s?"
    r"(?P<func>.*?)\s?\((?P<ln>\d+)\):(?P<msg>.*)$"
)
# Where a Format A line may start, and its "(line):" after the function. `_A.search` alone scans from every
# header to the end of the line looking for that, quadratic in the line's length (see `_search_a`).
_A_START = re.compile(r"(?=\d{10}:<?(?:LOG|DEBUG|INFO|WARN|ERROR|PANIC))")
_A_LINE_NUMBER = re.compile(r"\(\d+\):")
_ATTRIBUTES = re.compile(r"\s\[code = (?P<code>-?\d+)(?:, details = (?P<det>.*))?\]$")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")
_SSE_EVENT = re.compile(r"^event:\s*(?P<name>\S+)\s*$")
_SSE_DATA = re.compile(r"^data:\s*(?P<json>\{.*\})\s*$")

# The photon-clouddebug firmware's plain lines (field-failures.md §4.5), on normalized text.
_CLOUDDEBUG = re.compile(
    r"^(?:configured credentials:?|ssid=.*|available access points:?|connecting to wi-?fi.*|connected to wi-?fi.*"
    r"|localip=.*|subnetmask=.*|gatewayip=.*|dnsserverip=.*|dhcpserverip=.*|ping (?:gateway|dnsserverip|addr \S+)=.*"
    r"|failed to get \S+ from dns.*|[a-z0-9-]+(?:\.[a-z0-9-]+)+=\d+\.\d+\.\d+\.\d+.*"
    r"|connected to device server coap.*|could not connect to device server by coap.*|connecting to cloud.*"
    r"|connected to the cloud!?.*|still trying to connect to the cloud.*|successfully connected to the particle cloud.*"
    r"|lost cloud connection after.*|cloud status changed.*|event: cloud status.*)$"
)


#: The longest line read; the rest of a longer one is dropped. Device OS formats a log line in a buffer of a
#: few hundred bytes and an event line carries at most 622 bytes of data (protocol.md §6.4), so no real line
#: comes near. The patterns below are tried at every place a record could start in a line, which is
#: quadratic in its length: a 170 KB line of repeated Format A headers took two minutes before this cut.
MAX_LINE = 4096


def _search_a(raw: str) -> re.Match[str] | None:
    """`_A.search(raw)` in linear time.

    A header matches exactly when a "(digits):" follows it somewhere: the header has no "(" in it, so every
    header that starts before the last "(digits):" of the line matches, and none after it can. The first
    header before it is therefore the match `search` finds, and it is matched once.
    """
    numbers = [found.start() for found in _A_LINE_NUMBER.finditer(raw)]
    if not numbers:
        return None
    for start in _A_START.finditer(raw):
        if start.start() >= numbers[-1]:
            return None
        found = _A.match(raw, start.start())
        if found is not None:
            return found
    return None


def _clean(line: str) -> str:
    return _CONTROL.sub("", line[:MAX_LINE].rstrip("\r\n")).replace("\ufeff", "")


def _split_attributes(message: str) -> tuple[str, int | None, str | None]:
    match = _ATTRIBUTES.search(message)
    if match is None:
        return message, None, None
    return message[: match.start()], decimal(match["code"]), match["det"]


def _format_b(number: int, raw: str, match: re.Match[str], prefix: str | None) -> LogRecord:
    message, code, detail = _split_attributes(match["msg"])
    ms = match["ms"]
    return LogRecord(
        number,
        raw,
        LogFormat.FORMAT_B,
        time_ms=int(ms) if ms else None,
        level=_LEVELS[match["lvl"]],
        category=match["cat"] or None,
        function=(match["func"] or None) and match["func"].strip(),
        message=message.rstrip(),
        code=code,
        detail=detail,
        prefix=prefix or None,
    )


def _format_a(number: int, raw: str, match: re.Match[str], prefix: str | None) -> LogRecord:
    return LogRecord(
        number,
        raw,
        LogFormat.FORMAT_A,
        time_ms=int(match["ms"]),
        level=_LEVELS[match["lvl"].strip()],
        function=match["func"].strip() or None,
        message=match["msg"].rstrip(),
        prefix=prefix or None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return decimal(value)
    return None


def _json_record(number: int, raw: str, value: dict[str, Any], sse_name: str | None) -> LogRecord | None:
    if "m" in value or "msg" in value:
        level_value = value.get("l", value.get("level"))
        level: str | None = None
        if isinstance(level_value, str):
            level = _LEVELS.get(level_value.strip().upper())
        elif isinstance(level_value, int) and not isinstance(level_value, bool):
            level = _LEVEL_NUMBERS.get(level_value)
        time_value = _integer(value.get("t", value.get("time")))
        message = _text(value.get("m", value.get("msg"))) or ""
        return LogRecord(
            number,
            raw,
            LogFormat.JSON,
            time_ms=time_value,
            level=level,
            category=_text(value.get("c")),
            function=_text(value.get("fn")),
            message=message,
            code=_integer(value.get("code")),
            detail=_text(value.get("detail", value.get("d"))),
        )
    name = value.get("name", value.get("event")) or sse_name
    if isinstance(name, str) and ("data" in value or "published_at" in value or "coreid" in value):
        data = _text(value.get("data"))
        return LogRecord(
            number,
            raw,
            LogFormat.EVENT,
            category="event",
            message=f"{name} {data}" if data is not None else name,
            event_name=name,
            event_data=data,
            detail=_text(value.get("coreid", value.get("device_id"))),
        )
    return None


def _parse(number: int, raw: str, sse_name: str | None) -> LogRecord:
    stripped = raw.strip()
    if not stripped:
        return LogRecord(number, raw, LogFormat.UNPARSED)
    sse = _SSE_DATA.match(stripped)
    candidate = sse["json"] if sse else stripped
    if candidate.startswith("{") and candidate.endswith("}"):
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            record = _json_record(number, raw, value, sse_name)
            if record is not None:
                return record
    match_a = _search_a(raw)
    if match_a is not None and match_a.start() == len(raw) - len(raw.lstrip()):
        return _format_a(number, raw, match_a, None)
    match_b = _B.match(raw)
    if match_b is not None and (match_b["ms"] or match_b["cat"] is not None):
        return _format_b(number, raw, match_b, None)
    if match_a is not None:
        return _format_a(number, raw, match_a, raw[: match_a.start()].strip())
    inside = _B_INSIDE.search(raw) or _B_ANY.search(raw)
    if inside is not None:
        return _format_b(number, raw, inside, raw[: inside.start()].strip())
    if _CLOUDDEBUG.match(normalize(stripped)):
        return LogRecord(number, raw, LogFormat.CLOUDDEBUG, category="clouddebug", message=stripped)
    return LogRecord(number, raw, LogFormat.UNPARSED, message=stripped)


def _same(a: LogRecord, b: LogRecord) -> bool:
    return (
        a.parsed
        and a.time_ms is not None
        and (a.time_ms, a.level, a.category, a.message) == (b.time_ms, b.level, b.category, b.message)
    )


def read_lines(lines: Iterable[str]) -> Iterator[LogRecord]:
    """Records for `lines`, in order, one per line."""
    previous: LogRecord | None = None
    held: LogRecord | None = None
    sse_name: str | None = None
    for number, line in enumerate(lines, start=1):
        raw = _clean(line)
        sse = _SSE_EVENT.match(raw.strip())
        if sse is not None:
            sse_name = sse["name"]
            record = LogRecord(number, raw, LogFormat.UNPARSED, message=raw.strip())
        else:
            record = _parse(number, raw, sse_name)
            if record.format == LogFormat.EVENT:
                sse_name = None
        if previous is not None and _same(previous, record):
            record.duplicate = True
        if record.parsed:
            previous = record
        if held is not None:
            if record.format == LogFormat.UNPARSED and record.message:
                # Format A writes the header and the message separately (§4.2): a header without a message
                # followed by a line that is not a log line is that message.
                held.message = record.message
                record.message = ""
            yield held
            held = None
        if record.format == LogFormat.FORMAT_A and not record.message.strip():
            held = record
            continue
        yield record
    if held is not None:
        yield held


def read_text(text: str) -> list[LogRecord]:
    """Records for a whole log (any line endings)."""
    return list(read_lines(text.splitlines()))
