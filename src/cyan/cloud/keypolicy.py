"""Which key to trust when a device identifies itself (protocol.md §12.3, design.md §2).

The device id is not a secret, so a presented key is never accepted just because it is presented. The
default policy is strict: a known device with a registered key, and exactly that key.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import fingerprint
from cyan.protocol import Reason

from .models import DeviceRecord

__all__ = ["Decision", "decide_strict"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Accept with `trusted_key`, or reject with `reason` and a detail for the records."""

    trusted_key: rsa.RSAPublicKey | None
    reason: Reason | None
    detail: str
    presented_fingerprint: str | None
    stored_fingerprint: str | None

    @property
    def accepted(self) -> bool:
        return self.trusted_key is not None


def decide_strict(device_id: str, record: DeviceRecord | None, presented_der: bytes | None) -> Decision:
    presented = fingerprint(presented_der) if presented_der else None
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
    key = serialization.load_der_public_key(stored_der)
    assert isinstance(key, rsa.RSAPublicKey)
    return Decision(key, None, "registered key", presented, stored)
