"""A diagnosis: the analysed log, the ranked findings, LED and code readings, the server's verdict.

`Diagnosis.to_json` is the stable machine-readable form (`cyan diagnose --json`); every field is described
in docs/diagnostics.md and pinned by tests/diagnose/test_diagnose_json_schema.py. Add fields, never rename.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .catalog import entry as catalog_entry
from .codes import CodeReading, explain_code, explain_code_text
from .join import ServerVerdict, apply_verdict
from .leds import LedReading, explain_led
from .readers import LogFormat, read_text
from .rules import Finding, classify, find
from .sequence import STEP_NAMES, Attempt, LogAnalysis, analyse

__all__ = ["SCHEMA", "Diagnosis", "diagnose", "entry_json"]

SCHEMA = "cyan.diagnose/1"


@dataclass(slots=True)
class Diagnosis:
    source: str | None
    analysis: LogAnalysis | None
    findings: list[Finding]
    leds: list[LedReading] = field(default_factory=list)
    codes: list[tuple[str, list[CodeReading]]] = field(default_factory=list)
    server: ServerVerdict | None = None

    def with_server(self, verdict: ServerVerdict) -> Diagnosis:
        return Diagnosis(
            self.source, self.analysis, apply_verdict(self.findings, verdict), self.leds, self.codes, verdict
        )

    # -- plain words ----------------------------------------------------------------------------------

    def summary_text(self) -> str:
        analysis = self.analysis
        parts: list[str] = []
        if analysis is not None:
            attempts = analysis.attempts
            if not attempts:
                parts.append("No connection attempt in this log.")
            else:
                outcomes = _outcomes(attempts)
                described = ", ".join(f"{n} {name}" for name, n in outcomes.items() if n)
                parts.append(f"{len(attempts)} connection attempt(s): {described}.")
                primary = analysis.primary
                if primary is not None and primary.outcome == "failed" and primary.error is not None:
                    error = primary.error
                    parts.append(
                        f"The furthest failure: attempt {primary.index} stopped at {error.step} "
                        f"({STEP_NAMES.get(error.step, error.step)}), line {error.line}: {error.message.strip()!r}."
                    )
                    if error.kind == "status":
                        # Photon/P1 0.7.0-3.3.x compile the system and comm logs out (field-failures.md §0.5).
                        parts.append(
                            "Only the application's own reports show the attempts: this firmware prints no system "
                            "log (Photon/P1 0.7.0 to 3.3.x), so the step is not in the log."
                        )
                elif primary is not None and primary.outcome == "dropped":
                    parts.append(f"Attempt {primary.index} connected, then the session ended.")
                elif all(a.outcome == "connected" for a in attempts):
                    parts.append("The device connected; no failure in this log.")
        if self.findings:
            top = self.findings[0]
            lead = "Worth a look" if top.confidence == "low" else "Likeliest"
            parts.append(f"{lead}: {top.entry.id}, {top.entry.title}.")
        elif analysis is not None and analysis.failed:
            parts.append("The log does not show enough to name a cause; describe the LED with --led.")
        return " ".join(parts) or "Nothing to diagnose."

    # -- JSON -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": self._source_json(),
            "summary": self._summary_json(),
            "attempts": [_attempt_json(a) for a in self.analysis.attempts] if self.analysis else [],
            "findings": [_finding_json(rank, f) for rank, f in enumerate(self.findings, start=1)],
            "leds": [_led_json(r) for r in self.leds],
            "codes": [
                {"input": text, "readings": [_reading_json(r) for r in readings]} for text, readings in self.codes
            ],
            "server": self.server.to_json() if self.server else None,
        }

    def _source_json(self) -> dict[str, Any]:
        analysis = self.analysis
        if analysis is None:
            return {
                "name": self.source,
                "lines": 0,
                "parsed": 0,
                "unparsed": 0,
                "duplicates": 0,
                "formats": {},
                "firmware": None,
                "device_id": None,
                "reboots": 0,
            }
        records = analysis.records
        nonblank = [r for r in records if r.raw.strip()]
        return {
            "name": self.source,
            "lines": len(records),
            "parsed": sum(1 for r in nonblank if r.parsed),
            "unparsed": sum(1 for r in nonblank if r.format == LogFormat.UNPARSED),
            "duplicates": sum(1 for r in records if r.duplicate),
            "formats": analysis.formats,
            "firmware": analysis.firmware,
            "device_id": analysis.device_id,
            "reboots": analysis.reboots,
        }

    def _summary_json(self) -> dict[str, Any]:
        analysis = self.analysis
        attempts = analysis.attempts if analysis else []
        primary = analysis.primary if analysis else None
        stopped = primary.stopped_at if primary else None
        return {
            **_outcomes(attempts),
            "attempts": len(attempts),
            "primary_attempt": primary.index if primary else None,
            "outcome": primary.outcome if primary else None,
            "stopped_at": stopped,
            "step_name": STEP_NAMES.get(stopped) if stopped else None,
            "top_finding": self.findings[0].entry.id if self.findings else None,
            "text": self.summary_text(),
        }


def _outcomes(attempts: list[Attempt]) -> dict[str, int]:
    names = ("connected", "dropped", "failed", "incomplete", "interrupted")
    return {name: sum(1 for a in attempts if a.outcome == name) for name in names}


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    error = attempt.error
    error_json: dict[str, Any] | None = None
    if error is not None:
        readings = explain_code(error.code, error.code_kind) if error.code is not None else []
        reading = readings[0] if readings else None
        error_json = {
            "kind": error.kind,
            "step": error.step,
            "code": error.code,
            "code_kind": error.code_kind,
            "code_name": reading.name if reading else None,
            "meaning": reading.meaning if reading else None,
            "line": error.line,
            "message": error.message,
        }
    found = classify(attempt)
    stopped = attempt.stopped_at
    return {
        "index": attempt.index,
        "first_line": attempt.first_line,
        "last_line": attempt.last_line,
        "boot": attempt.boot,
        "start_ms": attempt.start_ms,
        "end_ms": attempt.end_ms,
        "outcome": attempt.outcome,
        "reached": attempt.reached,
        "stopped_at": stopped,
        "step_name": STEP_NAMES.get(stopped) if stopped else None,
        "error": error_json,
        "handshake_code": attempt.handshake_code,
        "protocol_code": attempt.protocol_code,
        "socket_code": attempt.socket_code,
        "cloud_error": attempt.cloud_error,
        "internet": attempt.internet,
        "server_address": dict(attempt.server_address) if attempt.server_address else None,
        "resolved": {"host": attempt.resolved_host, "ip": attempt.resolved_ip} if attempt.resolved_host else None,
        "connected_ip": attempt.connected_ip,
        "failure_after_ms": attempt.failure_after_ms,
        "drop": (
            {
                "kind": attempt.drop_kind,
                "code": attempt.drop_code,
                "cause": attempt.drop_cause,
                "line": attempt.drop_line,
            }
            if attempt.drop_kind
            else None
        ),
        "ended_by": attempt.ended_by,
        "entry": found[0] if found else None,
    }


def _finding_json(rank: int, finding: Finding) -> dict[str, Any]:
    entry = finding.entry
    return {
        "rank": rank,
        "id": entry.id,
        "title": entry.title,
        "step": finding.step,
        "step_name": STEP_NAMES.get(finding.step),
        "score": finding.score,
        "confidence": finding.confidence,
        "summary": finding.summary,
        "meaning": entry.meaning,
        "evidence": [{"line": e.line, "text": e.text, "why": e.why, "source": e.source} for e in finding.evidence],
        "causes": [
            {"rank": i, "key": c.key, "title": c.title, "likelihood": c.likelihood, "why": c.why, "fix": c.fix}
            for i, c in enumerate(finding.causes, start=1)
        ],
        "fix": entry.fix,
        "attempts": list(finding.attempts),
        "sources": list(finding.sources),
    }


def _led_json(reading: LedReading) -> dict[str, Any]:
    pattern = reading.pattern
    return {
        "description": reading.description,
        "pattern": pattern.key,
        "title": pattern.title,
        "meaning": pattern.meaning,
        "entries": list(pattern.entries),
        "count": reading.count,
        "note": reading.note,
    }


def _reading_json(reading: CodeReading) -> dict[str, Any]:
    return {
        "code": reading.code,
        "kind": reading.kind,
        "name": reading.name,
        "meaning": reading.meaning,
        "entries": list(reading.entries),
    }


def diagnose(
    text: str | None,
    *,
    source: str | None = None,
    leds: list[str] | tuple[str, ...] = (),
    codes: list[str] | tuple[str, ...] = (),
) -> Diagnosis:
    """Diagnose a device log (any format, or None) together with LED descriptions and error codes."""
    analysis = analyse(read_text(text)) if text is not None else None
    led_readings = [reading for description in leds for reading in explain_led(description)]
    code_readings = [(code, explain_code_text(code)) for code in codes]
    findings = find(analysis, led_readings, code_readings)
    return Diagnosis(source, analysis, findings, led_readings, code_readings)


def entry_json(entry_id: str) -> dict[str, Any]:
    """A catalog entry as JSON (`cyan diagnose --catalog --json`)."""
    entry = catalog_entry(entry_id)
    return {
        "id": entry.id,
        "title": entry.title,
        "step": entry.step,
        "step_name": STEP_NAMES.get(entry.step),
        "symptom": entry.symptom,
        "meaning": entry.meaning,
        "causes": [
            {"key": c.key, "title": c.title, "likelihood": c.likelihood, "detail": c.detail, "fix": c.fix}
            for c in entry.causes
        ],
        "tell_apart": entry.tell_apart,
        "server_side": entry.server_side,
        "fix": entry.fix,
    }
