"""Human-readable output (rich): the diagnosis of a log, the doctor's report, the catalog.

Log lines are printed as plain `Text`, never as markup: `[system]` in a device log is not a style.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .catalog import CATALOG, Entry
from .report import Diagnosis
from .rules import Finding
from .sequence import STEP_NAMES

__all__ = ["render_catalog", "render_diagnosis", "render_doctor", "render_unidentified"]

_DETAILED = 3
_EVIDENCE = 6
_ATTEMPT_ROWS = 12


def _line(console: Console, text: str = "", style: str | None = None, indent: int = 0) -> None:
    console.print(Text(" " * indent + text, style=style or ""), highlight=False, soft_wrap=False)


def _para(console: Console, text: str, indent: int = 0, style: str | None = None) -> None:
    """A paragraph wrapped to the console width, indented."""
    width = max(40, console.width - indent)
    words = text.split()
    line = ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            _line(console, line, style, indent)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        _line(console, line, style, indent)


def render_diagnosis(diagnosis: Diagnosis, console: Console) -> None:
    analysis = diagnosis.analysis
    if analysis is not None:
        source = diagnosis.source or "log"
        formats = ", ".join(f"{n} {name}" for name, n in sorted(analysis.formats.items(), key=lambda kv: -kv[1]))
        _line(console, f"Log: {source} ({len(analysis.records)} lines: {formats or 'empty'})", "bold")
        facts = []
        if analysis.firmware:
            facts.append(analysis.firmware)
        if analysis.device_id:
            facts.append(f"device {analysis.device_id}")
        if analysis.reboots:
            facts.append(f"{analysis.reboots} restart(s)")
        if facts:
            _line(console, "; ".join(facts), indent=2)
        _line(console)
        _attempts_table(diagnosis, console)
    _para(console, diagnosis.summary_text(), style="bold")
    _line(console)
    for reading in diagnosis.leds:
        _line(console, f"LED {reading.description!r}: {reading.pattern.title}", "bold")
        if reading.pattern.key == "unknown":
            _para(console, f"{reading.note or ''} {reading.pattern.meaning}".strip(), indent=2)
            _line(console, "points at: nothing", indent=2)
        else:
            _para(console, reading.pattern.meaning + (f" {reading.note}" if reading.note else ""), indent=2)
            _line(console, "points at: " + (", ".join(reading.pattern.entries) or "no failure"), indent=2)
        _line(console)
    for text, readings in diagnosis.codes:
        if not readings:
            _line(console, f"Code {text!r}: not a code this tool knows.", "bold")
            continue
        _line(console, f"Code {text}:", "bold")
        for code_reading in readings:
            entries = f" [{', '.join(code_reading.entries)}]" if code_reading.entries else ""
            _para(console, f"as {code_reading.kind} {code_reading.name}: {code_reading.meaning}{entries}", indent=2)
        _line(console)
    if diagnosis.server is not None:
        _server(diagnosis, console)
    if not diagnosis.findings:
        if analysis is not None and not analysis.failed:
            _line(console, "No failure found.", "green")
        return
    for rank, finding in enumerate(diagnosis.findings[:_DETAILED], start=1):
        _finding(console, rank, finding)
    rest = diagnosis.findings[_DETAILED:]
    if rest:
        _line(console, "Also possible:", "bold")
        for finding in rest:
            _para(
                console, f"{finding.entry.id} ({finding.confidence}) {finding.entry.title}: {finding.summary}", indent=2
            )


def _attempts_table(diagnosis: Diagnosis, console: Console) -> None:
    analysis = diagnosis.analysis
    if analysis is None or not analysis.attempts:
        return
    table = Table("#", "Lines", "Outcome", "Stopped at", "Error", title="Connection attempts", title_justify="left")
    attempts = analysis.attempts
    shown = attempts if len(attempts) <= _ATTEMPT_ROWS else [*attempts[: _ATTEMPT_ROWS - 2], *attempts[-2:]]
    for attempt in shown:
        error = attempt.error
        if error is not None:
            detail = error.message.strip()
        elif attempt.drop_kind:
            detail = f"session ended ({attempt.drop_kind})"
        else:
            detail = ""
        table.add_row(
            str(attempt.index),
            f"{attempt.first_line}-{attempt.last_line}",
            attempt.outcome,
            attempt.stopped_at or "",
            Text(detail),
        )
    if len(shown) < len(attempts):
        table.caption = f"{len(attempts) - len(shown)} more attempt(s) not shown (--json lists them all)"
    console.print(table)
    _line(console)


def _finding(console: Console, rank: int, finding: Finding) -> None:
    entry = finding.entry
    step = STEP_NAMES.get(finding.step, finding.step)
    _line(console, f"{rank}. {entry.id}  {entry.title}", "bold cyan")
    _line(console, f"confidence {finding.confidence} ({finding.score:.2f}); step {finding.step}: {step}", indent=3)
    _para(console, finding.summary, indent=3)
    if finding.evidence:
        _line(console, "Evidence:", "bold", indent=3)
        for evidence in finding.evidence[:_EVIDENCE]:
            where = f"line {evidence.line}" if evidence.line is not None else evidence.source
            _line(console, f"{where}: {evidence.text}", indent=5)
            _para(console, f"-> {evidence.why}", indent=7, style="dim")
        if len(finding.evidence) > _EVIDENCE:
            _line(console, f"(and {len(finding.evidence) - _EVIDENCE} more)", "dim", indent=5)
    _line(console, "Causes, likeliest first:", "bold", indent=3)
    for index, cause in enumerate(finding.causes, start=1):
        _line(console, f"{index}. {cause.title} [{cause.likelihood}]", indent=5)
        if cause.why:
            _para(console, f"why: {cause.why}", indent=8, style="dim")
        _para(console, f"fix: {cause.fix}", indent=8)
    _line(console)


def _server(diagnosis: Diagnosis, console: Console) -> None:
    verdict = diagnosis.server
    assert verdict is not None
    _line(console, f"Server records ({verdict.url or 'data directory'}) for {verdict.device_id}:", "bold magenta")
    _para(console, verdict.said, indent=2)
    if verdict.entry:
        cause = f", cause {verdict.cause}" if verdict.cause else ""
        _line(console, f"verdict: {verdict.entry}{cause} ({verdict.confidence})", "bold", indent=2)
    else:
        _line(console, f"verdict: {verdict.confidence}", "bold", indent=2)
    for text in verdict.evidence:
        _para(console, f"- {text}", indent=2, style="dim")
    if verdict.fix:
        _para(console, f"what to do: {verdict.fix}", indent=2)
    _line(console)


def render_doctor(report: dict[str, Any], console: Console) -> None:
    """The doctor's report, from its JSON form (the same for the data directory and the API)."""
    device = report["device"]
    name = f" ({device['name']})" if device.get("name") else ""
    _line(console, f"Device {device['id']}{name}: {report['status']}", "bold")
    facts = [
        f"online: {'yes' if device.get('online') else 'no'}",
        f"last heard: {device.get('last_heard') or 'never'}",
        f"last address: {device.get('last_address') or 'unknown'}",
    ]
    _line(console, "; ".join(facts), indent=2)
    window = report.get("window") or {}
    if window.get("since"):
        _line(console, f"records from {window['since']} to {window.get('until') or 'now'}", "dim", indent=2)
    _line(console)
    _line(console, "What the server saw:", "bold")
    for sentence in report.get("said") or ["No record of this device."]:
        _para(console, f"- {sentence}", indent=2)
    _line(console)
    diagnosis = report.get("diagnosis") or []
    if diagnosis:
        _line(console, "Diagnosis:", "bold")
        for index, finding in enumerate(diagnosis, start=1):
            label = finding.get("entry") or "?"
            title = finding.get("cause_title") or finding.get("title") or ""
            _line(console, f"{index}. {label} {title} [{finding['confidence']}]", "bold cyan", indent=2)
            _para(console, finding["said"], indent=5)
            for text in finding.get("evidence") or []:
                _para(console, f"- {text}", indent=5, style="dim")
            if finding.get("related"):
                _line(console, "see: " + ", ".join(finding["related"]), "dim", indent=5)
        _line(console)
    todo = report.get("todo") or []
    if todo:
        _line(console, "What to do:", "bold")
        for step in todo:
            _para(console, f"- {step}", indent=2)
        _line(console)
    attempts = report.get("attempts") or []
    if attempts:
        table = Table("When", "From", "Outcome", "Step", "Reason", title="Recent attempts", title_justify="left")
        for attempt in attempts[:15]:
            table.add_row(
                attempt["started_at"] or "",
                attempt["peer_address"] or "",
                attempt["outcome"],
                attempt["step"] or "",
                attempt["reason"] or "",
            )
        console.print(table)


def render_unidentified(groups: Iterable[dict[str, Any]], console: Console) -> None:
    groups = list(groups)
    if not groups:
        _line(console, "No unidentified failed attempts in this period.")
        return
    for group in groups:
        reasons = ", ".join(f"{k} ×{v}" for k, v in group["reasons"].items())
        loop = " (a loop)" if group.get("loop") else ""
        _line(
            console, f"{group['host']}: {group['count']} attempt(s){loop}, {group['first']} to {group['last']}", "bold"
        )
        _line(console, reasons, indent=2)
        _para(console, group["said"], indent=2)
        candidates = group.get("candidates") or []
        if candidates:
            _line(console, "devices last seen at this address:", indent=2)
            for candidate in candidates:
                label = candidate["device_id"] + (f" ({candidate['name']})" if candidate.get("name") else "")
                _para(console, f"- {label} [{candidate['likelihood']}]: {candidate['relation']}", indent=4)
        else:
            _line(console, "no registered device was last seen at this address", "dim", indent=2)
        _line(console)


def render_catalog(entries: Iterable[Entry] = CATALOG, console: Console | None = None, *, full: bool = False) -> None:
    console = console or Console()
    for entry in entries:
        _line(console, f"{entry.id}  {entry.title}", "bold cyan")
        _line(console, f"step {entry.step}: {STEP_NAMES.get(entry.step, entry.step)}", indent=4)
        if not full:
            continue
        _para(console, "Symptom: " + entry.symptom, indent=4)
        _para(console, "Meaning: " + entry.meaning, indent=4)
        _line(console, "Causes:", indent=4)
        for cause in entry.causes:
            _para(console, f"- {cause.title} [{cause.likelihood}]: {cause.detail}", indent=6)
            _para(console, f"fix: {cause.fix}", indent=8)
        _para(console, "Tell apart: " + entry.tell_apart, indent=4)
        _para(console, "Server side: " + entry.server_side, indent=4)
        _para(console, "Fix: " + entry.fix, indent=4)
        _line(console)
