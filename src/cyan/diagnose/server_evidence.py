"""What the server saw: connection-attempt records, explained, with loops and unidentified peers.

A Cyan server records every connection attempt with the step it reached and the reason it ended
(`cyan.cloud.models.ConnectionAttempt`, docs/protocol.md "Failures: step and reason"). That settles what no
device log can (field-failures.md §2 C5 "Server-side evidence", §3.5): a regenerated key (`key_mismatch`,
with both fingerprints), another server key (`nonce_mismatch`), an unknown device. This module is pure:
it takes records and a clock reading and returns explanations.

- `explain_attempt`: one record in plain words, with its catalog entry and cause.
- `find_loops`: a device (or an address) failing again and again for the same reason; the firmware's
  reconnect backoff (1 s ×5, 2 s ×5, … up to 128 s, protocol.md §8.3) makes such loops regular.
- `group_unidentified`: failures that carry no device id. A device that holds another server key cannot be
  identified (its id is inside a message the server cannot decrypt), so such attempts are grouped by
  source address and time and related to the devices last seen at that address.
- `build_doctor`: all of it for one device: what the server saw and what to do.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord

from .catalog import entry as catalog_entry

__all__ = [
    "REASONS",
    "Candidate",
    "DoctorReport",
    "FailureLoop",
    "ReasonInfo",
    "ServerFinding",
    "UnidentifiedGroup",
    "attempt_from_json",
    "attempt_json",
    "build_doctor",
    "explain_attempt",
    "find_loops",
    "group_unidentified",
    "host_of",
    "iso",
    "parse_time",
]

DOCTOR_SCHEMA = "cyan.doctor/1"
#: Defaults of loop detection: this many failures for one reason with no gap longer than `LOOP_WINDOW`.
#: At the backoff's 128 s ceiling a stuck device still fails about 7 times in 15 minutes.
LOOP_FAILURES = 5
LOOP_WINDOW = timedelta(minutes=15)
#: Unidentified attempts from one address further apart than this are separate episodes.
GROUP_GAP = timedelta(minutes=30)
#: Unidentified failures only a device holding another server key (or damaged key data) produces.
_KEY_REASONS = frozenset({"nonce_mismatch", "malformed_identity"})
#: Identified failures that say only that the key presented was not the device's registered one.
_IMPOSTOR_REASONS = frozenset({"key_mismatch", "key_rejected"})


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """How to read one `Reason` of the protocol core in plain words."""

    reason: str
    said: str
    entry: str | None
    cause: str | None
    fix: str


_REASONS = (
    ReasonInfo(
        "nonce_mismatch",
        "The device's 256-byte handshake did not decrypt to this server's nonce: it was encrypted with another "
        "server public key (Particle's, another server's, or a blank or corrupt one). Such a device cannot be "
        "identified; only its address and the time say who it is.",
        "C5",
        "wrong_server_key",
        "Write this server's key file to the device over DFU (`particle keys server`), see `cyan serve`'s output.",
    ),
    ReasonInfo(
        "malformed_identity",
        "The handshake decrypted with this server's key but the identity in it was unusable (too short, or a "
        "device public key that is not RSA-1024): the key data on the device is damaged.",
        "C5",
        "wrong_server_key",
        "Give the device a sound key pair (`particle keys doctor` over DFU) and register it.",
    ),
    ReasonInfo(
        "rate_limited",
        "The server closed the connection before the handshake: its address opened more new connections than the "
        "limit per address. A device retries on its backoff and gets through; a client that keeps at it is "
        "flooding the device port (its repeats are counted, not recorded one by one).",
        None,
        None,
        "Many devices behind one address reconnecting at once get through within their backoff; if they do not, "
        "raise CYAN_ADDRESS_BURST / CYAN_ADDRESS_RATE (docs/security.md). Otherwise block the address.",
    ),
    ReasonInfo(
        "overloaded",
        "The server closed the connection before the handshake: it had as many handshakes under way as it runs at "
        "once (a fleet reconnecting together, after a restart or an outage). The device retries on its backoff and "
        "gets in as the handshakes under way end.",
        None,
        None,
        "Nothing, if devices get in within their backoff; a server that refuses for minutes on end needs more "
        "handshakes per second (--device-processes) or a larger CYAN_MAX_HANDSHAKES (docs/capacity.md).",
    ),
    ReasonInfo(
        "nonce_timeout",
        "A client connected and never answered the nonce: a stalled network path, something that is not a "
        "Particle device (a port scanner, a health check), or a device that gave up during the handshake.",
        "C4",
        "stalled",
        "If it is a device of yours, check the network path between it and the server.",
    ),
    ReasonInfo(
        "closed_by_peer",
        "The client closed the connection during the handshake before identifying itself.",
        "C4",
        "not_a_device_server",
        "A one-off is harmless; a device doing it every time reset or lost its connection mid-handshake.",
    ),
    ReasonInfo(
        "unknown_device",
        "The device identified itself, but its id is not registered on this server.",
        "C5",
        "unknown_device",
        "Register it with its public key (`cyan devices add ID --key KEY` or `particle keys send`).",
    ),
    ReasonInfo(
        "key_mismatch",
        "The device presented a public key other than the one registered: it regenerated its keys after its key "
        "area was erased (amnesia), or someone else is using its id.",
        "C5",
        "amnesia",
        "If it is your unit (same address, power trouble), accept the new key: approve the pending key or arm a "
        "re-key window (`cyan policy rekey ID`, docs/self-healing.md); otherwise restore its old key over DFU.",
    ),
    ReasonInfo(
        "key_rejected",
        "The key policy refused the device (registered without a key, or refused for another reason).",
        "C5",
        "unknown_device",
        "Register the device's public key, or change its key policy.",
    ),
    ReasonInfo(
        "identity_timeout",
        "The server took too long to decide on the device's key (the database was slow or down).",
        None,
        None,
        "Check the server's database; the device retries by itself.",
    ),
    ReasonInfo(
        "server_error",
        "The server could not do its own part of the handshake: a private-key worker failed or stalled, or its "
        "database could not be read.",
        None,
        None,
        "Check the server's log and its database; the device retries by itself.",
    ),
    ReasonInfo(
        "session_key_rejected",
        "The key matched and the session key went out, but the device closed without a Hello: it could not "
        "decrypt it (its private key is internally corrupt) or could not verify this server's signature.",
        "C6",
        "corrupt_private_key",
        "Give the device a sound key pair (`particle keys doctor` or a backup). If many devices fail this way at "
        "once, the server's key changed (C7): run it with the key the devices hold.",
    ),
    ReasonInfo(
        "hello_timeout",
        "The handshake completed but the device never sent its Hello.",
        "C8",
        "poor_link",
        "Check the device's connectivity; a device that keeps doing this may be resuming an old session.",
    ),
    ReasonInfo(
        "bad_frame_length",
        "The device sent a frame with an impossible length: its session keys differ from the server's.",
        "C8",
        "keys_changed_session_kept",
        "Restart the device to force a fresh handshake.",
    ),
    ReasonInfo(
        "decrypt_failed",
        "A frame from the device did not decrypt: its session keys differ from the server's.",
        "C8",
        "keys_changed_session_kept",
        "Restart the device to force a fresh handshake.",
    ),
    ReasonInfo(
        "malformed_message",
        "A message from the device could not be parsed.",
        "C8",
        "poor_link",
        "If it repeats, capture the device log and the server log.",
    ),
    ReasonInfo(
        "unexpected_message",
        "The device's first message after the handshake was not a Hello.",
        "C8",
        "keys_changed_session_kept",
        "Restart the device.",
    ),
    ReasonInfo(
        "idle_timeout",
        "The connected device went silent for too long and the server closed the session.",
        "C12",
        "idle_timeout",
        "Check the device's network (NAT idle timeouts, Wi-Fi) and whether its application blocks the cloud loop.",
    ),
    ReasonInfo(
        "missing_request_token",
        "The firmware dropped the session over a server request without a token (a server bug).",
        "C12",
        "rejected_message",
        "Report it: the server must send the token the firmware needs.",
    ),
    ReasonInfo(
        "unsupported_code",
        "The legacy firmware dropped the session over a response code it does not accept (a server bug).",
        "C12",
        "rejected_message",
        "Report it: legacy devices accept only empty ACKs and the replies they asked for.",
    ),
)
#: The UDP device server's DTLS failures (`cyan.dtls.Reason`, docs/dtls.md); the others it shares with TCP.
_DTLS_REASONS = (
    ReasonInfo(
        "alert_received",
        "The device ended the DTLS handshake with an alert. Most often it holds another server key: the "
        "ServerKeyExchange signature did not verify with the key it pins (Particle's, or another server's).",
        "C5",
        "wrong_server_key",
        "Write this server's 320-byte UDP key file to the device over DFU (`cyan keys server --protocol udp`).",
    ),
    ReasonInfo(
        "bad_signature",
        "The device's CertificateVerify did not verify with the public key it presented: its key data is damaged.",
        "C6",
        "corrupt_private_key",
        "Give the device a sound P-256 key pair (`particle keys doctor` over DFU) and register it.",
    ),
    ReasonInfo(
        "bad_certificate",
        "The device presented a key that is not an EC P-256 raw public key.",
        "C6",
        "corrupt_private_key",
        "Give the device a sound P-256 key pair (`particle keys doctor` over DFU) and register it.",
    ),
    ReasonInfo(
        "bad_finished",
        "The DTLS handshake's Finished message did not verify: the two sides derived different keys.",
        None,
        None,
        "If it repeats, capture the device log and the server log.",
    ),
    ReasonInfo(
        "timeout",
        "A DTLS handshake stopped half-way: the device's next flight never came after every retransmission "
        "(datagrams lost, a NAT that dropped the mapping, or a device that gave up or restarted).",
        "C4",
        "stalled",
        "If it is a device of yours, check the network path (UDP 5684 both ways) between it and the server.",
    ),
    ReasonInfo(
        "decision_timeout",
        "The server took too long to accept the device's DTLS key (it was overloaded).",
        None,
        None,
        "Check the server's load and log; the device retries by itself.",
    ),
    ReasonInfo(
        "unsupported_suite",
        "The client does not offer TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8: not a Particle device (a scanner, another "
        "DTLS client).",
        None,
        None,
        "Nothing to do for a device of yours; block the address if it keeps at it.",
    ),
    ReasonInfo(
        "unsupported_certificate_type",
        "The client does not offer raw public keys (RFC 7250): not a Particle device.",
        None,
        None,
        "Nothing to do for a device of yours; block the address if it keeps at it.",
    ),
    ReasonInfo(
        "unsupported_curve",
        "The client does not offer the P-256 curve: not a Particle device.",
        None,
        None,
        "Nothing to do for a device of yours; block the address if it keeps at it.",
    ),
    ReasonInfo(
        "unsupported_version",
        "The client does not speak DTLS 1.2: not a Particle device.",
        None,
        None,
        "Nothing to do for a device of yours; block the address if it keeps at it.",
    ),
    ReasonInfo(
        "bad_key_exchange",
        "The device's ECDHE point was not a point on P-256: its DTLS stack is broken, or it is not a device.",
        None,
        None,
        "If it is a device of yours, capture the device log and the server log.",
    ),
    ReasonInfo(
        "unsupported_extension",
        "The client sent a DTLS extension Particle's profile refuses: not a Particle device.",
        None,
        None,
        "Nothing to do for a device of yours; block the address if it keeps at it.",
    ),
    ReasonInfo(
        "too_large",
        "The client sent a DTLS message or record larger than any of Particle's profile.",
        None,
        None,
        "If it is a device of yours, capture the device log and the server log.",
    ),
)
REASONS: dict[str, ReasonInfo] = {r.reason: r for r in (*_REASONS, *_DTLS_REASONS)}


def host_of(address: str | None) -> str:
    """The host part of `host:port` (IPv4, IPv6 with or without brackets)."""
    if not address:
        return ""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    if address.count(":") > 1 and address.rsplit(":", 1)[1].isdigit() and "." not in address:
        # IPv6 "addr:port" as asyncio's peername is formatted by the server: the last group is the port.
        return address.rsplit(":", 1)[0]
    return address


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time, `Z` accepted; naive times are read as UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _said(attempt: ConnectionAttempt) -> str:
    if attempt.outcome is AttemptOutcome.CONNECTED:
        return "Connected: the handshake and the Hello completed."
    info = REASONS.get(attempt.reason or "")
    if info is not None:
        return info.said
    return f"Failed at {attempt.step}: {attempt.reason or 'no reason recorded'}."


def explain_attempt(attempt: ConnectionAttempt) -> dict[str, Any]:
    """The record and its reading, as the JSON outputs carry it."""
    info = REASONS.get(attempt.reason or "") if attempt.outcome is AttemptOutcome.FAILED else None
    return {
        **attempt_json(attempt),
        "said": _said(attempt),
        "entry": info.entry if info else None,
        "cause": info.cause if info else None,
        "fix": info.fix if info else None,
    }


def attempt_json(attempt: ConnectionAttempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "started_at": iso(attempt.started_at),
        "peer_address": attempt.peer_address,
        "host": host_of(attempt.peer_address),
        "device_id": attempt.device_id,
        "outcome": attempt.outcome.value,
        "step": attempt.step,
        "reason": attempt.reason,
        "detail": attempt.detail,
        "presented_fingerprint": attempt.presented_fingerprint,
        "stored_fingerprint": attempt.stored_fingerprint,
        "duration": attempt.duration,
    }


def attempt_from_json(value: dict[str, Any]) -> ConnectionAttempt:
    """The inverse of `attempt_json` (the CLI reads records over the API)."""
    return ConnectionAttempt(
        started_at=parse_time(str(value["started_at"])),
        peer_address=str(value.get("peer_address") or ""),
        outcome=AttemptOutcome(value.get("outcome", "failed")),
        step=str(value.get("step") or ""),
        reason=value.get("reason"),
        detail=value.get("detail"),
        device_id=value.get("device_id"),
        presented_fingerprint=value.get("presented_fingerprint"),
        stored_fingerprint=value.get("stored_fingerprint"),
        duration=value.get("duration"),
        id=value.get("id"),
    )


# -- loops ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FailureLoop:
    """A run of failures for one reason with no long pause: a device (or an address) stuck in a loop."""

    device_id: str | None
    host: str | None
    reason: str
    count: int
    first: datetime
    last: datetime
    #: Median seconds between two attempts of the run.
    median_interval: float | None
    #: The gaps grow like the firmware's reconnect backoff (protocol.md §8.3).
    backoff_like: bool
    #: The run goes on: its last failure is recent and no success followed.
    ongoing: bool
    entry: str | None
    cause: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "host": self.host,
            "reason": self.reason,
            "count": self.count,
            "first": iso(self.first),
            "last": iso(self.last),
            "median_interval": self.median_interval,
            "backoff_like": self.backoff_like,
            "ongoing": self.ongoing,
            "entry": self.entry,
            "cause": self.cause,
        }

    def describe(self) -> str:
        who = f"device {self.device_id}" if self.device_id else f"address {self.host}"
        what = "connected and dropped" if self.reason == "reconnect_churn" else f"failed with {self.reason}"
        pace = f", every {self.median_interval:.0f} s or so" if self.median_interval else ""
        state = "and still is" if self.ongoing else "until " + (iso(self.last) or "")
        return f"{who} {what} {self.count} times from {iso(self.first)}{pace}, {state}"


def _backoff_like(gaps: list[float]) -> bool:
    """Gaps that never shrink much and grow overall, as 1 s, 2 s, 4 s … 128 s do (§8.3)."""
    if len(gaps) < 4:
        return False
    growing = all(later >= earlier * 0.5 for earlier, later in itertools.pairwise(gaps))
    return growing and gaps[-1] >= gaps[0] * 1.5


def _runs(times: list[datetime], window: timedelta) -> list[list[datetime]]:
    runs: list[list[datetime]] = []
    for moment in sorted(times):
        if runs and moment - runs[-1][-1] <= window:
            runs[-1].append(moment)
        else:
            runs.append([moment])
    return runs


def find_loops(
    attempts: Iterable[ConnectionAttempt],
    *,
    now: datetime,
    min_failures: int = LOOP_FAILURES,
    window: timedelta = LOOP_WINDOW,
) -> list[FailureLoop]:
    """Loops in `attempts`: per device (or per address for unidentified ones) and reason, a run of at least
    `min_failures` failures with no gap longer than `window`. Connected attempts that keep coming
    (a device that connects and drops again and again, C12) count as the reason `reconnect_churn`."""
    attempts = list(attempts)
    groups: dict[tuple[str | None, str | None, str], list[datetime]] = {}
    last_success: dict[str, datetime] = {}
    for attempt in attempts:
        host = host_of(attempt.peer_address)
        key_host = None if attempt.device_id else host
        if attempt.outcome is AttemptOutcome.CONNECTED:
            if attempt.device_id:
                previous = last_success.get(attempt.device_id)
                if previous is None or attempt.started_at > previous:
                    last_success[attempt.device_id] = attempt.started_at
                groups.setdefault((attempt.device_id, None, "reconnect_churn"), []).append(attempt.started_at)
            continue
        reason = attempt.reason or "unknown"
        groups.setdefault((attempt.device_id, key_host, reason), []).append(attempt.started_at)
    loops: list[FailureLoop] = []
    for (device_id, loop_host, reason), times in groups.items():
        for run in _runs(times, window):
            if len(run) < min_failures:
                continue
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(run)]
            median = round(statistics.median(gaps), 1) if gaps else None
            success = last_success.get(device_id or "")
            recent = now - run[-1] <= max(window, timedelta(seconds=2 * (median or 0)))
            ongoing = recent and (reason == "reconnect_churn" or success is None or success < run[-1])
            info = REASONS.get(reason)
            entry_id, cause = (info.entry, info.cause) if info else (None, None)
            if reason == "reconnect_churn":
                entry_id, cause = "C12", "idle_timeout"
            loops.append(
                FailureLoop(
                    device_id,
                    loop_host,
                    reason,
                    len(run),
                    run[0],
                    run[-1],
                    median,
                    _backoff_like(gaps),
                    ongoing,
                    entry_id,
                    cause,
                )
            )
    loops.sort(key=lambda loop: loop.last, reverse=True)
    return loops


# -- unidentified attempts ------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    """A device that may be behind a group of unidentified attempts."""

    device_id: str
    name: str | None
    last_address: str | None
    last_heard: datetime | None
    online: bool
    #: Why it is a candidate, in plain words.
    relation: str
    #: "likely", "possible" or "unlikely".
    likelihood: str

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "name": self.name,
            "last_address": self.last_address,
            "last_heard": iso(self.last_heard),
            "online": self.online,
            "relation": self.relation,
            "likelihood": self.likelihood,
        }


@dataclass(slots=True)
class UnidentifiedGroup:
    """Failed attempts without a device id, from one address, close together in time."""

    host: str
    first: datetime
    last: datetime
    count: int
    reasons: dict[str, int]
    entry: str | None
    cause: str | None
    said: str
    loop: bool
    candidates: list[Candidate] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "first": iso(self.first),
            "last": iso(self.last),
            "count": self.count,
            "reasons": dict(self.reasons),
            "entry": self.entry,
            "cause": self.cause,
            "said": self.said,
            "loop": self.loop,
            "candidates": [c.to_json() for c in self.candidates],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> UnidentifiedGroup:
        return cls(
            host=str(value.get("host") or ""),
            first=parse_time(str(value["first"])),
            last=parse_time(str(value["last"])),
            count=int(value.get("count") or 0),
            reasons={str(k): int(v) for k, v in dict(value.get("reasons") or {}).items()},
            entry=value.get("entry"),
            cause=value.get("cause"),
            said=str(value.get("said") or ""),
            loop=bool(value.get("loop")),
        )


def _named_itself(device_id: str, first: datetime, last: datetime, identified: Sequence[ConnectionAttempt]) -> bool:
    """The device identified itself (with any outcome) while the unidentified attempts were coming, so it is
    not the one that cannot: a device holds one server key at a time."""
    slack = timedelta(minutes=1)
    return any(a.device_id == device_id and first - slack <= a.started_at <= last + slack for a in identified)


def _candidates(
    host: str,
    first: datetime,
    last: datetime,
    devices: Sequence[DeviceRecord],
    identified: Sequence[ConnectionAttempt],
) -> list[Candidate]:
    found: dict[str, Candidate] = {}
    for device in devices:
        if host_of(device.last_address) != host:
            continue
        if _named_itself(device.id, first, last, identified):
            relation = "identified itself from here while these came, so probably another device"
            likelihood = "unlikely"
        elif device.online:
            relation = "connected from this address right now, so probably another device"
            likelihood = "unlikely"
        elif device.last_heard is not None and device.last_heard <= first:
            relation = f"last heard from this address at {iso(device.last_heard)}, before these attempts began"
            likelihood = "likely"
        else:
            relation = f"last seen at this address (last heard {iso(device.last_heard) or 'never'})"
            likelihood = "possible"
        found[device.id] = Candidate(
            device.id, device.name, device.last_address, device.last_heard, device.online, relation, likelihood
        )
    names = {d.id: d for d in devices}
    for attempt in identified:
        if not attempt.device_id or attempt.device_id in found or host_of(attempt.peer_address) != host:
            continue
        known = names.get(attempt.device_id)
        found[attempt.device_id] = Candidate(
            attempt.device_id,
            known.name if known else None,
            attempt.peer_address,
            known.last_heard if known else None,
            bool(known and known.online),
            f"identified itself from this address at {iso(attempt.started_at)}",
            "possible",
        )
    order = {"likely": 0, "possible": 1, "unlikely": 2}
    return sorted(found.values(), key=lambda c: (order[c.likelihood], c.device_id))


def group_unidentified(
    attempts: Iterable[ConnectionAttempt],
    devices: Sequence[DeviceRecord] = (),
    *,
    gap: timedelta = GROUP_GAP,
    min_failures: int = LOOP_FAILURES,
    loop_window: timedelta = LOOP_WINDOW,
) -> list[UnidentifiedGroup]:
    """Failed attempts without a device id, grouped by source address and by time (a pause longer than `gap`
    starts a new group), each related to the devices last seen at that address, newest group first."""
    attempts = list(attempts)
    identified = [a for a in attempts if a.device_id]
    by_host: dict[str, list[ConnectionAttempt]] = {}
    for attempt in attempts:
        if attempt.device_id is None and attempt.outcome is AttemptOutcome.FAILED:
            by_host.setdefault(host_of(attempt.peer_address), []).append(attempt)
    groups: list[UnidentifiedGroup] = []
    for host, found in by_host.items():
        found.sort(key=lambda a: a.started_at)
        episodes: list[list[ConnectionAttempt]] = []
        for attempt in found:
            if episodes and attempt.started_at - episodes[-1][-1].started_at <= gap:
                episodes[-1].append(attempt)
            else:
                episodes.append([attempt])
        for episode in episodes:
            reasons = Counter(a.reason or "unknown" for a in episode)
            dominant = reasons.most_common(1)[0][0]
            info = REASONS.get(dominant)
            loop = any(len(run) >= min_failures for run in _runs([a.started_at for a in episode], loop_window))
            groups.append(
                UnidentifiedGroup(
                    host,
                    episode[0].started_at,
                    episode[-1].started_at,
                    len(episode),
                    dict(reasons),
                    info.entry if info else None,
                    info.cause if info else None,
                    info.said if info else f"Failed attempts ({dominant}) from {host}.",
                    loop,
                    _candidates(host, episode[0].started_at, episode[-1].started_at, devices, identified),
                )
            )
    groups.sort(key=lambda g: g.last, reverse=True)
    return groups


# -- the doctor -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ServerFinding:
    """A diagnosis from the server's records."""

    entry: str | None
    cause: str | None
    #: "confirmed" (the record says it), "likely" (by address and time), "possible".
    confidence: str
    said: str
    fix: str
    evidence: list[str] = field(default_factory=list)
    related: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        title = catalog_entry(self.entry).title if self.entry else None
        cause_title = catalog_entry(self.entry).cause(self.cause).title if self.entry and self.cause else None
        return {
            "entry": self.entry,
            "title": title,
            "cause": self.cause,
            "cause_title": cause_title,
            "confidence": self.confidence,
            "said": self.said,
            "fix": self.fix,
            "evidence": list(self.evidence),
            "related": list(self.related),
        }


@dataclass(slots=True)
class DoctorReport:
    device_id: str
    device: DeviceRecord | None
    online: bool
    since: datetime | None
    until: datetime | None
    status: str
    attempts: list[ConnectionAttempt]
    loops: list[FailureLoop]
    unidentified: list[UnidentifiedGroup]
    findings: list[ServerFinding]
    said: list[str]
    todo: list[str]

    @property
    def last_connected(self) -> datetime | None:
        times = [a.started_at for a in self.attempts if a.outcome is AttemptOutcome.CONNECTED]
        return max(times) if times else None

    @property
    def last_failure(self) -> datetime | None:
        times = [a.started_at for a in self.attempts if a.outcome is AttemptOutcome.FAILED]
        return max(times) if times else None

    def to_json(self) -> dict[str, Any]:
        device = self.device
        failed = [a for a in self.attempts if a.outcome is AttemptOutcome.FAILED]
        return {
            "schema": DOCTOR_SCHEMA,
            "device": {
                "id": self.device_id,
                "registered": device is not None,
                "name": device.name if device else None,
                "online": self.online,
                "last_heard": iso(device.last_heard) if device else None,
                "last_address": device.last_address if device else None,
                "key_fingerprint": device.key_fingerprint if device else None,
            },
            "window": {"since": iso(self.since), "until": iso(self.until)},
            "status": self.status,
            "counts": {
                "attempts": len(self.attempts),
                "connected": len(self.attempts) - len(failed),
                "failed": len(failed),
                "by_reason": dict(Counter(a.reason or "unknown" for a in failed)),
            },
            "last_connected": iso(self.last_connected),
            "last_failure": iso(self.last_failure),
            "said": list(self.said),
            "diagnosis": [f.to_json() for f in self.findings],
            "todo": list(self.todo),
            "loops": [loop.to_json() for loop in self.loops],
            "unidentified": [g.to_json() for g in self.unidentified],
            "attempts": [explain_attempt(a) for a in sorted(self.attempts, key=lambda a: a.started_at, reverse=True)],
        }


def _finding_for_reason(reason: str, attempts: list[ConnectionAttempt]) -> ServerFinding:
    info = REASONS.get(reason)
    latest = max(attempts, key=lambda a: a.started_at)
    evidence = [f"{len(attempts)} attempt(s) ended with {reason}, the last at {iso(latest.started_at)}"]
    if latest.detail:
        evidence.append(f"server detail: {latest.detail}")
    if latest.presented_fingerprint or latest.stored_fingerprint:
        evidence.append(
            f"presented key {latest.presented_fingerprint or '(none)'}, registered key "
            f"{latest.stored_fingerprint or '(none)'}"
        )
    if info is None:
        return ServerFinding(
            None,
            None,
            "confirmed",
            f"The server ended these attempts with {reason} at {latest.step}.",
            "See docs/protocol.md for what the reason means.",
            evidence,
        )
    return ServerFinding(info.entry, info.cause, "confirmed", info.said, info.fix, evidence)


def build_doctor(
    device_id: str,
    device: DeviceRecord | None,
    attempts: Sequence[ConnectionAttempt],
    *,
    now: datetime,
    online: bool | None = None,
    unidentified: Sequence[ConnectionAttempt] = (),
    devices: Sequence[DeviceRecord] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    min_failures: int = LOOP_FAILURES,
    window: timedelta = LOOP_WINDOW,
) -> DoctorReport:
    """The server's view of one device: `attempts` are its identified attempts (newest or oldest first),
    `unidentified` the failed attempts without a device id in the same period (any address: only those
    from the device's last address are related to it), `devices` the registry for the relation."""
    mine = sorted((a for a in attempts if a.device_id == device_id), key=lambda a: a.started_at)
    is_online = device.online if online is None and device is not None else bool(online)
    loops = list(find_loops(mine, now=now, min_failures=min_failures, window=window))
    host = host_of(device.last_address) if device else ""
    connected = [a for a in mine if a.outcome is AttemptOutcome.CONNECTED]
    last_ok = connected[-1].started_at if connected else None
    quiet_since = last_ok or (device.last_heard if device else None)
    groups = []
    if host:
        nearby = [
            a
            for a in unidentified
            if a.device_id is None
            and host_of(a.peer_address) == host
            and (quiet_since is None or a.started_at >= quiet_since)
        ]
        groups = group_unidentified(nearby, [device] if device else [], min_failures=min_failures, loop_window=window)
    failures = [a for a in mine if a.outcome is AttemptOutcome.FAILED and (last_ok is None or a.started_at > last_ok)]
    # Another key presented while the device was connected with its registered one (it is connected now, or
    # was heard from after them) is not the device: someone knows its id (docs/keys.md "Unproven attempts").
    # Those attempts say nothing of the device's health, and their key is never one to approve.
    heard = device.last_heard if device is not None else None
    impostors = [
        a
        for a in failures
        if a.reason in _IMPOSTOR_REASONS
        and last_ok is not None
        and (is_online or (heard is not None and heard > a.started_at))
    ]
    failures = [a for a in failures if a not in impostors]
    findings: list[ServerFinding] = []
    said: list[str] = []
    if device is None:
        said.append(f"Device {device_id} is not registered on this server.")
    if mine:
        said.append(
            f"{len(mine)} connection attempt(s) from this device in the period: {len(connected)} connected, "
            f"{len(mine) - len(connected)} failed."
        )
    if is_online:
        said.append("It is connected now.")
    elif last_ok is not None:
        said.append(f"It last connected at {iso(last_ok)}.")
    elif device is not None and device.last_heard is not None:
        said.append(
            f"It was last heard at {iso(device.last_heard)} from {device.last_address or 'an unknown address'}."
        )
    if failures:
        by_reason: dict[str, list[ConnectionAttempt]] = {}
        for attempt in failures:
            by_reason.setdefault(attempt.reason or "unknown", []).append(attempt)
        ranked = sorted(by_reason.items(), key=lambda kv: (len(kv[1]), max(a.started_at for a in kv[1])), reverse=True)
        for reason, found in ranked:
            finding = _finding_for_reason(reason, found)
            findings.append(finding)
            said.append(f"Since then {len(found)} attempt(s) failed with {reason}: {finding.said}")
    if impostors:
        keys = sorted({a.presented_fingerprint or "(none)" for a in impostors})
        findings.append(
            ServerFinding(
                None,
                None,
                "likely",
                f"{len(impostors)} attempt(s) claimed this device's id with another key while it was connected with "
                "its registered key: they were not the device. Someone knows its id (it is not a secret). Nothing "
                "of the device was changed by them.",
                "Do not approve a key presented this way; reject any that is pending (cyan policy reject ID "
                "--fingerprint FP). Find the client by its address; block it at your firewall if it persists.",
                [
                    f"keys presented: {', '.join(keys)}",
                    f"from {', '.join(sorted({host_of(a.peer_address) for a in impostors}))}",
                ],
            )
        )
        said.append(f"{len(impostors)} attempt(s) claimed its id with another key while it was connected.")
    totals: Counter[str] = Counter()
    for group in groups:
        totals.update(group.reasons)
        reasons = ", ".join(f"{k} ×{v}" for k, v in group.reasons.items())
        said.append(
            f"{group.count} unidentified attempt(s) came from its last address {group.host} between "
            f"{iso(group.first)} and {iso(group.last)} ({reasons})"
            + (
                ", probably from another device: this one identified itself meanwhile."
                if _named_itself(device_id, group.first, group.last, mine)
                else "."
            )
        )
    if not failures and not impostors:
        # Several devices can share an address (NAT): the reasons that only a device with a wrong server key
        # produces come first, the ones any client can cause (a stall, a scanner) after them.
        for reason in sorted(totals, key=lambda r: (r not in _KEY_REASONS, -totals[r], r)):
            info = REASONS.get(reason)
            if info is None:
                continue
            hosts = sorted({g.host for g in groups if reason in g.reasons})
            findings.append(
                ServerFinding(
                    info.entry,
                    info.cause,
                    "likely" if reason in _KEY_REASONS else "possible",
                    info.said + " These came from the address this device was last seen at, after it went quiet.",
                    info.fix,
                    [f"{totals[reason]} unidentified attempt(s) with {reason} from {', '.join(hosts)}"],
                )
            )
    for loop in loops:
        if loop.ongoing or loop.reason == "reconnect_churn":
            said.append("Loop: " + loop.describe() + ".")
        if loop.reason == "reconnect_churn":
            findings.append(
                ServerFinding(
                    "C12",
                    "idle_timeout",
                    "likely",
                    f"The device connected {loop.count} times in a short period: its sessions keep ending.",
                    "Find out what ends the sessions (the device log says; see C12).",
                    [loop.describe()],
                )
            )
    status = _status(device, is_online, mine, failures, groups)
    if status == "silent" and not findings:
        since_text = iso(quiet_since) if quiet_since else "the start of the period"
        findings.append(
            ServerFinding(
                None,
                None,
                "possible",
                f"Nothing from this device has reached the server since {since_text}. It cannot reach the server "
                "(no Wi-Fi, no internet, port 5683 blocked, DNS), it is talking to another cloud (its server address "
                "was reset), or it is off or dead.",
                "Look at the device: its LED, or its log with `cyan diagnose`.",
                related=["C1", "C2", "C3", "C10", "C11", "C14"],
            )
        )
        said.append(f"No attempt from this device or its last address since {since_text}.")
    if status == "never_seen" and not findings:
        findings.append(
            ServerFinding(
                None,
                None,
                "possible",
                "The server has never seen this device connect. It is not pointed at this server yet, or it cannot "
                "reach it.",
                "Write this server's key file to the device (`cyan serve` prints how) and check its network.",
                related=["C3", "C11"],
            )
        )
    todo = list(dict.fromkeys(f.fix for f in findings))
    return DoctorReport(device_id, device, is_online, since, until, status, mine, loops, groups, findings, said, todo)


def _status(
    device: DeviceRecord | None,
    online: bool,
    mine: Sequence[ConnectionAttempt],
    failures: Sequence[ConnectionAttempt],
    groups: Sequence[UnidentifiedGroup],
) -> str:
    """online, failing (attempts fail), silent (nothing arrives), never_seen or unregistered."""
    if online:
        return "online"
    if failures or groups:
        return "failing"
    if device is None:
        return "unregistered"
    if not mine and device.last_heard is None:
        return "never_seen"
    return "silent"
