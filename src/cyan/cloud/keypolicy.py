"""Which key to trust when a device identifies itself (protocol.md §12.3, field-failures.md §3).

A device id is not a secret, so a presented key is never accepted just because it is presented. In order:

1. an unknown device is refused, unless trust on first use is on (fleet-wide or for that id);
2. the registered key, when presented (or when nothing is presented: the old Core's 52-byte identity);
3. a different key is accepted only inside a re-key window an operator armed for that device;
4. otherwise the policy decides: **strict** refuses it, **quarantine** lets the device connect with no
   access at all. Either way the new key is kept as pending, for an operator to approve or reject.

Every key change and every refusal of a changed key is written to the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import fingerprint
from cyan.protocol import Reason

from .models import FLEET, DeviceRecord, KeyAuditEntry, KeyPolicy, KeyPolicyMode, PendingKey
from .ports import Store

__all__ = ["Decision", "decide", "decide_strict", "effective_policy"]


@dataclass(slots=True)
class Decision:
    """Accept with `trusted_key`, or reject with `reason`; and what to record about it."""

    trusted_key: rsa.RSAPublicKey | None
    reason: Reason | None
    detail: str
    presented_fingerprint: str | None
    stored_fingerprint: str | None
    #: Accepted, but the session gets no functions, variables, events or updates (protocol.md §12.3 (b)).
    quarantined: bool = False
    #: The device record to use (a first-use registration creates one; a re-key window updates the key).
    record: DeviceRecord | None = None
    audit: list[KeyAuditEntry] = field(default_factory=list)
    #: The record must be saved (new registration or replaced key) before the session starts.
    save_record: bool = False

    @property
    def accepted(self) -> bool:
        return self.trusted_key is not None


def _load(der: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(der)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _fingerprint_of(der: bytes, record: DeviceRecord | None) -> str:
    """The key's fingerprint; the registered key's is stored with it, so the usual case computes nothing."""
    if record is not None and record.key_fingerprint and der == record.public_key_der:
        return record.key_fingerprint
    return fingerprint(der)


def decide_strict(device_id: str, record: DeviceRecord | None, presented_der: bytes | None) -> Decision:
    """The default decision with no policy, window or pending key involved."""
    presented = _fingerprint_of(presented_der, record) if presented_der else None
    if record is None:
        return Decision(None, Reason.UNKNOWN_DEVICE, f"device {device_id} is not registered", presented, None)
    stored_der = record.public_key_der
    if stored_der is None:
        return Decision(
            None,
            Reason.KEY_REJECTED,
            f"device {device_id} is registered without a public key; register its key first",
            presented,
            None,
        )
    stored = record.key_fingerprint or fingerprint(stored_der)
    if presented is not None and presented != stored:
        return Decision(
            None,
            Reason.KEY_MISMATCH,
            f"device {device_id} presented key {presented}, but {stored} is registered: the device has a new "
            "key (regenerated after its key was erased, protocol.md §12) or the registration is stale",
            presented,
            stored,
        )
    return Decision(_load(stored_der), None, "registered key", presented, stored, record=record)


async def effective_policy(store: Store, device_id: str) -> KeyPolicy:
    """The device's own policy, else the fleet's, else strict without trust on first use."""
    return (
        await store.get_policy(device_id)
        or await store.get_policy(FLEET)
        or KeyPolicy(FLEET, KeyPolicyMode.STRICT, False, None, "default")
    )


async def decide(
    store: Store,
    device_id: str,
    record: DeviceRecord | None,
    presented_der: bytes | None,
    *,
    now: datetime,
    peer_address: str,
) -> Decision:
    base = decide_strict(device_id, record, presented_der)
    presented, stored = base.presented_fingerprint, base.stored_fingerprint
    if base.accepted or base.reason not in (Reason.UNKNOWN_DEVICE, Reason.KEY_REJECTED, Reason.KEY_MISMATCH):
        return base
    policy = await effective_policy(store, device_id)

    if base.reason in (Reason.UNKNOWN_DEVICE, Reason.KEY_REJECTED):
        if not (policy.trust_on_first_use and presented_der):
            return base
        first = record or DeviceRecord(id=device_id, created_at=now)
        first.public_key_der, first.key_fingerprint = presented_der, presented
        base = Decision(
            _load(presented_der),
            None,
            "trusted on first use",
            presented,
            None,
            record=first,
            save_record=True,
        )
        base.audit.append(
            KeyAuditEntry(now, device_id, "trusted_on_first_use", "policy", None, presented, f"from {peer_address}")
        )
        return base

    # A known device with a key other than its registered one.
    assert record is not None
    assert presented_der is not None
    assert presented is not None
    window = await store.get_rekey(device_id)
    if window is not None and window.until > now:
        record.public_key_der, record.key_fingerprint = presented_der, presented
        accepted = Decision(
            _load(presented_der),
            None,
            f"new key accepted in the re-key window armed by {window.armed_by}",
            presented,
            stored,
            record=record,
            save_record=True,
        )
        accepted.audit.append(
            KeyAuditEntry(
                now,
                device_id,
                "rekey_used",
                f"rekey window of {window.armed_by}",
                stored,
                presented,
                f"from {peer_address}",
            )
        )
        await store.remove_rekey(device_id)
        await store.remove_pending_key(device_id)
        return accepted

    pending = await store.get_pending_key(device_id)
    if pending is not None and pending.fingerprint == presented:
        pending.attempts += 1
        pending.last_seen = now
        pending.peer_address = peer_address
        first_sighting = False
    else:
        pending = PendingKey(device_id, presented_der, presented, stored, now, now, 1, peer_address)
        first_sighting = True
    await store.save_pending_key(pending)

    if policy.mode is KeyPolicyMode.QUARANTINE:
        quarantined = Decision(
            _load(presented_der),
            None,
            f"device {device_id} presented a new key {presented} (registered: {stored}); connected in quarantine "
            "until an operator approves or rejects it",
            presented,
            stored,
            quarantined=True,
            record=record,
        )
        if first_sighting:
            quarantined.audit.append(
                KeyAuditEntry(now, device_id, "quarantined", "policy", stored, presented, f"from {peer_address}")
            )
        return quarantined
    if first_sighting:
        base.audit.append(
            KeyAuditEntry(now, device_id, "refused", "policy", stored, presented, f"strict policy; from {peer_address}")
        )
    base.detail += "; the new key is pending an operator's decision (cyan policy pending)"
    return base
