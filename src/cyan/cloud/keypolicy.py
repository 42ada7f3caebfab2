"""Which key a device may connect with: the decision, as a pure function of what is known (docs/keys.md,
protocol.md §12.3, field-failures.md §3.4-3.5).

A device id is not a secret, so a presented key is never accepted just because it is presented. In order:

1. an unknown device (or one registered without a key) is refused, unless trust on first use is on;
2. the registered key, when presented (or when nothing is presented: the old Core's 52-byte identity), is
   accepted; the session proves the device's identity once its Hello arrives;
3. another key after a re-key window accepted one: the key it replaced connecting again undoes the change
   (the device had not lost it), and a second, different new key undoes it too and holds both new keys for
   approval, even while a session with the accepted key is connected (it may be whoever won the race);
4. another key, while the device is connected with its registered key, is refused: that client is not the
   device. Nothing of the device changes (no pending key, no window used, no quarantine);
5. another key inside a re-key window that has accepted none: accepted, and the key it replaces kept;
6. otherwise the policy decides: **strict** refuses, **quarantine** lets the client connect with no access
   at all. Either way the key is kept as pending, for the owner to approve (by its fingerprint) or reject.

`decide` computes the decision and everything it changes (`Effects`); `cyan.app.handshake` reads the
situation and applies the effects in one transaction, so two connections racing for one device see each
other's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from cyan.keys import fingerprint
from cyan.protocol import Reason

from .models import AuditEntry, DeviceRecord, KeyPolicy, KeyPolicyMode, PendingKey, RekeyWindow

__all__ = ["Decision", "Effects", "KeySituation", "decide", "fingerprint_of"]


@dataclass(frozen=True, slots=True)
class KeySituation:
    """Everything the decision depends on, read at one moment."""

    device_id: str
    #: SubjectPublicKeyInfo DER of the key in the handshake; None: the device sent none (the old Core).
    presented_der: bytes | None
    record: DeviceRecord | None
    #: The device's own policy, else the fleet's, else strict. None where it cannot matter: the registered
    #: key was presented (the fast path reads no policy).
    policy: KeyPolicy | None
    #: The device's re-key window, open or not (an expired one is removed).
    window: RekeyWindow | None
    #: The device's pending keys.
    pending: tuple[PendingKey, ...]
    #: The device has a session, started with its registered key, right now (on any node).
    connected: bool
    now: datetime
    peer_address: str


@dataclass(slots=True)
class Effects:
    """What a decision changes, applied in the transaction that read the situation."""

    #: The device record to write (a registration, or a key that changed).
    save_record: DeviceRecord | None = None
    #: Pending keys to insert or replace, and fingerprints of pending keys to remove.
    save_pending: list[PendingKey] = field(default_factory=list)
    remove_pending: list[str] = field(default_factory=list)
    #: The window as it must be stored; `remove_window` deletes it.
    save_window: RekeyWindow | None = None
    remove_window: bool = False
    audit: list[AuditEntry] = field(default_factory=list)
    #: Close the device's current sessions (a key accepted in a re-key window was undone).
    close_sessions: bool = False

    @property
    def writes(self) -> bool:
        return bool(
            self.save_record
            or self.save_pending
            or self.remove_pending
            or self.save_window
            or self.remove_window
            or self.audit
        )


@dataclass(slots=True)
class Decision:
    """Accept with `trusted_key_der`, or reject with `reason`; what to record; what changes."""

    trusted_key_der: bytes | None
    reason: Reason | None
    detail: str
    presented_fingerprint: str | None
    stored_fingerprint: str | None
    #: Accepted, but the session gets no functions, variables, events or updates (protocol.md §12.3 (b)).
    quarantined: bool = False
    #: The device record the session belongs to (after the effects).
    record: DeviceRecord | None = None
    effects: Effects = field(default_factory=Effects)
    #: The device's re-key window must be looked at again once the session proves the registered key
    #: (`cyan.app.handshake.Handshakes.session_proven`): a device that connects with its registered key did
    #: not lose it.
    window_armed: bool = False

    @property
    def accepted(self) -> bool:
        return self.trusted_key_der is not None


def fingerprint_of(der: bytes, record: DeviceRecord | None) -> str:
    """The key's fingerprint; the registered key's is stored with it, so the usual case computes nothing."""
    if record is not None and record.key_fingerprint and der == record.public_key_der:
        return record.key_fingerprint
    return fingerprint(der)


def decide(s: KeySituation) -> Decision:
    presented = fingerprint_of(s.presented_der, s.record) if s.presented_der else None
    record = s.record
    window = s.window
    effects = Effects()
    if window is not None and not window.open_at(s.now):
        effects.remove_window = True
        window = None

    def audit(action: str, actor: str, old: str | None, new: str | None, detail: str | None = None) -> None:
        effects.audit.append(AuditEntry(s.now, s.device_id, action, actor, old, new, detail))

    policy = s.policy or KeyPolicy("*")

    # 1. Unknown, or known without a key.
    if record is None or record.public_key_der is None:
        if policy.trust_on_first_use and s.presented_der is not None:
            first = record or DeviceRecord(id=s.device_id, created_at=s.now)
            first.public_key_der, first.key_fingerprint = s.presented_der, presented
            effects.save_record = first
            audit("trusted_on_first_use", "policy", None, presented, f"from {s.peer_address}")
            return Decision(
                s.presented_der, None, "trusted on first use", presented, None, record=first, effects=effects
            )
        if record is None:
            detail = f"device {s.device_id} is not registered"
            return Decision(None, Reason.UNKNOWN_DEVICE, detail, presented, None, effects=effects)
        detail = f"device {s.device_id} is registered without a public key; register its key first"
        return Decision(None, Reason.KEY_REJECTED, detail, presented, None, record=record, effects=effects)

    stored = record.key_fingerprint or fingerprint(record.public_key_der)

    # 2. The registered key.
    if s.presented_der is None or s.presented_der == record.public_key_der:
        return Decision(
            record.public_key_der,
            None,
            "registered key",
            presented,
            stored,
            record=record,
            effects=effects,
            window_armed=window is not None,
        )
    assert presented is not None

    # 3. A re-key window that accepted a key: that key is the registered one only provisionally, so another
    #    key undoes it even while a session with it is connected (whoever won the race must not keep it).
    if window is not None and window.accepted_fingerprint is not None:
        return _in_window(s, record, window, presented=presented, stored=stored, effects=effects)

    # 4. Another key while the device is connected with its own: not the device.
    if s.connected:
        return Decision(
            None,
            Reason.KEY_MISMATCH,
            f"device {s.device_id} presented key {presented} while it is connected with its registered key "
            f"{stored}: this client is not the device (someone knows its id); nothing was changed",
            presented,
            stored,
            record=record,
            effects=effects,
        )

    # 5. A re-key window, unused so far.
    if window is not None:
        return _in_window(s, record, window, presented=presented, stored=stored, effects=effects)

    # 6. The policy.
    known = {p.fingerprint: p for p in s.pending}
    pending = known.get(presented)
    first_sighting = pending is None
    if pending is None:
        pending = PendingKey(s.device_id, s.presented_der, presented, stored, s.now, s.now, 1, s.peer_address)
    else:
        pending.attempts += 1
        pending.last_seen = s.now
        pending.peer_address = s.peer_address
        pending.stored_fingerprint = stored
    effects.save_pending.append(pending)
    if policy.mode is KeyPolicyMode.QUARANTINE:
        if first_sighting:
            audit("quarantined", "policy", stored, presented, f"from {s.peer_address}")
        return Decision(
            s.presented_der,
            None,
            f"device {s.device_id} presented a new key {presented} (registered: {stored}); connected in quarantine "
            "until its owner approves or rejects the key",
            presented,
            stored,
            quarantined=True,
            record=record,
            effects=effects,
        )
    if first_sighting:
        audit("refused", "policy", stored, presented, f"strict policy; from {s.peer_address}")
    return Decision(
        None,
        Reason.KEY_MISMATCH,
        f"device {s.device_id} presented key {presented}, but {stored} is registered: the device has a new key "
        "(regenerated after its key was erased, protocol.md §12) or someone else uses its id; the new key is "
        "pending its owner's decision (approve it by its fingerprint, or reject it)",
        presented,
        stored,
        record=record,
        effects=effects,
    )


def _in_window(
    s: KeySituation, record: DeviceRecord, window: RekeyWindow, *, presented: str, stored: str, effects: Effects
) -> Decision:
    assert s.presented_der is not None
    armed_by = f"re-key window of {window.armed_by}"
    if window.accepted_fingerprint is None:
        # The first new key in the window: accepted, and the key it replaces kept to undo the change.
        changed = replace(record, public_key_der=s.presented_der, key_fingerprint=presented)
        effects.save_record = changed
        effects.save_window = RekeyWindow(
            window.device_id,
            window.until,
            window.armed_by,
            window.armed_at,
            accepted_fingerprint=presented,
            accepted_at=s.now,
            previous_key_der=record.public_key_der,
            previous_fingerprint=stored,
        )
        effects.remove_pending.append(presented)
        effects.audit.append(
            AuditEntry(s.now, s.device_id, "rekey_used", armed_by, stored, presented, f"from {s.peer_address}")
        )
        return Decision(
            s.presented_der,
            None,
            f"new key accepted in the re-key window armed by {window.armed_by}",
            presented,
            stored,
            record=changed,
            effects=effects,
        )

    # The window accepted a key already (it is the registered key now), and another key comes.
    previous_der, previous = window.previous_key_der, window.previous_fingerprint
    accepted = window.accepted_fingerprint
    restored = replace(record, public_key_der=previous_der, key_fingerprint=previous)
    effects.save_record = restored
    effects.remove_window = True
    effects.close_sessions = True
    held = PendingKey(
        s.device_id, record.public_key_der or b"", accepted, previous, window.accepted_at or s.now, s.now, 1
    )
    effects.save_pending.append(held)
    if s.presented_der == previous_der:
        effects.audit.append(
            AuditEntry(
                s.now,
                s.device_id,
                "rekey_reverted",
                "policy",
                accepted,
                previous,
                f"the key the window replaced connected again from {s.peer_address}: the device had not lost it; "
                f"{accepted} is held for approval",
            )
        )
        return Decision(
            previous_der,
            None,
            f"the device connected with the key the re-key window had replaced ({previous}): it had not lost its "
            f"key, so the window's change is undone and {accepted} is held for its owner's decision",
            presented,
            previous,
            record=restored,
            effects=effects,
            window_armed=False,
        )
    known = {p.fingerprint for p in s.pending}
    if presented not in known:
        effects.save_pending.append(
            PendingKey(s.device_id, s.presented_der, presented, previous, s.now, s.now, 1, s.peer_address)
        )
    effects.audit.append(
        AuditEntry(
            s.now,
            s.device_id,
            "rekey_conflict",
            "policy",
            accepted,
            presented,
            f"two different new keys in one re-key window ({accepted}, then {presented} from {s.peer_address}): "
            f"neither is accepted, the registered key is {previous} again and both are held for approval",
        )
    )
    return Decision(
        None,
        Reason.KEY_MISMATCH,
        f"device {s.device_id} presented {presented} after the re-key window had accepted {accepted}: two different "
        "new keys for one device, so neither is accepted; both are pending its owner's decision",
        presented,
        previous,
        record=restored,
        effects=effects,
    )
