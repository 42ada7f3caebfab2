"""The cloud domain service: who is connected, what they can do, and where events go.

The device server calls in when a device identifies itself, connects, describes itself, publishes or
subscribes; the API calls in to list devices, call functions, read variables and publish. Everything a
connection event changes happens synchronously in memory, in the order the device sent it; persistence
goes through one background writer so a slow or failing database never stalls a device (design.md §1).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cyan.bus import CloudEvent, InProcessBus
from cyan.protocol import Hello, OtaOutcome, SubscriptionScope, VariableType

from .alerts import Alert, AlertSink, LoggingAlerts
from .errors import (
    CloudError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceQuarantinedError,
    UnknownFunctionError,
    UnknownVariableError,
)
from .keypolicy import Decision, decide
from .models import (
    AttemptOutcome,
    ConnectionAttempt,
    DeviceRecord,
    KeyAuditEntry,
    KeyPolicy,
    KeyPolicyMode,
    RekeyWindow,
    Variable,
)
from .ports import Store, StoreUnavailableError

__all__ = ["Cloud", "DeviceLink"]

log = logging.getLogger("cyan.cloud")

_SYSTEM_PREFIXES = ("spark/", "particle/")

#: spark/device/key/error bits (protocol.md §12.1).
_KEY_ERROR_FLAGS = {
    1: "server public key blank",
    2: "server public key corrupted",
    4: "server address blank",
    8: "server address corrupted",
    16: "device public key blank",
    32: "device public key corrupted",
    64: "device private key blank",
    128: "device private key corrupted",
}

VariableValue = bool | int | float | str


class DeviceLink(Protocol):
    """A live session with one device, as the device server offers it to the cloud."""

    device_id: str
    peer_address: str

    def call_function(self, name: str, argument: str, timeout: float) -> Awaitable[int]: ...

    def read_variable(self, name: str, timeout: float) -> Awaitable[tuple[bytes, VariableValue | None]]: ...

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None: ...

    def signal(self, on: bool, timeout: float) -> Awaitable[None]: ...

    def close(self) -> None: ...

    # -- firmware updates (protocol.md §7; cyan.cloud.ota) ----------------------------------------

    #: The device's Hello (§5), once it arrived.
    hello: Hello | None
    #: The largest image the device says it takes (3.x Hello, or spark/hardware/max_binary); None: unsaid.
    max_binary_size: int | None

    def system_describe(self, timeout: float) -> Awaitable[dict[str, Any] | None]:
        """The device's latest system Describe (modules, §6.7), asked for if none came; None if none comes.
        A `timeout` of 0 only returns one already received."""

    def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> Awaitable[OtaOutcome]:
        """Send an update (the protocol core's `OtaSender`); `progress(delivered, total)` as it goes."""


@dataclass(slots=True)
class _Subscription:
    prefix: str
    scope: SubscriptionScope
    device_id: str | None


@dataclass(slots=True)
class _Session:
    link: DeviceLink
    record: DeviceRecord
    subscriptions: list[_Subscription] = field(default_factory=list)


class Cloud:
    """The domain, over a `Store` and a bus."""

    def __init__(
        self,
        store: Store,
        bus: InProcessBus,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        request_timeout: float = 20.0,
        pending_writes_limit: int = 100_000,
        alerts: AlertSink | None = None,
        loop_threshold: int = 5,
        loop_window: float = 300.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self._clock = clock
        self.request_timeout = request_timeout
        self._sessions: dict[str, _Session] = {}
        self._by_owner: dict[str | None, set[str]] = defaultdict(set)
        #: Subscriptions indexed by owner and prefix (MY_DEVICES and single-device scopes), and by prefix
        #: for the ALL_DEVICES scope: an event looks up each of its name's prefixes (at most 65) instead of
        #: scanning every connected device.
        self._subscribers: dict[str | None, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._firehose: dict[str, set[str]] = defaultdict(set)
        self._writes: deque[Callable[[], Awaitable[Any]]] = deque()
        self._writes_limit = pending_writes_limit
        self._writes_dropped = 0
        #: The latest state of each device still to be written, and attempts still to be recorded.
        self._state_writes: dict[str, DeviceRecord] = {}
        self._attempt_writes: list[ConnectionAttempt] = []
        self._write_signal = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        self.alerts: AlertSink = alerts or LoggingAlerts()
        #: Quarantined sessions: connected, granted nothing (protocol.md §12.3 (b)), with their Hello.
        self._quarantined: dict[str, tuple[DeviceLink, DeviceRecord, Hello]] = {}
        #: Subscriptions a quarantined device asked for: they take effect if its key is approved.
        self._held_subscriptions: dict[str, list[_Subscription]] = {}
        self._loop_threshold = loop_threshold
        self._loop_window = loop_window
        self._failures: dict[str, deque[datetime]] = {}
        self._loop_alerted: dict[str, datetime] = {}
        bus.add_listener(self._fan_out)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self, *, owns_devices: bool = True) -> None:
        """`owns_devices`: this process serves the devices, so none is online when it starts. A command-line
        tool working beside a running server passes False."""
        if owns_devices:
            await self.store.mark_all_offline()
        self._writer = asyncio.create_task(self._write_loop(), name="cyan-cloud-writer")

    async def stop(self) -> None:
        """Close every session, then flush what is still to be written."""
        for session in list(self._sessions.values()):
            session.link.close()
        self._stopping = True
        self._write_signal.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    def _persist(self, write: Callable[[], Awaitable[Any]]) -> None:
        if len(self._writes) >= self._writes_limit:
            self._writes.popleft()
            self._writes_dropped += 1
            log.error("database writes are backing up: dropped the oldest (%d so far)", self._writes_dropped)
        self._writes.append(write)
        self._write_signal.set()

    @property
    def _backlog(self) -> bool:
        return bool(self._writes or self._state_writes or self._attempt_writes)

    async def _write_loop(self) -> None:
        """One writer, so that the database sees one transaction at a time. The two writes every connection
        makes (its attempt record, its device's state) are batched: many connections, one transaction."""
        delay = 0.5
        while True:
            while self._backlog:
                try:
                    await self._write_once()
                except StoreUnavailableError as exc:
                    if self._stopping:
                        lost = len(self._writes) + len(self._state_writes) + len(self._attempt_writes)
                        log.error("database unavailable at shutdown; %d writes lost: %s", lost, exc)
                        return
                    # Keep the writes and retry: a database that is down must not lose a record.
                    log.error("database unavailable, retrying in %.1f s: %s", delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
            if self._stopping:
                return
            self._write_signal.clear()
            await self._write_signal.wait()

    async def _write_once(self) -> None:
        while self._writes:
            try:
                await self._writes[0]()
            except StoreUnavailableError:
                raise
            except Exception:
                log.exception("a database write failed and was dropped")
            self._writes.popleft()
        if self._state_writes:
            states = list(self._state_writes.values())
            self._state_writes.clear()
            try:
                await self.store.update_device_states(states)
            except StoreUnavailableError:
                for record in states:  # put them back, unless a newer snapshot arrived meanwhile
                    self._state_writes.setdefault(record.id, record)
                raise
        if self._attempt_writes:
            attempts, self._attempt_writes = self._attempt_writes, []
            try:
                await self.store.record_attempts(attempts)
            except StoreUnavailableError:
                self._attempt_writes[:0] = attempts
                raise

    async def flush(self) -> None:
        """Wait until every queued write has reached the store (tests, shutdown)."""
        while self._backlog:
            self._write_signal.set()
            await asyncio.sleep(0.005)

    # -- handshake ------------------------------------------------------------------------------

    async def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> tuple[Decision, DeviceRecord | None]:
        """Decide which key to trust for a device that identified itself (see keypolicy.py)."""
        record = await self.store.get_device(device_id)
        decision = await decide(
            self.store, device_id, record, presented_der, now=self._clock(), peer_address=peer_address
        )
        if decision.save_record and decision.record is not None:
            # Durable before the session starts: a new key that was accepted but not stored would lock the
            # device out at its next connection.
            await self.store.save_device(decision.record)
        for entry in decision.audit:
            self._audit(entry)
        return decision, decision.record or record

    def _audit(self, entry: KeyAuditEntry) -> None:
        self._persist(lambda: self.store.add_audit(entry))
        kind = {
            "refused": "key_refused",
            "quarantined": "key_quarantined",
            "key_error_reported": "key_error_reported",
            "rekey_armed": "rekey_armed",
        }.get(entry.action, "key_change")
        summary = f"device {entry.device_id}: key {entry.action} by {entry.actor}"
        if entry.new_fingerprint:
            summary += f" (new {entry.new_fingerprint}, registered {entry.old_fingerprint})"
        self.alerts.send(
            Alert(
                kind,
                entry.device_id,
                entry.at,
                summary,
                {
                    "action": entry.action,
                    "actor": entry.actor,
                    "old_fingerprint": entry.old_fingerprint,
                    "new_fingerprint": entry.new_fingerprint,
                    "detail": entry.detail,
                },
            )
        )

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        if len(self._attempt_writes) >= self._writes_limit:
            del self._attempt_writes[0]
            self._writes_dropped += 1
            log.error("attempt records are backing up: dropped the oldest (%d so far)", self._writes_dropped)
        self._attempt_writes.append(attempt)
        self._write_signal.set()
        if attempt.outcome is AttemptOutcome.FAILED:
            self._watch_for_loop(attempt)

    def _watch_for_loop(self, attempt: ConnectionAttempt) -> None:
        """Alert once an hour for a device (or, unidentified, an address) failing again and again."""
        key = attempt.device_id or attempt.peer_address.rsplit(":", 1)[0]
        now = attempt.started_at
        times = self._failures.setdefault(key, deque(maxlen=self._loop_threshold))
        times.append(now)
        if len(times) < self._loop_threshold or (now - times[0]).total_seconds() > self._loop_window:
            return
        last = self._loop_alerted.get(key)
        if last is not None and (now - last).total_seconds() < 3600:
            return
        self._loop_alerted[key] = now
        who = f"device {attempt.device_id}" if attempt.device_id else f"an unidentified device at {key}"
        self.alerts.send(
            Alert(
                "handshake_loop",
                attempt.device_id,
                now,
                f"{who} failed {len(times)} connection attempts within {self._loop_window:g} s, "
                f"last at step {attempt.step}: {attempt.reason}",
                {"step": attempt.step, "reason": attempt.reason, "detail": attempt.detail, "address": key},
            )
        )

    # -- sessions -------------------------------------------------------------------------------

    def session_started(
        self, link: DeviceLink, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        if quarantined:
            # Connected, but nothing of the device's is touched and nothing is granted until an operator
            # approves its new key (protocol.md §12.3 (b)): it may be an impersonator.
            log.warning("device %s connected in quarantine from %s", link.device_id, link.peer_address)
            self._quarantined[link.device_id] = (link, record, hello)
            return
        previous = self._sessions.get(link.device_id)
        if previous is not None and previous.link is not link:
            # A reconnecting device replaces its old connection (often a dead one the server has not
            # noticed yet: the device restarted or its Wi-Fi dropped).
            log.info("device %s reconnected; closing its previous connection", link.device_id)
            self._drop(previous)
            previous.link.close()
        now = self._clock()
        record.online = True
        record.last_heard = now
        record.last_address = link.peer_address
        record.platform_id = hello.platform_id
        record.product_id = hello.product_id
        record.product_version = hello.product_version
        record.hello_flags = int(hello.flags)
        if hello.system_version is not None:
            record.system_version = hello.system_version
        session = _Session(link, record)
        self._sessions[link.device_id] = session
        self._by_owner[record.owner].add(link.device_id)
        self._save(record)
        self._system_event(record, "spark/status", "online")

    def session_ended(self, link: DeviceLink) -> None:
        held = self._quarantined.get(link.device_id)
        if held is not None and held[0] is link:
            del self._quarantined[link.device_id]
            self._held_subscriptions.pop(link.device_id, None)
            return
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return
        self._drop(session)
        record = session.record
        record.online = False
        self._save(record)
        self._system_event(record, "spark/status", "offline")

    def _drop(self, session: _Session) -> None:
        device_id = session.link.device_id
        self._sessions.pop(device_id, None)
        self._by_owner[session.record.owner].discard(device_id)
        self._unindex(session, session.record.owner)

    def _save(self, record: DeviceRecord) -> None:
        snapshot = replace(record, functions=list(record.functions), variables=list(record.variables))
        self._state_writes[record.id] = snapshot
        self._write_signal.set()

    def owner_changed(self, record: DeviceRecord) -> None:
        """A device was claimed or released: its session and event routing follow the new owner."""
        session = self._sessions.get(record.id)
        if session is None:
            return
        self._by_owner[session.record.owner].discard(record.id)
        self._unindex(session, session.record.owner)
        session.record.owner = record.owner
        self._by_owner[record.owner].add(record.id)
        for sub in session.subscriptions:
            self._index(record.id, record.owner, sub)

    def heard_from(self, link: DeviceLink) -> None:
        session = self._sessions.get(link.device_id)
        if session is not None:
            session.record.last_heard = self._clock()

    def describe_received(self, link: DeviceLink, document: dict[str, Any]) -> None:
        session = self._sessions.get(link.device_id)
        if session is None:
            return
        record = session.record
        changed = False
        functions = document.get("f")
        if isinstance(functions, list):
            record.functions = [f for f in functions if isinstance(f, str)]
            changed = True
        variables = document.get("v")
        if isinstance(variables, dict):
            record.variables = [
                Variable(name, VariableType(code).api_name)
                for name, code in variables.items()
                if isinstance(code, int) and code in VariableType._value2member_map_
            ]
            changed = True
        platform = document.get("p")
        if isinstance(platform, int):
            record.platform_id = platform
            changed = True
        if changed:
            self._save(record)

    def event_from_device(self, link: DeviceLink, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return  # a quarantined session's events go nowhere
        if name == "spark/device/key/error":
            self._key_error_reported(link.device_id, data)
        record = session.record
        record.last_heard = self._clock()
        text = data.decode("utf-8", "replace") if data is not None else None
        self.bus.publish(CloudEvent(name, text, ttl, self._clock(), record.id, record.owner, private))

    def subscription_from_device(
        self, link: DeviceLink, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None:
        session = self._sessions.get(link.device_id)
        if session is None:
            held = self._quarantined.get(link.device_id)
            if held is not None and held[0] is link:
                self._held_subscriptions.setdefault(link.device_id, []).append(_Subscription(prefix, scope, device_id))
            return
        subscription = _Subscription(prefix, scope, device_id)
        session.subscriptions.append(subscription)
        self._index(link.device_id, session.record.owner, subscription)

    def _index(self, device_id: str, owner: str | None, sub: _Subscription) -> None:
        if sub.scope is SubscriptionScope.ALL_DEVICES:
            self._firehose[sub.prefix].add(device_id)
        else:
            self._subscribers[owner][sub.prefix].add(device_id)

    def _unindex(self, session: _Session, owner: str | None) -> None:
        device_id = session.link.device_id
        for sub in session.subscriptions:
            table = self._firehose if sub.scope is SubscriptionScope.ALL_DEVICES else self._subscribers[owner]
            members = table.get(sub.prefix)
            if members is not None:
                members.discard(device_id)
                if not members:
                    del table[sub.prefix]

    def _key_error_reported(self, device_id: str, data: bytes | None) -> None:
        """The firmware's own report of blank or corrupt key data (protocol.md §12.1)."""
        text = (data or b"").decode("ascii", "replace").strip()
        flags = int(text) if text.isdigit() else 0
        names = [name for bit, name in _KEY_ERROR_FLAGS.items() if flags & bit]
        detail = f"flags {text or '?'}: " + (", ".join(names) if names else "no known flag")
        self._audit(KeyAuditEntry(self._clock(), device_id, "key_error_reported", "device", None, None, detail))

    def _system_event(self, record: DeviceRecord, name: str, data: str) -> None:
        self.bus.publish(CloudEvent(name, data, 60, self._clock(), record.id, record.owner, True))

    def _fan_out(self, event: CloudEvent) -> None:
        # Quarantined sessions are not in _sessions, so they receive nothing.
        if event.device_id is not None and event.name.startswith(_SYSTEM_PREFIXES):
            # A device's own system events (spark/hardware/..., particle/device/updates/..., spark/status)
            # are about that device, for people and programs; the firmware of other devices has no use for
            # them (its system handlers act only on events from the cloud, protocol.md §6.4).
            return
        name = event.name
        prefixes = [name[:i] for i in range(len(name) + 1)]
        targets: set[str] = set()
        owned = self._subscribers.get(event.owner)
        if owned:
            for prefix in prefixes:
                members = owned.get(prefix)
                if members:
                    targets |= members
        if self._firehose:
            for prefix in prefixes:
                members = self._firehose.get(prefix)
                if members:
                    targets |= members
        for device_id in targets:
            session = self._sessions.get(device_id)
            if session is not None and self._wants(session, event):
                try:
                    session.link.send_event(event.name, event.data, event.ttl, event.private)
                except Exception:
                    log.exception("could not deliver %s to device %s", event.name, device_id)

    @staticmethod
    def _wants(session: _Session, event: CloudEvent) -> bool:
        """Whether one of the device's subscriptions takes the event (protocol.md §6.4): by prefix; a
        single-device subscription only from that device; the firehose only public events, or private
        ones of the same owner."""
        same_owner = session.record.owner == event.owner
        for sub in session.subscriptions:
            if not event.name.startswith(sub.prefix):
                continue
            if sub.scope is SubscriptionScope.ALL_DEVICES:
                if not event.private or same_owner:
                    return True
            elif same_owner and (sub.scope is SubscriptionScope.MY_DEVICES or sub.device_id == event.device_id):
                return True
        return False

    # -- for the API and the CLI ----------------------------------------------------------------

    def online(self, device_id: str) -> bool:
        return device_id in self._sessions

    def device_link(self, device_id: str) -> DeviceLink | None:
        """The link of a connected device with full access (not a quarantined one)."""
        session = self._sessions.get(device_id)
        return session.link if session is not None else None

    @property
    def connected_count(self) -> int:
        return len(self._sessions)

    async def find_device(self, id_or_name: str, *, owner: str | None = None) -> DeviceRecord:
        """Resolve an id or a name; the live record when connected. Owner-scoped when `owner` is given."""
        session = self._sessions.get(id_or_name.lower())
        record = session.record if session else await self.store.find_device(id_or_name)
        if record is None or (owner is not None and record.owner != owner):
            raise DeviceNotFoundError(id_or_name)
        live = self._sessions.get(record.id)
        return live.record if live else record

    def _session_for(self, record: DeviceRecord) -> _Session:
        session = self._sessions.get(record.id)
        if session is None:
            if record.id in self._quarantined:
                raise DeviceQuarantinedError(record.id)
            raise DeviceOfflineError(record.id)
        return session

    def quarantined(self, device_id: str) -> bool:
        return device_id in self._quarantined

    # -- key policy operations (operators; audited) --------------------------------------------

    async def set_policy(self, scope: str, mode: KeyPolicyMode, trust_on_first_use: bool, actor: str) -> KeyPolicy:
        policy = KeyPolicy(scope.lower(), mode, trust_on_first_use, self._clock(), actor)
        await self.store.set_policy(policy)
        return policy

    async def arm_rekey(self, device_id: str, seconds: float, actor: str) -> RekeyWindow:
        """Accept the next new key of this device, until `seconds` from now (protocol.md §12.3 (c))."""
        record = await self.store.get_device(device_id.lower())
        if record is None:
            raise DeviceNotFoundError(device_id)
        now = self._clock()
        window = RekeyWindow(record.id, now + timedelta(seconds=seconds), actor, now)
        await self.store.arm_rekey(window)
        self._audit(
            KeyAuditEntry(
                now, record.id, "rekey_armed", actor, record.key_fingerprint, None, f"until {window.until.isoformat()}"
            )
        )
        return window

    async def approve_pending_key(self, device_id: str, actor: str) -> DeviceRecord:
        """Make the pending key the device's registered key; a quarantined session gets its access."""
        device_id = device_id.lower()
        pending = await self.store.get_pending_key(device_id)
        record = await self.store.get_device(device_id)
        if pending is None or record is None:
            raise CloudError(f"device {device_id} has no pending key")
        old = record.key_fingerprint
        record.public_key_der, record.key_fingerprint = pending.public_key_der, pending.fingerprint
        await self.store.save_device(record)
        await self.store.remove_pending_key(device_id)
        self._audit(KeyAuditEntry(self._clock(), device_id, "approved", actor, old, pending.fingerprint))
        held = self._quarantined.pop(device_id, None)
        if held is not None:
            link, held_record, hello = held
            held_record.public_key_der, held_record.key_fingerprint = record.public_key_der, record.key_fingerprint
            self.session_started(link, held_record, hello)
            for sub in self._held_subscriptions.pop(device_id, []):
                self.subscription_from_device(link, sub.prefix, sub.scope, sub.device_id)
        return record

    async def reject_pending_key(self, device_id: str, actor: str) -> None:
        """Forget the pending key; a quarantined session with it is closed."""
        device_id = device_id.lower()
        pending = await self.store.get_pending_key(device_id)
        if pending is None:
            raise CloudError(f"device {device_id} has no pending key")
        await self.store.remove_pending_key(device_id)
        self._audit(
            KeyAuditEntry(self._clock(), device_id, "rejected", actor, pending.stored_fingerprint, pending.fingerprint)
        )
        held = self._quarantined.pop(device_id, None)
        if held is not None:
            held[0].close()

    async def call_function(
        self, id_or_name: str, name: str, argument: str, *, owner: str | None = None, timeout: float | None = None
    ) -> int:
        record = await self.find_device(id_or_name, owner=owner)
        session = self._session_for(record)
        if record.functions and name not in record.functions:
            raise UnknownFunctionError(record.id, name)
        return await session.link.call_function(name, argument, timeout or self.request_timeout)

    async def read_variable(
        self, id_or_name: str, name: str, *, owner: str | None = None, timeout: float | None = None
    ) -> tuple[bytes, VariableValue | None]:
        record = await self.find_device(id_or_name, owner=owner)
        session = self._session_for(record)
        if record.variables and name not in {v.name for v in record.variables}:
            raise UnknownVariableError(record.id, name)
        return await session.link.read_variable(name, timeout or self.request_timeout)

    async def signal(self, id_or_name: str, on: bool, *, owner: str | None = None) -> None:
        record = await self.find_device(id_or_name, owner=owner)
        await self._session_for(record).link.signal(on, self.request_timeout)

    def publish(self, name: str, data: str | None, *, owner: str | None, private: bool = True, ttl: int = 60) -> None:
        """An event from the API: to the owner's devices and every stream that matches."""
        self.bus.publish(CloudEvent(name, data, ttl, self._clock(), None, owner, private))
