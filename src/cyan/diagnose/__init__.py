"""Connection diagnostics: device logs, LED patterns, error codes and the server's own records.

- `readers`: every Device OS log format to normalized records (field-failures.md §4).
- `sequence`: the connection attempts in a log and the step where each stopped (§1.1).
- `catalog` and `rules`: one entry and one rule per field failure C1–C17 (§2), causes ranked on evidence.
- `codes`, `leds`: what error numbers and LED patterns mean (protocol.md §9).
- `server_evidence`: the server's connection-attempt records explained, loops, unidentified peers.
- `join`: the device log and the server's records of the same device and time, together.
- `report`, `render`: the JSON form (docs/diagnostics.md) and the human one.

Everything here except `gather` (which reads a `Store`) and `render` (rich) is pure: text and records in,
explanations out.
"""

from .catalog import CATALOG, Cause, Entry, entry
from .codes import CodeKind, CodeReading, explain_code, explain_code_text
from .join import ServerVerdict, apply_verdict, join
from .leds import LED_PATTERNS, LedPattern, LedReading, explain_led
from .readers import LogFormat, LogRecord, normalize, read_lines, read_text
from .report import SCHEMA, Diagnosis, diagnose, entry_json
from .rules import Evidence, Finding, RankedCause, find
from .sequence import STEP_NAMES, Attempt, AttemptError, DeviceStep, LogAnalysis, analyse
from .server_evidence import (
    DOCTOR_SCHEMA,
    REASONS,
    DoctorReport,
    FailureLoop,
    ServerFinding,
    UnidentifiedGroup,
    build_doctor,
    explain_attempt,
    find_loops,
    group_unidentified,
    host_of,
)

__all__ = [
    "CATALOG",
    "DOCTOR_SCHEMA",
    "LED_PATTERNS",
    "REASONS",
    "SCHEMA",
    "STEP_NAMES",
    "Attempt",
    "AttemptError",
    "Cause",
    "CodeKind",
    "CodeReading",
    "DeviceStep",
    "Diagnosis",
    "DoctorReport",
    "Entry",
    "Evidence",
    "FailureLoop",
    "Finding",
    "LedPattern",
    "LedReading",
    "LogAnalysis",
    "LogFormat",
    "LogRecord",
    "RankedCause",
    "ServerFinding",
    "ServerVerdict",
    "UnidentifiedGroup",
    "analyse",
    "apply_verdict",
    "build_doctor",
    "diagnose",
    "entry",
    "entry_json",
    "explain_attempt",
    "explain_code",
    "explain_code_text",
    "explain_led",
    "find",
    "find_loops",
    "group_unidentified",
    "host_of",
    "join",
    "normalize",
    "read_lines",
    "read_text",
]
