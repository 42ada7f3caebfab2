"""The rules: from an analysed log (and LED descriptions, error codes) to ranked catalog findings.

Every catalog entry of field-failures.md §2 has a rule here. A rule collects evidence (the lines that
show it and why), a score (how sure: an explicit failure line of that step is near certain, a pattern
that only predicts the failure is weak) and adjustments to the entry's default cause ranking, such as
`type:255` moving "wrong server key" to the top of C5 (field-failures.md §2 C5 "Device-side clues").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .catalog import CATALOG, Entry, entry
from .codes import CodeReading, explain_key_error_flags, sos_meaning
from .leds import LedReading
from .sequence import STEP_DEPTH, STEP_NAMES, Attempt, DeviceStep, LogAnalysis
from .signals import Sig, Signal

__all__ = ["LIKELIHOODS", "Evidence", "Finding", "RankedCause", "find"]

#: Cause likelihoods, strongest first. "confirmed" only comes from the server's records.
LIKELIHOODS = ("confirmed", "high", "medium", "low", "unlikely")
_WEIGHT = {name: len(LIKELIHOODS) - i for i, name in enumerate(LIKELIHOODS)}
_PARTICLE_HOSTS = ("device.spark.io", "particle.io", "spark.io")


@dataclass(frozen=True, slots=True)
class Evidence:
    #: The log line, or None for what was given on the command line or read from the server.
    line: int | None
    text: str
    why: str
    #: "log", "led", "code" or "server".
    source: str = "log"


@dataclass(frozen=True, slots=True)
class RankedCause:
    key: str
    title: str
    likelihood: str
    #: Why this cause moved up or down for this device (None: the catalog's default order).
    why: str | None
    fix: str


@dataclass(slots=True)
class Finding:
    entry: Entry
    score: float
    step: str
    summary: str
    evidence: list[Evidence]
    causes: list[RankedCause]
    #: The attempts (1-based indexes) that show it.
    attempts: list[int]
    sources: list[str]

    @property
    def confidence(self) -> str:
        if self.score >= 0.8:
            return "high"
        if self.score >= 0.5:
            return "medium"
        return "low"


@dataclass(slots=True)
class _Adjust:
    key: str
    likelihood: str
    why: str
    boost: int


@dataclass(slots=True)
class _Draft:
    entry: Entry
    score: float = 0.0
    summary: str = ""
    summary_score: float = -1.0
    evidence: list[Evidence] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    adjustments: list[_Adjust] = field(default_factory=list)
    step: str | None = None

    def add(self, score: float, summary: str, source: str = "log") -> None:
        if self.score and source not in self.sources:
            # Two independent sources (log and LED, say) agreeing is worth a little more than either.
            self.score = min(0.99, max(self.score, score) + 0.03)
        else:
            self.score = max(self.score, score)
        if source not in self.sources:
            self.sources.append(source)
        if score > self.summary_score:
            self.summary, self.summary_score = summary, score

    def cite(self, signal: Signal | None, why: str, *, line: int | None = None, text: str | None = None) -> None:
        if signal is not None:
            line, text = signal.line, signal.record.raw.strip()
        if text is None:
            return
        if any(e.line == line and e.text == text for e in self.evidence) and line is not None:
            return
        self.evidence.append(Evidence(line, text, why))

    def adjust(self, key: str, likelihood: str, why: str, boost: int = 1) -> None:
        self.entry.cause(key)  # fail early on a typo
        self.adjustments.append(_Adjust(key, likelihood, why, boost))

    def build(self) -> Finding:
        ranked: dict[str, tuple[str, str | None, int]] = {c.key: (c.likelihood, None, 0) for c in self.entry.causes}
        for adj in self.adjustments:
            ranked[adj.key] = (adj.likelihood, adj.why, ranked[adj.key][2] + adj.boost)
        order = {c.key: i for i, c in enumerate(self.entry.causes)}
        keys = sorted(ranked, key=lambda k: (-_WEIGHT[ranked[k][0]], -ranked[k][2], order[k]))
        causes = [
            RankedCause(k, self.entry.cause(k).title, ranked[k][0], ranked[k][1], self.entry.cause(k).fix) for k in keys
        ]
        return Finding(
            self.entry,
            round(self.score, 2),
            self.step or self.entry.step,
            self.summary,
            self.evidence,
            causes,
            sorted(set(self.attempts)),
            self.sources,
        )


class _Drafts:
    def __init__(self) -> None:
        self.by_id: dict[str, _Draft] = {}

    def __call__(self, entry_id: str) -> _Draft:
        draft = self.by_id.get(entry_id)
        if draft is None:
            draft = self.by_id[entry_id] = _Draft(entry(entry_id))
        return draft

    def get(self, entry_id: str) -> _Draft | None:
        return self.by_id.get(entry_id)


def _is_particle(host: str | None) -> bool:
    return bool(host) and any(str(host).lower().endswith(h) for h in _PARTICLE_HOSTS)


# -- per-attempt classification ------------------------------------------------------------------------


def classify(attempt: Attempt) -> tuple[str, float] | None:
    """The catalog entry an attempt shows and how sure that is, or None (connected, or no clue)."""
    if attempt.outcome == "dropped":
        return "C12", 0.85
    error = attempt.error
    if attempt.outcome != "failed" or error is None:
        return None
    step, kind = error.step, error.kind
    if step == DeviceStep.S0:
        if kind == "dns_failed":
            return "C10", 0.95
        if kind == "cloud_error":
            return ("C2", 0.85) if error.code == 2 else ("C3", 0.85)
        if error.code_kind == "errno" and error.code in (111, 110):
            return "C3", 0.85
        if attempt.cloud_error == 2 or (attempt.internet == "failed" and not attempt.socket_connected):
            return "C2", 0.85
        if attempt.cloud_error == 3 or attempt.internet == "ok":
            return "C3", 0.85
        return "C3", 0.6
    if step == DeviceStep.S1:
        return "C4", 0.95 if kind == "nonce" else 0.8
    if step == DeviceStep.S2:
        return "C9", 0.8
    if step in (DeviceStep.S3, DeviceStep.S5):
        return "C5", 0.95 if kind == "receive_key" else 0.8
    if step == DeviceStep.S6:
        if kind == "signature":
            return "C7", 0.95
        if kind == "decrypt":
            return "C6", 0.95
        return "C6", 0.6
    if step in (DeviceStep.S7, DeviceStep.S8):
        return "C8", 0.95 if kind in ("hello_receive", "hello_send") else 0.8
    if step == DeviceStep.DTLS:
        if kind in ("server_key", "setup_context") or error.code == -0x3B62:
            return "C9", 0.95
        return "C5", 0.7
    if step == DeviceStep.UNKNOWN and error.code == -19:
        return "C5", 0.75
    return None


def _ms(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value} ms"


def _cite_attempt(draft: _Draft, analysis: LogAnalysis, attempt: Attempt) -> None:
    """The lines of an attempt that show where and how it stopped."""
    error = attempt.error
    if error is not None:
        record = analysis.record(error.line)
        if record is not None:
            draft.cite(
                None,
                f"attempt {attempt.index} stopped at {error.step} ({STEP_NAMES.get(error.step, error.step)})",
                line=record.line,
                text=record.raw.strip(),
            )
    for signal in analysis.signals:
        if signal.line < attempt.first_line or signal.line > attempt.last_line:
            continue
        if error is not None and signal.line > error.line and not _consequence(signal, error.step):
            continue  # what a device does after its first failure is noise (a closed socket read, say)
        if attempt.outcome == "dropped" and signal.kind not in (Sig.SESSION_DROP, Sig.DROP_CAUSE):
            continue
        why = _supporting(signal, attempt)
        if why:
            draft.cite(signal, why)


def _consequence(signal: Signal, step: str) -> bool:
    """Lines after the failure that still describe it: the summary codes of a handshake failure, the
    internet test and orange blinks of a socket failure (field-failures.md §4.4)."""
    if step == DeviceStep.S0:
        return signal.kind in (Sig.INTERNET_FAILED, Sig.CLOUD_UNREACHABLE, Sig.CLOUD_ERROR, Sig.WLAN_RESET)
    return signal.kind in (Sig.HANDSHAKE_FAILED, Sig.PROTOCOL_FAILED, Sig.SESSION_DROP, Sig.DROP_CAUSE)


def _supporting(signal: Signal, attempt: Attempt) -> str | None:
    kind = signal.kind
    if kind == Sig.HANDSHAKE_FAILED:
        return "the system's summary of the handshake failure and its code"
    if kind == Sig.PROTOCOL_FAILED:
        return "the protocol layer's error code"
    if kind == Sig.STEP and signal.str("step") == (attempt.error.step if attempt.error else None):
        return "the step the device was in when it failed (its time gives how long the peer took)"
    if kind == Sig.INTERNET_FAILED and not attempt.socket_connected:
        return "the internet test after the failed socket"
    if kind == Sig.CLOUD_UNREACHABLE:
        return "the internet works, the cloud does not answer"
    if kind == Sig.CLOUD_ERROR:
        return "the number of orange blinks the device shows"
    if kind == Sig.SERVER_ADDRESS:
        return "the server address the device read from its flash"
    if kind == Sig.DNS_OK:
        return "where the server name resolved to"
    if kind == Sig.SOCKET_ERROR:
        return "the socket-level error"
    if kind in (Sig.SESSION_DROP, Sig.DROP_CAUSE):
        return "how the session ended"
    if kind == Sig.WLAN_RESET:
        return "the device resets Wi-Fi after repeated failures (power and airtime)"
    return None


# -- the rules -----------------------------------------------------------------------------------------


def _attempt_rules(drafts: _Drafts, analysis: LogAnalysis) -> None:
    primary = analysis.primary
    for attempt in analysis.attempts:
        found = classify(attempt)
        if found is None:
            continue
        entry_id, strength = found
        draft = drafts(entry_id)
        draft.attempts.append(attempt.index)
        draft.add(strength, "")
        if len(draft.attempts) <= 2 or attempt is primary:
            _cite_attempt(draft, analysis, attempt)
    for entry_id, refine in _REFINE.items():
        refined = drafts.get(entry_id)
        if refined is not None and refined.attempts:
            attempts = [a for a in analysis.attempts if a.index in refined.attempts]
            refine(refined, analysis, attempts)


def _count(attempts: list[Attempt]) -> str:
    return "once" if len(attempts) == 1 else f"in {len(attempts)} attempts"


def _refine_c2(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    draft.summary = f"The cloud socket failed and the device's internet test failed too ({_count(attempts)})."
    pings = {s.str("target"): s for s in analysis.of(Sig.PING)}
    outside = pings.get("addr 8.8.8.8")
    if outside is not None:
        if outside.values.get("ok"):
            draft.adjust("dns_port_blocked", "high", "the cloud-debug ping to 8.8.8.8 works, so the internet is there")
        else:
            draft.adjust("no_upstream", "high", "the cloud-debug ping to 8.8.8.8 fails")
        draft.cite(outside, "reachability of the internet beyond the gateway")


def _refine_c3(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    refused = [a for a in attempts if a.error and a.error.code_kind == "errno" and a.error.code == 111]
    draft.summary = f"The internet works but the TCP connection to the cloud did not open ({_count(attempts)})."
    if refused:
        draft.summary = (
            f"The server's host refused the TCP connection ({_count(refused)}): it answers, but nothing listens "
            "on the device port."
        )
        draft.adjust("server_down", "high", "connection refused: the host is up, the server is not listening", 2)
    coap = [s for s in analysis.of(Sig.COAP_TEST) if not s.values.get("ok")]
    if coap:
        draft.adjust("port_blocked", "high", "cloud-debug could not open a TCP connection to port 5683")
    for attempt in attempts:
        address = attempt.server_address or {}
        if address.get("type") == 255 or _is_particle(attempt.resolved_host):
            draft.adjust("bad_server_key", "medium", "the server address block is blank or points at Particle")
            break


def _refine_c4(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    codes = {a.error.code for a in attempts if a.error}
    draft.summary = f"The connection opened but the server's nonce never arrived ({_count(attempts)})."
    if codes & {-19, -18, 25} and any((a.failure_after_ms or 0) < 5000 for a in attempts):
        draft.adjust(
            "not_a_device_server", "high", "the peer closed or reset the connection at once, without a nonce", 2
        )
    if -1 in codes and any((a.failure_after_ms or 0) >= 15000 for a in attempts):
        draft.adjust("stalled", "high", "nothing at all arrived for about 20 s", 2)


def _refine_c5(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    fast = [a for a in attempts if a.failure_after_ms is not None and a.failure_after_ms < 5000]
    slow = [a for a in attempts if a.failure_after_ms is not None and a.failure_after_ms >= 15000]
    draft.summary = (
        f"The cloud refused the device {_count(attempts)}: the device sent its handshake and the connection was "
        "closed instead of a session key coming back."
    )
    if fast:
        draft.summary += f" It took {_ms(fast[0].failure_after_ms)}: a deliberate refusal, not a timeout."
        draft.adjust("network_drop", "unlikely", "the connection was closed at once, not after the 20 s timeout")
    elif slow:
        draft.summary += (
            f" Nothing came back for {_ms(slow[0].failure_after_ms)} (the device's 20 s timeout): either the server "
            "said nothing, or it closed the socket and this build only noticed at the timeout (the Linux virtual "
            "device does that)."
        )
        draft.adjust("network_drop", "medium", "the failure is a 20 s timeout (-1), not a close (-19)")
    blank = analysis.of(Sig.SERVER_KEY_RESTORED, Sig.SERVER_ADDRESS_RESTORED)
    flags = [s for s in analysis.of(Sig.KEY_ERROR_FLAGS) if (s.int("flags") or 0) & 5]
    type255 = [s for s in analysis.of(Sig.SERVER_ADDRESS) if s.int("type") == 255]
    for signal in [*type255, *blank, *flags][:3]:
        draft.cite(signal, "the server block in flash was blank or invalid: the server key next to it is suspect")
    if type255 or blank or flags:
        draft.adjust("wrong_server_key", "high", "the device's server block was blank or invalid (type:255)", 3)
    particle = [
        s
        for s in analysis.of(Sig.SERVER_ADDRESS, Sig.DNS_OK)
        if _is_particle(s.str("domain")) or _is_particle(s.str("default")) or _is_particle(s.str("host"))
    ]
    if particle:
        draft.cite(particle[0], "the device is talking to Particle's cloud")
        draft.adjust(
            "other_cloud",
            "high",
            "the device's server address is Particle's: for a self-hosted fleet the refusal comes from Particle",
            2,
        )
    generated = analysis.of(Sig.KEY_GENERATED)
    power = [
        s
        for s in analysis.of(Sig.LAST_RESET)
        if "power" in (s.str("reason") or "") or "brown" in (s.str("reason") or "")
    ]
    if generated:
        draft.cite(generated[0], "the device generated a new key pair")
        draft.adjust("amnesia", "high", "the device made a new key pair on this boot", 3)
    elif power:
        draft.cite(power[0], "a power event, the usual way keys get erased")
        draft.adjust("amnesia", "high", "a power event in the history: keys get erased that way", 2)


def _refine_c6(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    draft.summary = (
        f"The device could not decrypt the session key with its private key ({_count(attempts)}): the cloud "
        "encrypted it to a public key that does not match that private key."
    )


def _refine_c7(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    draft.summary = (
        f"The server's signature did not verify with the server public key on the device ({_count(attempts)}): "
        "the server signs with another private key than the one the device trusts."
    )


def _refine_c8(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    draft.summary = f"The handshake completed but the server's Hello never came back in time ({_count(attempts)})."
    if any(a.resumed or a.hello_sent > 1 for a in attempts):
        draft.adjust("lost_session", "high", "the device resumes a saved session and repeats its Hello", 2)


def _refine_c9(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    draft.summary = "The server public key stored on the device is not a usable key: the handshake cannot start."


def _refine_c10(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    hosts = sorted({a.resolved_host for a in attempts if a.resolved_host})
    draft.summary = f"The device could not resolve {', '.join(hosts) or 'the server name'} ({_count(attempts)})."


def _refine_c12(draft: _Draft, analysis: LogAnalysis, attempts: list[Attempt]) -> None:
    kinds = {a.drop_kind for a in attempts}
    causes = {a.drop_cause for a in attempts}
    draft.summary = f"The device connected, then the session ended ({_count(attempts)})."
    if "coap_error" in causes:
        draft.adjust(
            "rejected_message",
            "high",
            "the firmware logged an error message from the cloud just before it closed the socket",
            3,
        )
    if "inactivity" in kinds:
        draft.adjust("idle_timeout", "high", "the device gave up after hearing nothing from the cloud", 2)
    if any(a.drop_kind == "event_loop" and a.drop_code == 1 for a in attempts):
        draft.adjust("idle_timeout", "high", "the device's keep-alive ping went unanswered (PING_TIMEOUT)", 2)
    codes = {a.drop_code for a in attempts}
    if codes & {-11, -18, -19}:
        draft.adjust("link_lost", "medium", "the socket reports the connection lost, reset or closed")


_REFINE = {
    "C2": _refine_c2,
    "C3": _refine_c3,
    "C4": _refine_c4,
    "C5": _refine_c5,
    "C6": _refine_c6,
    "C7": _refine_c7,
    "C8": _refine_c8,
    "C9": _refine_c9,
    "C10": _refine_c10,
    "C12": _refine_c12,
}


def _history_rules(drafts: _Drafts, analysis: LogAnalysis) -> None:
    power = [
        s for s in analysis.of(Sig.LAST_RESET) if any(word in (s.str("reason") or "") for word in ("power", "brown"))
    ]
    # C1: Wi-Fi never came up.
    listening = analysis.of(Sig.LISTENING)
    wifi_failed = analysis.of(Sig.WIFI_FAILED)
    connecting = analysis.of(Sig.WIFI_CONNECTING)
    connected = analysis.of(Sig.WIFI_CONNECTED)
    stuck = bool(connecting) and (not connected or connected[-1].line < connecting[-1].line)
    cloud_after = stuck and any(a.first_line > connecting[-1].line for a in analysis.attempts)
    if listening or wifi_failed or (stuck and not cloud_after):
        draft = drafts("C1")
        for signal in (listening or wifi_failed or connecting)[-2:]:
            draft.cite(signal, "Wi-Fi did not come up")
        draft.add(0.85 if stuck or listening else 0.7, "The device never got onto Wi-Fi, so it never tried the cloud.")
        if power:
            draft.cite(power[0], "a power event: the flash that holds the credentials may have been erased")
            draft.adjust("dct_erased", "high", "a power event preceded the lost Wi-Fi", 2)
    # C2/C3/C10 from the cloud-debug firmware's own checks, before it connects (§4.5).
    pings = {s.str("target"): s for s in analysis.of(Sig.PING)}
    outside, gateway = pings.get("addr 8.8.8.8"), pings.get("gateway")
    if outside is not None and not outside.values.get("ok"):
        draft = drafts("C2")
        draft.cite(outside, "the internet (8.8.8.8) does not answer")
        if gateway is not None:
            draft.cite(gateway, "the gateway " + ("answers" if gateway.values.get("ok") else "does not answer either"))
        draft.add(0.75, "The cloud-debug checks show no path to the internet from this network.")
    dns_checks = [s for s in analysis.of(Sig.DNS_FAILED) if s.record.format == "clouddebug"]
    if dns_checks:
        draft = drafts("C10")
        for signal in dns_checks[:3]:
            draft.cite(signal, "the cloud-debug DNS lookup of the server name failed")
        draft.add(0.9, "The server name does not resolve on this network.")
    coap = [s for s in analysis.of(Sig.COAP_TEST) if not s.values.get("ok")]
    if coap:
        draft = drafts("C3")
        draft.cite(coap[0], "a plain TCP connection to the device port failed")
        draft.add(0.85, "The internet works, but a TCP connection to the cloud's port 5683 does not open.")
        draft.adjust("port_blocked", "high", "cloud-debug could not open a TCP connection to port 5683", 2)
        draft.adjust("server_down", "high", "or nothing listens there")
    zero_dns = analysis.of(Sig.DNS_SERVER_ZERO)
    if zero_dns and (dns_draft := drafts.get("C10")) is not None:
        dns_draft.cite(zero_dns[0], "not a symptom: Photon/P1 always show 0.0.0.0 here")
    # C11: the server address block.
    type255 = [s for s in analysis.of(Sig.SERVER_ADDRESS) if s.int("type") == 255]
    restored_address = analysis.of(Sig.SERVER_ADDRESS_RESTORED)
    flags = analysis.of(Sig.KEY_ERROR_FLAGS)
    address_flag = [s for s in flags if (s.int("flags") or 0) & 4]
    if type255 or restored_address or address_flag:
        draft = drafts("C11")
        for signal in [*type255[:1], *restored_address[:1], *address_flag[:1]]:
            draft.cite(signal, "the server address in flash is blank or invalid; the device uses Particle's")
        draft.add(
            0.9,
            "The device's server address block is blank or invalid, so it falls back to Particle's device.spark.io.",
        )
    else:
        particle = [
            s
            for s in analysis.of(Sig.SERVER_ADDRESS)
            if _is_particle(s.str("domain")) or _is_particle(s.str("default"))
        ]
        if particle:
            draft = drafts("C11")
            draft.cite(particle[0], "the server address in flash is Particle's")
            draft.add(
                0.35,
                "The device is configured for Particle's cloud: if it belongs to a self-hosted fleet, its server "
                "block was reset or never written.",
            )
    # C16: the firmware healed a blank server key or address (0.7.0+).
    restored = analysis.of(Sig.SERVER_KEY_RESTORED, Sig.SERVER_ADDRESS_RESTORED)
    if restored or flags:
        draft = drafts("C16")
        for signal in [*restored[:2], *flags[:1]]:
            draft.cite(signal, "the firmware replaced blank server data by its built-in (Particle) defaults")
        bits: list[str] = []
        for signal in flags:
            bits += explain_key_error_flags(signal.int("flags") or 0)
        summary = "The device runs on built-in defaults because its server key or address was blank"
        draft.add(0.9, summary + (": " + "; ".join(dict.fromkeys(bits)) if bits else "."))
    # C13: crashes.
    panics = analysis.of(Sig.PANIC)
    panic_resets = [s for s in analysis.of(Sig.LAST_RESET) if "panic" in (s.str("reason") or "")]
    if panics or panic_resets:
        draft = drafts("C13")
        codes = [s.int("code") for s in panics if s.int("code")]
        for signal in [*panics[:2], *panic_resets[:1]]:
            draft.cite(signal, "the firmware crashed")
        text = "The firmware crashed (SOS)"
        if codes:
            meaning = sos_meaning(codes[0] or 0)
            text += f", code {codes[0]}" + (f": {meaning}" if meaning else "")
        draft.add(0.85, text + ".")
        if power:
            draft.adjust("corrupt_image", "high", "the crash follows a power event", 2)
    # C14: an update that never finished before the device restarted or the log ended.
    begins, dones = analysis.of(Sig.OTA_BEGIN), analysis.of(Sig.OTA_DONE)
    if begins and (not dones or dones[-1].line < begins[-1].line):
        draft = drafts("C14")
        draft.cite(begins[-1], "an update began here and the log never shows it finishing")
        draft.add(
            0.3,
            "An update began and did not finish in this log. If the device now shows only a dim blue D7, the "
            "interruption erased its bootloader.",
        )
    # C15: safe mode.
    safe = analysis.of(Sig.SAFE_MODE)
    if safe:
        draft = drafts("C15")
        draft.cite(safe[0], "the device is in safe mode")
        after_update = bool(dones) and dones[0].line < safe[0].line
        if after_update:
            draft.cite(dones[0], "an update completed before it")
        draft.add(
            0.9,
            "The device is in safe mode"
            + (" after an update" if after_update else "")
            + ": a module it needs is missing.",
        )
    # C17: power history.
    if power:
        draft = drafts("C17")
        for signal in power[:2]:
            draft.cite(signal, "a power loss or brown-out reset")
        draft.add(
            0.6, "The device lost power or browned out: the way flash (credentials, keys, bootloader) gets damaged."
        )
    # C5 predicted by a key regenerated at boot, even without a failed attempt in the log.
    generated = analysis.of(Sig.KEY_GENERATED)
    if generated and drafts.get("C5") is None:
        draft = drafts("C5")
        draft.cite(generated[0], "the device generated a new key pair")
        draft.add(0.6, "The device made a new key pair: the cloud still holds the old public key and will refuse it.")
        draft.adjust("amnesia", "high", "the device made a new key pair", 3)
    # Diagnostics the application printed (`cloud:err`, 0.8+, §4.6).
    for signal in analysis.of(Sig.CLOUD_ERR_DIAG):
        code = signal.int("code")
        entry_id = {25: "C4", 26: "C5", 6: "C6", 8: "C7", 10: "C8", 16: "C9"}.get(code or -1)
        if entry_id is not None:
            draft = drafts(entry_id)
            draft.cite(signal, f"the last cloud error the device recorded is {code}")
            draft.add(0.7, f"The device's own diagnostics report cloud error {code}.")


def _led_rules(drafts: _Drafts, readings: Iterable[LedReading]) -> None:
    readings = list(readings)
    ambiguous = len({r.description for r in readings}) < len(readings)
    for reading in readings:
        pattern = reading.pattern
        for rank, entry_id in enumerate(pattern.entries):
            score = (0.8 if rank == 0 else 0.5 - 0.1 * rank) * (0.8 if ambiguous else 1.0)
            draft = drafts(entry_id)
            if pattern.step and draft.step is None and rank == 0:
                draft.step = pattern.step
            draft.evidence.append(
                Evidence(None, reading.description, f"LED: {pattern.title}. {reading.note or ''}".strip(), "led")
            )
            draft.add(score, f"{pattern.title}: {pattern.meaning}", "led")
        if pattern.key == "blinking_white":
            drafts("C5").adjust("amnesia", "high", "the LED blinked white at boot: a new key pair was made", 3)
        if pattern.key == "blinking_blue":
            drafts("C1").adjust("dct_erased", "high", "listening mode on a unit that had credentials", 2)


def _code_rules(drafts: _Drafts, codes: Iterable[tuple[str, list[CodeReading]]]) -> None:
    for text, readings in codes:
        for index, reading in enumerate(readings[:2]):
            for rank, entry_id in enumerate(reading.entries):
                score = max(0.2, 0.55 - 0.15 * (index + rank))
                draft = drafts(entry_id)
                draft.evidence.append(Evidence(None, text, f"{reading.kind} {reading.name}: {reading.meaning}", "code"))
                draft.add(score, f"Code {text}: {reading.meaning}.", "code")


def find(
    analysis: LogAnalysis | None = None,
    leds: Iterable[LedReading] = (),
    codes: Iterable[tuple[str, list[CodeReading]]] = (),
) -> list[Finding]:
    """Ranked findings: the likeliest first (score, then the deeper step, then catalog order)."""
    drafts = _Drafts()
    if analysis is not None:
        _attempt_rules(drafts, analysis)
        _history_rules(drafts, analysis)
    _led_rules(drafts, leds)
    _code_rules(drafts, codes)
    order = {e.id: i for i, e in enumerate(CATALOG)}
    findings = [d.build() for d in drafts.by_id.values() if d.score > 0]
    for finding in findings:
        if not finding.summary:
            finding.summary = finding.entry.meaning
    findings.sort(key=lambda f: (-f.score, -STEP_DEPTH.get(f.step, -1), order[f.entry.id]))
    return findings
