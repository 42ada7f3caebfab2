"""What devices do to the cloud's state: the key decision when one identifies itself, what its proven
session settles, the claim code and key-error report it sends.

`DeviceGateway` is what the device server talks to (`cyan.server.device_server.CloudPort`): the decisions go
through the use cases here, in transactions with their audit entries; the live session goes to the
`Cloud`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from cyan.cloud.keypolicy import Decision, KeySituation, decide
from cyan.cloud.models import AuditEntry, ConnectionAttempt, DeviceRecord, PendingKey, UdpSession
from cyan.cloud.ports import Repositories
from cyan.cloud.service import Cloud, DeviceLink
from cyan.protocol import Hello, SubscriptionScope
from cyan.tasks import TaskSet

from ._context import AppContext, effective_policy
from .devices import DeviceUseCases

__all__ = ["KEY_ERROR_FLAGS", "DeviceGateway", "Handshakes"]

log = logging.getLogger("cyan.app.handshake")

#: spark/device/key/error bits (protocol.md §12.1).
KEY_ERROR_FLAGS = {
    1: "server public key blank",
    2: "server public key corrupted",
    4: "server address blank",
    8: "server address corrupted",
    16: "device public key blank",
    32: "device public key corrupted",
    64: "device private key blank",
    128: "device private key corrupted",
}

#: What each decision's audit action tells the device's owner, as an alert kind.
_ALERTS = {
    "trusted_on_first_use": "key_change",
    "rekey_used": "key_change",
    "rekey_reverted": "rekey_reverted",
    "rekey_conflict": "rekey_conflict",
    "rekey_cancelled": "rekey_cancelled",
}


class Handshakes:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def authorize(self, device_id: str, presented_der: bytes | None, peer_address: str) -> Decision:
        """Which key, if any, the device may connect with (`cyan.cloud.keypolicy`).

        The usual case, the registered key presented again, is two reads and no write. Anything else is
        decided inside a transaction that reads the situation afresh, so that two connections racing for one
        device (two keys in one re-key window) see each other's outcome.
        """
        store = self._ctx.store
        now = self._ctx.clock()
        record = await store.devices.get(device_id)
        if record is not None and record.public_key_der is not None and presented_der in (None, record.public_key_der):
            window = await store.keys.get_rekey(device_id)
            situation = KeySituation(device_id, presented_der, record, None, window, (), False, now, peer_address)
            decision = decide(situation)
            if not decision.effects.writes:
                return decision
        connected = await self._ctx.sessions.connected(device_id)
        async with store.transaction() as tx:
            record = await tx.devices.get(device_id)
            situation = KeySituation(
                device_id,
                presented_der,
                record,
                await effective_policy(tx.keys, device_id),
                await tx.keys.get_rekey(device_id),
                tuple(await tx.keys.list_pending_keys(device_id)) if record is not None else (),
                connected,
                now,
                peer_address,
            )
            decision = decide(situation)
            await _apply(tx, decision)
        await self._after(decision)
        return decision

    async def _after(self, decision: Decision) -> None:
        for entry in decision.effects.audit:
            kind = _ALERTS.get(entry.action)
            if kind is not None:
                self._ctx.alert(entry, kind, _summary(entry))
        if decision.effects.close_sessions and decision.record is not None:
            await self._ctx.sessions.close_sessions(decision.record.id, keep_key=decision.record.key_fingerprint)

    async def session_proven(self, device_id: str, key_fingerprint: str | None) -> None:
        """A session started with the registered key: the device has its key, so an armed re-key window is not
        for it. An unused window closes; a window that accepted another key meanwhile is undone."""
        now = self._ctx.clock()
        close_others = False
        async with self._ctx.store.transaction() as tx:
            window = await tx.keys.get_rekey(device_id)
            record = await tx.devices.get(device_id)
            if window is None or record is None or window.accepted_fingerprint == key_fingerprint:
                return
            await tx.keys.remove_rekey(device_id)
            if window.accepted_fingerprint is None:
                entry = AuditEntry(
                    now,
                    device_id,
                    "rekey_cancelled",
                    "policy",
                    key_fingerprint,
                    None,
                    "the device connected with its registered key: it has not lost it, so the re-key window is closed",
                )
            elif window.previous_fingerprint == key_fingerprint and window.previous_key_der is not None:
                # It connected with the key the window replaced, in a race with the window's new key.
                accepted = window.accepted_fingerprint
                held = PendingKey(
                    device_id,
                    record.public_key_der or b"",
                    accepted,
                    key_fingerprint,
                    window.accepted_at or now,
                    now,
                    1,
                )
                await tx.keys.save_pending_key(held)
                record.public_key_der, record.key_fingerprint = window.previous_key_der, key_fingerprint
                await tx.devices.save(record)
                entry = AuditEntry(
                    now,
                    device_id,
                    "rekey_reverted",
                    "policy",
                    accepted,
                    key_fingerprint,
                    f"the key the re-key window replaced connected again: the device had not lost it; {accepted} is "
                    "held for approval",
                )
                close_others = True
            else:
                return
            await tx.audit.add(entry)
        self._ctx.alert(entry, _ALERTS[entry.action], _summary(entry))
        if close_others:
            await self._ctx.sessions.close_sessions(device_id, keep_key=key_fingerprint)

    async def key_error_reported(self, device_id: str, data: bytes | None) -> None:
        """The firmware's own report of blank or corrupt key data (protocol.md §12.1)."""
        text = (data or b"").decode("ascii", "replace").strip()[:16]
        flags = int(text) if text.isdigit() else 0
        names = [name for bit, name in KEY_ERROR_FLAGS.items() if flags & bit]
        detail = f"flags {text or '?'}: " + (", ".join(names) if names else "no known flag")
        entry = AuditEntry(self._ctx.clock(), device_id, "key_error_reported", "device", None, None, detail)
        async with self._ctx.store.transaction() as tx:
            await tx.audit.add(entry)
        self._ctx.alert(entry, "key_error_reported", f"device {device_id} reported damaged key data: {detail}")


def _summary(entry: AuditEntry) -> str:
    text = f"device {entry.device_id}: key {entry.action} by {entry.actor}"
    if entry.new_fingerprint:
        text += f" (new {entry.new_fingerprint}, registered {entry.old_fingerprint})"
    return text + (f": {entry.detail}" if entry.detail else "")


async def _apply(tx: Repositories, decision: Decision) -> None:
    effects = decision.effects
    if effects.save_record is not None:
        await tx.devices.save(effects.save_record)
    device_id = decision.record.id if decision.record is not None else None
    for fingerprint in effects.remove_pending:
        if device_id is not None:
            await tx.keys.remove_pending_key(device_id, fingerprint)
    for pending in effects.save_pending:
        await tx.keys.save_pending_key(pending)
    if effects.save_window is not None:
        await tx.keys.save_rekey(effects.save_window)
    elif effects.remove_window and device_id is not None:
        await tx.keys.remove_rekey(device_id)
    for entry in effects.audit:
        await tx.audit.add(entry)


class DeviceGateway:
    """The cloud as the device server sees it (`cyan.server.device_server.CloudPort`)."""

    def __init__(self, ctx: AppContext, cloud: Cloud) -> None:
        self._ctx = ctx
        self.cloud = cloud
        self.handshakes = Handshakes(ctx)
        self._devices = DeviceUseCases(ctx)
        #: Devices whose last key decision saw an armed re-key window: their proven session looks at it again.
        self._windows: set[str] = set()
        self._tasks = TaskSet(log, "cyan-gateway")
        #: Events not carried because their names could break the event streams.
        self.dropped_events = 0

    async def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> tuple[Decision, DeviceRecord | None]:
        decision = await self.handshakes.authorize(device_id, presented_der, peer_address)
        if decision.window_armed:
            self._windows.add(device_id)
        return decision, decision.record

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        self.cloud.record_attempt(attempt)

    # The UDP devices' DTLS sessions (`cyan.server.datagram_server.UdpSessionPort`): records of the server's
    # own state, kept so that a restarted server resumes them; no one's decision, so no audit.

    async def save_udp_session(self, session: UdpSession) -> None:
        await self._ctx.store.udp_sessions.save(session)

    async def find_udp_session(self, connection_id: bytes) -> UdpSession | None:
        """The session with this connection id, whichever node saved it (a device resuming here)."""
        return await self._ctx.store.udp_sessions.get(connection_id)

    async def find_udp_sessions_of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        """The device's stored sessions, the last saved first (`UdpSessionRepository.of_device`)."""
        return await self._ctx.store.udp_sessions.of_device(device_id, limit=limit)

    async def reserve_udp_sequences(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        """The end of a block of `count` write sequence numbers no other node has used or will use in this
        session (`cyan.cloud.ports.UdpSessionRepository.reserve`); None when the session is gone."""
        return await self._ctx.store.udp_sessions.reserve(connection_id, count, floor=floor)

    async def prune_udp_sessions(self, *, before: datetime) -> int:
        """Delete the sessions not saved since `before` (their devices handshake again); how many."""
        return await self._ctx.store.udp_sessions.prune(before=before)

    async def drop_udp_session(self, connection_id: bytes) -> None:
        await self._ctx.store.udp_sessions.remove(connection_id)

    def session_started(
        self, link: DeviceLink, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        self.cloud.session_started(link, record, hello, quarantined=quarantined)
        if not quarantined and link.device_id in self._windows:
            self._windows.discard(link.device_id)
            self._spawn(
                self.handshakes.session_proven(link.device_id, record.key_fingerprint), "settle a re-key window"
            )

    def session_ended(self, link: DeviceLink) -> None:
        self.cloud.session_ended(link)

    def heard_from(self, link: DeviceLink) -> None:
        self.cloud.heard_from(link)

    def describe_received(self, link: DeviceLink, document: dict[str, Any]) -> None:
        self.cloud.describe_received(link, document)

    def metrics_received(self, link: DeviceLink, values: dict[int, int]) -> None:
        self.cloud.metrics_received(link, values)

    def event_from_device(self, link: DeviceLink, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        if not name.isprintable():
            # A control character (a newline, above all) in a name would end a server-sent event's field early
            # in every subscriber's stream: such an event is not carried (no firmware names events so).
            log.warning("device %s published an event whose name has a control character: dropped", link.device_id)
            self.dropped_events += 1
            return
        if self.cloud.device_link(link.device_id) is link:
            # Only a proven session's word counts (a quarantined one proved a key, not the device).
            if name == "spark/device/key/error":
                self._spawn(self.handshakes.key_error_reported(link.device_id, data), "record a key error report")
            elif name == "spark/device/claim/code" and data:
                code = data.decode("utf-8", "replace").strip()
                self._spawn(self._claim(link.device_id, code), "apply a claim code")
        self.cloud.event_from_device(link, name, data, ttl, private)

    async def _claim(self, device_id: str, code: str) -> None:
        claimed = await self._devices.claimed_by_device(device_id, code)
        if claimed is not None:
            log.info("device %s claimed by %s with the claim code it presented", device_id, claimed.owner)

    def subscription_from_device(
        self, link: DeviceLink, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None:
        self.cloud.subscription_from_device(link, prefix, scope, device_id)

    def _spawn(self, work: Awaitable[None], what: str) -> None:
        self._tasks.spawn(work, what)

    async def drain(self) -> None:
        """Wait for the work started on devices' behalf (shutdown, tests)."""
        await self._tasks.drain()
