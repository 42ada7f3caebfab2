"""Joining a device log with the server's records of the same device and time.

The device cannot tell why the cloud refused it (field-failures.md §0.1, §2 C5); the server can, because
it recorded the reason of every attempt. The join takes the records in the log's time window (the
device's own attempts, and the unidentified attempts from its last address, since a device holding
another server key cannot name itself) and says which cause it was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt

from .catalog import entry as catalog_entry
from .rules import Evidence, Finding, RankedCause
from .sequence import STEP_DEPTH, DeviceStep, LogAnalysis
from .server_evidence import REASONS, UnidentifiedGroup, explain_attempt, iso

__all__ = ["ServerVerdict", "apply_verdict", "join"]

#: The device steps each server reason can be seen at (the device's view of the same failure).
_REASON_STEPS = {
    "nonce_mismatch": {DeviceStep.S3, DeviceStep.S5, DeviceStep.UNKNOWN},
    "malformed_identity": {DeviceStep.S3, DeviceStep.S5, DeviceStep.UNKNOWN},
    "unknown_device": {DeviceStep.S5, DeviceStep.UNKNOWN},
    "key_mismatch": {DeviceStep.S5, DeviceStep.UNKNOWN},
    "key_rejected": {DeviceStep.S5, DeviceStep.UNKNOWN},
    "identity_timeout": {DeviceStep.S5, DeviceStep.UNKNOWN},
    "server_error": {DeviceStep.S3, DeviceStep.S5, DeviceStep.UNKNOWN},
    "nonce_timeout": {DeviceStep.S1, DeviceStep.S2, DeviceStep.S3, DeviceStep.UNKNOWN},
    "closed_by_peer": {DeviceStep.S1, DeviceStep.S2, DeviceStep.S3, DeviceStep.UNKNOWN},
    "session_key_rejected": {DeviceStep.S6, DeviceStep.UNKNOWN},
    "hello_timeout": {DeviceStep.S6, DeviceStep.S7, DeviceStep.S8, DeviceStep.UNKNOWN},
}


@dataclass(slots=True)
class ServerVerdict:
    """What the server's records say about the failure in the log."""

    url: str | None
    device_id: str
    since: datetime
    until: datetime
    entry: str | None
    cause: str | None
    #: confirmed (the record names the reason), likely (by address and time), possible, inconclusive.
    confidence: str
    said: str
    fix: str | None
    evidence: list[str] = field(default_factory=list)
    attempts: list[ConnectionAttempt] = field(default_factory=list)
    unidentified: list[UnidentifiedGroup] = field(default_factory=list)
    registered: bool = True

    def to_json(self) -> dict[str, Any]:
        entry = catalog_entry(self.entry) if self.entry else None
        return {
            "url": self.url,
            "device_id": self.device_id,
            "registered": self.registered,
            "window": {"since": iso(self.since), "until": iso(self.until)},
            "entry": self.entry,
            "title": entry.title if entry else None,
            "cause": self.cause,
            "cause_title": entry.cause(self.cause).title if entry and self.cause else None,
            "confidence": self.confidence,
            "said": self.said,
            "fix": self.fix,
            "evidence": list(self.evidence),
            "attempts": [explain_attempt(a) for a in sorted(self.attempts, key=lambda a: a.started_at, reverse=True)],
            "unidentified": [g.to_json() for g in self.unidentified],
        }


def _device_failure(analysis: LogAnalysis | None) -> tuple[str | None, str | None]:
    primary = analysis.primary if analysis is not None else None
    if primary is None or primary.outcome != "failed" or primary.error is None:
        return None, None
    return primary.error.step, primary.error.kind


def join(
    analysis: LogAnalysis | None,
    attempts: list[ConnectionAttempt],
    groups: list[UnidentifiedGroup],
    *,
    device_id: str,
    since: datetime,
    until: datetime,
    url: str | None = None,
    registered: bool = True,
) -> ServerVerdict:
    """The verdict for `device_id` from the records between `since` and `until`."""
    mine = [a for a in attempts if a.device_id == device_id and since <= a.started_at <= until]
    nearby = [g for g in groups if g.last >= since and g.first <= until]
    failed = [a for a in mine if a.outcome is AttemptOutcome.FAILED]
    connected = [a for a in mine if a.outcome is AttemptOutcome.CONNECTED]
    step, kind = _device_failure(analysis)
    verdict = ServerVerdict(
        url, device_id, since, until, None, None, "inconclusive", "", None, [], mine, nearby, registered
    )
    window = f"between {iso(since)} and {iso(until)}"
    if failed:
        reasons = Counter(a.reason or "unknown" for a in failed)
        latest = {r: max(a.started_at for a in failed if (a.reason or "unknown") == r) for r in reasons}
        reason = max(reasons, key=lambda r: (reasons[r], latest[r]))
        info = REASONS.get(reason)
        verdict.confidence = "confirmed"
        verdict.evidence.append(f"{reasons[reason]} attempt(s) of this device {window} ended with {reason}")
        example = max((a for a in failed if a.reason == reason), key=lambda a: a.started_at, default=None)
        if example is not None and (example.presented_fingerprint or example.stored_fingerprint):
            verdict.evidence.append(
                f"presented key {example.presented_fingerprint or '(none)'}, registered key "
                f"{example.stored_fingerprint or '(none)'}"
            )
        if info is None:
            verdict.said = f"The server ended this device's attempts with {reason}."
            return verdict
        verdict.entry, verdict.cause, verdict.said, verdict.fix = info.entry, info.cause, info.said, info.fix
        if reason == "session_key_rejected" and kind == "signature":
            # The server cannot tell a device that failed to decrypt from one that failed to verify; the
            # device log can (protocol.md §9.5: orange versus magenta).
            verdict.entry, verdict.cause = "C7", "server_signing_key"
            verdict.said = (
                "The server sent its session key and the device closed: the device log shows the signature did "
                "not verify, so this server signs with a key other than the one the device holds."
            )
            verdict.fix = catalog_entry("C7").cause("server_signing_key").fix
        if step is not None and step not in _REASON_STEPS.get(reason, {step}):
            verdict.confidence = "likely"
            verdict.evidence.append(
                f"the log stops at {step} while the server saw {reason}: the log may be from another time (give --at)"
            )
        return verdict
    mismatch = [g for g in nearby if g.reasons.get("nonce_mismatch")]
    if mismatch:
        count = sum(g.reasons.get("nonce_mismatch", 0) for g in mismatch)
        info = REASONS["nonce_mismatch"]
        verdict.entry, verdict.cause, verdict.fix = info.entry, info.cause, info.fix
        verdict.confidence = "likely"
        verdict.said = (
            f"{count} handshake(s) from this device's last address {mismatch[0].host} {window} could not be "
            "decrypted with this server's key: the device holds another server public key. (Such a device cannot "
            "name itself; the address and the time tie the attempts to it.)"
        )
        verdict.evidence += [
            f"{g.count} unidentified attempt(s) from {g.host}, {iso(g.first)} to {iso(g.last)}" for g in mismatch
        ]
        return verdict
    if nearby:
        group = nearby[0]
        reason = max(group.reasons, key=lambda r: group.reasons[r])
        info = REASONS.get(reason)
        verdict.confidence = "possible"
        verdict.said = f"Only unidentified attempts ({reason}) came from this device's last address {window}."
        if info is not None:
            verdict.entry, verdict.cause, verdict.fix = info.entry, info.cause, info.fix
            verdict.said += " " + info.said
        verdict.evidence.append(f"{group.count} unidentified attempt(s) from {group.host}")
        return verdict
    if connected:
        verdict.said = (
            f"The server saw this device connect {len(connected)} time(s) {window} and no failure: the failures in "
            "the log were not against this server, or the log is from another time (give --at)."
        )
        verdict.evidence.append(f"last connected at {iso(max(a.started_at for a in connected))}")
        return verdict
    if step is None:
        verdict.said = f"The server has no record of this device {window}."
        return verdict
    if STEP_DEPTH.get(step, -1) <= STEP_DEPTH[DeviceStep.S0]:
        verdict.confidence = "likely"
        verdict.said = (
            f"Nothing from this device reached the server {window}, as expected when the connection fails before "
            "it opens: the fault lies between the device and the server (network, DNS, firewall), not in the keys."
        )
        return verdict
    verdict.confidence = "likely"
    verdict.entry = "C5" if STEP_DEPTH.get(step, -1) >= STEP_DEPTH[DeviceStep.S5] else "C4"
    verdict.cause = "other_cloud" if verdict.entry == "C5" else "not_a_device_server"
    verdict.fix = catalog_entry(verdict.entry).cause(verdict.cause).fix
    verdict.said = (
        f"The device opened a connection and got as far as {step}, but no attempt reached this server {window}: it "
        "is talking to another server (check its server address and key)."
    )
    return verdict


def apply_verdict(findings: list[Finding], verdict: ServerVerdict) -> list[Finding]:
    """The findings with the verdict's entry first and its cause ranked first."""
    if verdict.entry is None or verdict.confidence == "inconclusive":
        return findings
    likelihood = "confirmed" if verdict.confidence == "confirmed" else "high"
    evidence = [Evidence(None, text, "recorded by the server", "server") for text in verdict.evidence]
    target = next((f for f in findings if f.entry.id == verdict.entry), None)
    rest = [f for f in findings if f is not target]
    entry = catalog_entry(verdict.entry)
    if target is None:
        target = Finding(
            entry,
            0.0,
            entry.step,
            verdict.said,
            [],
            [RankedCause(c.key, c.title, c.likelihood, None, c.fix) for c in entry.causes],
            [],
            [],
        )
    causes = list(target.causes)
    if verdict.cause is not None:
        chosen = next(c for c in causes if c.key == verdict.cause)
        causes.remove(chosen)
        causes.insert(0, replace(chosen, likelihood=likelihood, why="the server's records: " + verdict.said))
    score = 0.99 if verdict.confidence == "confirmed" else max(target.score, 0.9)
    sources = target.sources if "server" in target.sources else [*target.sources, "server"]
    updated = replace(target, score=score, causes=causes, evidence=[*evidence, *target.evidence], sources=sources)
    return [updated, *rest]
