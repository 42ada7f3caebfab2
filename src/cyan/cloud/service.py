"""The live side of the cloud: which devices are connected, what they may be asked, and where events go.

The device server reports sessions, events, descriptions and subscriptions (through
`cyan.app.handshake.DeviceGateway`); the use cases ask a device's session to call a function, read a
variable or signal, once they have decided the caller may. Everything a connection event changes happens in
memory at once, in the order the device sent it; what is kept of it is written behind by `RecordWriter`.
`Cloud` is also the use cases' view of the live sessions (`cyan.cloud.ports.Sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cyan.protocol import Hello, OtaOutcome, SubscriptionScope, VariableType
from cyan.protocol.messages import MAX_EVENT_NAME, decode_variable

from .alerts import AlertSink, LoggingAlerts
from .errors import DeviceOfflineError, DeviceQuarantinedError, UnknownFunctionError, UnknownVariableError
from .models import CloudEvent, ConnectionAttempt, DeviceRecord, LinkDiagnostics, Variable
from .ports import Bus, BusUnavailableError, NodeUnreachableError, Presence, Store, StoreUnavailableError
from .queries import DeviceQuery, DeviceStatus
from .routing import CallFunction, CloseSession, ReadVariable, SessionChange, SessionChangeKind, Signal
from .watch import AttemptWatch
from .writer import AttemptSampler, RecordLimits, RecordWriter

__all__ = ["Cloud", "DeviceLink", "SessionFacts"]

log = logging.getLogger("cyan.cloud")

_SYSTEM_PREFIXES = ("spark/", "particle/")

VariableValue = bool | int | float | str


class DeviceLink(Protocol):
    """A live session with one device, as the device server offers it to the cloud."""

    device_id: str
    peer_address: str

    @property
    def key_fingerprint(self) -> str | None:
        """The fingerprint of the key the session started with (the presented one, in quarantine)."""

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

    # -- vitals (cyan.cloud.vitals) ------------------------------------------------------------

    def diagnose(self, timeout: float) -> Awaitable[LinkDiagnostics]:
        """Ping the device for the round trip and, if it reports diagnostics (Hello flag 0x02), ask for them
        (a metrics Describe, protocol.md §6.7); what did not come within `timeout` is None."""


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the cloud knows of a device's live session (for its vitals)."""

    record: DeviceRecord
    link: DeviceLink
    started_at: datetime
    #: Events the device published during this session.
    published: int


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
    started_at: datetime | None = None
    published: int = 0
    #: What the bus's presence names this session by: a newer one, on any node, replaces it.
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)


#: A quarantined session's presence is kept under the device id with this suffix (no device id has a slash), so
#: that an approval made on another node reaches it without counting the device as connected.
_QUARANTINE = "/quarantine"
#: What a request to the node holding a device allows beyond the device's own timeout: the way there and back.
_ROUTE_MARGIN = 2.0
#: Claims, releases and messages to other nodes under way at once.
_BUS_CONCURRENCY = 32


class Cloud:
    """The live sessions, over a `Store` (for what is written behind) and a `Bus`."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        request_timeout: float = 20.0,
        pending_writes_limit: int = 100_000,
        alerts: AlertSink | None = None,
        loop_threshold: int = 5,
        loop_window: float = 300.0,
        records: RecordLimits | None = None,
        housekeeping_interval: float = 60.0,
        clustered: bool = False,
        reconcile_interval: float = 5.0,
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
        self.writer = RecordWriter(store, limit=pending_writes_limit)
        self.records = records or RecordLimits()
        self.sampler = AttemptSampler(self.records)
        self._housekeeping_interval = housekeeping_interval
        self._housekeeping: asyncio.Task[None] | None = None
        self.alerts: AlertSink = alerts or LoggingAlerts()
        self.watch = AttemptWatch(
            self.alerts,
            connected=self.online,
            owner_of=self._owner_of,
            loop_threshold=loop_threshold,
            loop_window=loop_window,
        )
        #: Quarantined sessions: connected, granted nothing (protocol.md §12.3 (b)), with their Hello.
        self._quarantined: dict[str, tuple[DeviceLink, DeviceRecord, Hello]] = {}
        #: Subscriptions a quarantined device asked for: they take effect if its key is approved.
        self._held_subscriptions: dict[str, list[_Subscription]] = {}
        #: Called with every event this node's devices and API callers publish (not those of other nodes, nor
        #: the cloud's own): what acts once per event, such as webhooks, listens here. Must not block.
        self.origin_listeners: list[Callable[[CloudEvent], None]] = []
        #: Called with the diagnostics a device posts unasked (`Particle.publishVitals()`): device id, values.
        self.metrics_listeners: list[Callable[[str, dict[int, int]], None]] = []
        #: One of several nodes sharing the store and the bus: the stored online state is the cluster's, so a
        #: starting node never clears it, and `reconcile` keeps it true to the bus's presences instead.
        self.clustered = clustered
        self._reconcile_interval = reconcile_interval
        self._reconciler: asyncio.Task[None] | None = None
        self._quarantine_ids: dict[str, str] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Bus work of sessions at once: a fleet connecting (or a node's devices moving here) must not open a
        #: connection to the broker per device.
        self._bus_slots = asyncio.Semaphore(_BUS_CONCURRENCY)
        #: What answers the other requests nodes send each other (`cyan.cloud.ota` registers its own).
        self.request_handlers: dict[type, Callable[[Any], Awaitable[object]]] = {}
        bus.add_listener(self._fan_out)
        bus.serve(self._handle_request)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self, *, owns_devices: bool = True) -> None:
        """`owns_devices`: this process serves the devices, so none is online when it starts."""
        if owns_devices and not self.clustered:
            await self.store.devices.mark_all_offline()
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._housekeeping = loop.create_task(self._housekeep(), name="cyan-housekeeping")
        if owns_devices and self.clustered:
            self._reconciler = loop.create_task(self._reconcile_loop(), name="cyan-reconcile")

    async def stop(self) -> None:
        """Close every session, then write what is still queued."""
        for session in list(self._sessions.values()):
            session.link.close()
        for link, _, _ in list(self._quarantined.values()):
            link.close()
        for task in (self._housekeeping, self._reconciler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._housekeeping = self._reconciler = None
        if self._background:
            # The presences the closed sessions release: so that other nodes do not wait for a lease to end.
            await asyncio.wait(set(self._background), timeout=5.0)
        for summary in self.sampler.flush(self._clock() + self.records.window):
            self.writer.attempt(summary)
        await self.writer.stop()

    async def _housekeep(self) -> None:
        rounds = 0
        while True:
            try:
                await self.housekeep(prune=rounds % 10 == 0)
            except StoreUnavailableError as exc:
                log.warning("housekeeping of the attempt records postponed: %s", exc)
            except Exception:
                log.exception("housekeeping of the attempt records failed")
            rounds += 1
            await asyncio.sleep(self._housekeeping_interval)

    async def housekeep(self, *, prune: bool = True) -> int:
        """Record the summaries of ended runs of identical failures and, with `prune`, delete the records past
        their age or count (`RecordLimits`); how many were deleted. Runs every `housekeeping_interval`, pruning
        every tenth time."""
        for summary in self.sampler.flush(self._clock()):
            self.writer.attempt(summary)
        if not prune:
            return 0
        before = self._clock() - self.records.max_age
        pruned = await self.store.attempts.prune(before=before, keep=self.records.max_count)
        if pruned:
            log.info("deleted %d connection attempt record(s) past their age or count", pruned)
        return pruned

    async def flush(self) -> None:
        """Wait until every queued record has reached the store (tests, shutdown)."""
        await self.writer.flush()

    # -- what the device server reports ---------------------------------------------------------

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        for kept in self.sampler.keep(attempt):
            self.writer.attempt(kept)
        self.watch.observe(attempt)

    def session_started(
        self, link: DeviceLink, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        if quarantined:
            # Connected, but nothing of the device's is touched and nothing is granted until its owner
            # approves the new key (protocol.md §12.3 (b)): it may be an impersonator.
            log.warning("a client connected in quarantine as device %s from %s", link.device_id, link.peer_address)
            previous_held = self._quarantined.get(link.device_id)
            if previous_held is not None and previous_held[0] is not link:
                previous_held[0].close()
            self._quarantined[link.device_id] = (link, record, hello)
            session_id = uuid.uuid4().hex
            self._quarantine_ids[link.device_id] = session_id
            self._spawn(self._claim(link.device_id + _QUARANTINE, session_id), "claim a quarantined session")
            return
        held = self._quarantined.pop(link.device_id, None)
        if held is not None:
            # The device itself is back with its registered key: the quarantined client was not it.
            log.warning("device %s connected with its registered key; closing the quarantined session", link.device_id)
            self._held_subscriptions.pop(link.device_id, None)
            self._release_quarantined(link.device_id)
            held[0].close()
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
        record.last_handshake_at = now
        record.last_address = link.peer_address
        record.platform_id = hello.platform_id
        record.product_id = hello.product_id
        record.product_version = hello.product_version
        record.hello_flags = int(hello.flags)
        if hello.system_version is not None:
            record.system_version = hello.system_version
        session = _Session(link, record, started_at=now)
        self._sessions[link.device_id] = session
        self._by_owner[record.owner].add(link.device_id)
        self.writer.state(record)
        self._system_event(record, "spark/status", "online")
        self._spawn(self._claim(link.device_id, session.session_id), "claim a session")

    def session_ended(self, link: DeviceLink) -> None:
        held = self._quarantined.get(link.device_id)
        if held is not None and held[0] is link:
            del self._quarantined[link.device_id]
            self._held_subscriptions.pop(link.device_id, None)
            self._release_quarantined(link.device_id)
            return
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return
        self._drop(session)
        record = session.record
        record.online = False
        self.writer.state(record)
        self._system_event(record, "spark/status", "offline")

    def _drop(self, session: _Session) -> None:
        device_id = session.link.device_id
        self._sessions.pop(device_id, None)
        self._by_owner[session.record.owner].discard(device_id)
        self._unindex(session, session.record.owner)
        self._spawn(self.bus.release(device_id, session.session_id), "release a session")

    def _release_quarantined(self, device_id: str) -> None:
        session_id = self._quarantine_ids.pop(device_id, None)
        if session_id is not None:
            self._spawn(self.bus.release(device_id + _QUARANTINE, session_id), "release a quarantined session")

    # -- the cluster: presence, and requests from the other nodes ---------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Bus work a session's start or end causes, beside the device's way rather than in it: a slow or
        unreachable bus never holds a device up (the Redis bus claims its sessions again once it is back)."""

        async def run() -> None:
            try:
                async with self._bus_slots:
                    await work
            except (BusUnavailableError, NodeUnreachableError) as exc:
                log.warning("could not %s on the bus: %s", what, exc)
            except Exception:
                log.exception("could not %s on the bus", what)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no loop: a synchronous test of the sessions alone
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _claim(self, device_id: str, session_id: str) -> None:
        """Take the device's presence; a session another node still holds is stale (the newer session wins,
        as real firmware reconnects after a network change): tell that node to close it."""
        replaced = await self.bus.claim(device_id, session_id)
        if replaced is None or replaced.node_id == self.bus.node_id or replaced.session_id == session_id:
            return
        log.info("device %s moved here from node %s; asking it to close its old session", device_id, replaced.node_id)
        try:
            await self.bus.request(replaced.node_id, CloseSession(device_id, replaced.session_id), _ROUTE_MARGIN * 2)
        except NodeUnreachableError as exc:
            # The usual case after a node died: its devices reconnect here, and it has no session to close.
            log.info("node %s has no session of device %s to close: %s", replaced.node_id, device_id, exc)

    async def _handle_request(self, message: object) -> object:
        """What another node asks of a device held here, or of the sessions held here."""
        match message:
            case CallFunction(device_id, name, argument, timeout):
                return await self._gone_is_offline(device_id, self._local_call(device_id, name, argument, timeout))
            case ReadVariable(device_id, name, timeout):
                return await self._gone_is_offline(device_id, self._local_read(device_id, name, timeout))
            case Signal(device_id, on):
                link = self._session_for(device_id).link
                await self._gone_is_offline(device_id, link.signal(on, self.request_timeout))
                return None
            case CloseSession(device_id, session_id):
                self._close_stale(device_id, session_id)
                return None
            case SessionChange():
                await self._apply_change(message)
                return None
        handler = self.request_handlers.get(type(message))
        if handler is not None:
            return await handler(message)
        raise ValueError(f"not a request this node answers: {type(message).__name__}")

    @staticmethod
    async def _gone_is_offline(device_id: str, request: Awaitable[Any]) -> Any:
        """A session that ends under a request from another node (its device moved on, or went): the asker
        gets the device's offline error, as a local caller gets its `ConnectionError`, not a node's failure."""
        try:
            return await request
        except ConnectionError as exc:
            raise DeviceOfflineError(device_id, str(exc)) from exc

    def _close_stale(self, device_id: str, session_id: str) -> None:
        session = self._sessions.get(device_id)
        if session is not None and session.session_id == session_id:
            # Replaced, not ended: the device is online on the other node, so no offline state nor event.
            log.info("device %s reconnected through another node; closing its session here", device_id)
            self._drop(session)
            session.link.close()
            return
        held = self._quarantined.get(device_id)
        if held is not None and self._quarantine_ids.get(device_id) == session_id:
            del self._quarantined[device_id]
            self._held_subscriptions.pop(device_id, None)
            self._quarantine_ids.pop(device_id, None)
            held[0].close()

    async def _apply_change(self, change: SessionChange) -> None:
        if change.kind is SessionChangeKind.OWNER:
            await self._owner_changed_here(change.device_id, change.owner)
        elif change.kind is SessionChangeKind.KEY_APPROVED and change.fingerprint is not None:
            await self._key_approved_here(change.device_id, change.fingerprint)
        elif change.kind is SessionChangeKind.KEY_REJECTED and change.fingerprint is not None:
            await self._key_rejected_here(change.device_id, change.fingerprint)
        elif change.kind is SessionChangeKind.CLOSE:
            await self._close_sessions_here(change.device_id, keep_key=change.fingerprint)

    async def _forward(self, change: SessionChange) -> None:
        """Tell the nodes that hold the device's sessions (proven or quarantined), if others do, of a change
        made here: the store already holds it, so a device that connects anywhere later finds it there."""
        nodes: set[str] = set()
        for presence in (
            await self._holder(change.device_id),
            await self._holder(change.device_id + _QUARANTINE),
        ):
            if presence is not None and presence.node_id != self.bus.node_id:
                nodes.add(presence.node_id)
        for node in nodes:
            try:
                await self.bus.request(node, change, _ROUTE_MARGIN * 2)
            except NodeUnreachableError as exc:
                # A node gone is a node whose sessions are gone: the device reconnects, and the store decides.
                log.warning("node %s did not take the change of device %s: %s", node, change.device_id, exc)

    def tell_holder(self, device_id: str, message: object) -> None:
        """Send `message` to the node holding the device, when that is another node; in the background, as a
        hint: what it is about is in the store, and the device's next connection anywhere finds it there."""

        async def send() -> None:
            presence = await self.bus.holder(device_id)
            if presence is not None and presence.node_id != self.bus.node_id:
                await self.bus.request(presence.node_id, message, _ROUTE_MARGIN * 2)

        self._spawn(send(), f"tell the node of device {device_id}")

    async def _holder(self, device_id: str) -> Presence | None:
        return await self.bus.holder(device_id)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval)
            try:
                await self.reconcile()
            except (StoreUnavailableError, BusUnavailableError) as exc:
                log.warning("the devices' online state could not be checked against the bus: %s", exc)
            except Exception:
                log.exception("checking the devices' online state against the bus failed")

    async def reconcile(self, *, grace: float | None = None) -> int:
        """Keep the stored online state true to the bus (clustered nodes, every `reconcile_interval`): a device
        stored as online that no live node holds (its node died, or stopped before its write) is stored
        offline; a device held here but stored offline (a dying node's late write) is stored online again.
        Devices that connected within `grace` seconds (default: the interval) are left to their node's claim.
        How many records were corrected."""
        grace = self._reconcile_interval if grace is None else grace
        recent = self._clock().timestamp() - grace
        stored_online: set[str] = set()
        corrected = 0
        offset = 0
        while True:
            page = await self.store.devices.search(DeviceQuery(status=DeviceStatus.ONLINE, offset=offset, limit=1000))
            for record in page.devices:
                stored_online.add(record.id)
                if record.id in self._sessions:
                    continue
                if record.last_heard is not None and record.last_heard.timestamp() > recent:
                    continue
                if await self.bus.holder(record.id) is None:
                    record.online = False
                    self.writer.state(record)
                    corrected += 1
            offset += len(page.devices)
            if not page.devices or offset >= page.total:
                break
        for device_id, session in list(self._sessions.items()):
            if device_id not in stored_online:
                self.writer.state(session.record)
                corrected += 1
        return corrected

    def heard_from(self, link: DeviceLink) -> None:
        session = self._sessions.get(link.device_id)
        if session is not None:
            session.record.last_heard = self._clock()

    def describe_received(self, link: DeviceLink, document: dict[str, Any]) -> None:
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
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
        system = _system_module_version(document.get("m"))
        if system is not None and system != record.system_version:
            # 0.6.x and 0.7.x Hellos carry no system version: the Describe's system part is where it is.
            record.system_version = system
            changed = True
        if changed:
            self.writer.state(record)

    def event_from_device(self, link: DeviceLink, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return  # a quarantined session's events go nowhere
        record = session.record
        record.last_heard = self._clock()
        session.published += 1
        text = data.decode("utf-8", "replace") if data is not None else None
        self._originate(CloudEvent(name, text, ttl, self._clock(), record.id, record.owner, private))

    def metrics_received(self, link: DeviceLink, values: dict[int, int]) -> None:
        """The device posted its diagnostics unasked (protocol.md §6.7)."""
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
            return
        for listener in self.metrics_listeners:
            try:
                listener(link.device_id, values)
            except Exception:
                log.exception("a listener failed on the diagnostics of device %s", link.device_id)

    def _originate(self, event: CloudEvent) -> None:
        self.bus.publish(event)
        for listener in self.origin_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a listener failed on event %s", event.name)

    def subscription_from_device(
        self, link: DeviceLink, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None:
        session = self._sessions.get(link.device_id)
        if session is None or session.link is not link:
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
        if len(name) > MAX_EVENT_NAME // 4 and len(name.encode()) > MAX_EVENT_NAME:
            return  # devices take names of at most 64 bytes (§6.4); a longer one (a hook's topic) is for streams
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

    # -- the live sessions, for the use cases (cyan.cloud.ports.Sessions) ------------------------

    def online(self, device_id: str) -> bool:
        return device_id in self._sessions

    async def connected(self, device_id: str) -> bool:
        if device_id in self._sessions:
            return True
        presence = await self.bus.holder(device_id)
        return presence is not None and presence.node_id != self.bus.node_id

    def shown_online(self, record: DeviceRecord) -> bool:
        """Whether a device list shows the device connected: its session here, or (one of several nodes) the
        stored state its own node keeps."""
        return record.id in self._sessions or (self.clustered and record.online)

    def quarantined(self, device_id: str) -> bool:
        return device_id in self._quarantined and device_id not in self._sessions

    def live(self, device_id: str) -> DeviceRecord | None:
        session = self._sessions.get(device_id)
        return session.record if session is not None else None

    def _owner_of(self, device_id: str) -> str | None:
        session = self._sessions.get(device_id)
        return session.record.owner if session is not None else None

    def session_facts(self, device_id: str) -> SessionFacts | None:
        """The device's live session with full access, if it has one here."""
        session = self._sessions.get(device_id)
        if session is None or session.started_at is None:
            return None
        return SessionFacts(session.record, session.link, session.started_at, session.published)

    def device_link(self, device_id: str) -> DeviceLink | None:
        """The link of a connected device with full access (not a quarantined one)."""
        session = self._sessions.get(device_id)
        return session.link if session is not None else None

    def local_device_ids(self) -> list[str]:
        """The devices with a session (full access) on this node."""
        return list(self._sessions)

    @property
    def connected_count(self) -> int:
        return len(self._sessions)

    async def owner_changed(self, device_id: str, owner: str | None) -> None:
        """A device was claimed or released: its session and event routing follow the new owner."""
        await self._owner_changed_here(device_id, owner)
        await self._forward(SessionChange(SessionChangeKind.OWNER, device_id, owner=owner))

    async def key_approved(self, device_id: str, fingerprint: str) -> None:
        await self._key_approved_here(device_id, fingerprint)
        await self._forward(SessionChange(SessionChangeKind.KEY_APPROVED, device_id, fingerprint=fingerprint))

    async def key_rejected(self, device_id: str, fingerprint: str) -> None:
        await self._key_rejected_here(device_id, fingerprint)
        await self._forward(SessionChange(SessionChangeKind.KEY_REJECTED, device_id, fingerprint=fingerprint))

    async def close_sessions(self, device_id: str, *, keep_key: str | None = None) -> None:
        await self._close_sessions_here(device_id, keep_key=keep_key)
        await self._forward(SessionChange(SessionChangeKind.CLOSE, device_id, fingerprint=keep_key))

    async def _owner_changed_here(self, device_id: str, owner: str | None) -> None:
        session = self._sessions.get(device_id)
        if session is None:
            return
        self._by_owner[session.record.owner].discard(device_id)
        self._unindex(session, session.record.owner)
        session.record.owner = owner
        self._by_owner[owner].add(device_id)
        for sub in session.subscriptions:
            self._index(device_id, owner, sub)

    async def _key_approved_here(self, device_id: str, fingerprint: str) -> None:
        """The key is the device's registered key now: a quarantined session with it gets its access; a
        session with the key it replaced is closed (the device must present the approved key)."""
        await self._close_sessions_here(device_id, keep_key=fingerprint)
        held = self._quarantined.pop(device_id, None)
        if held is None:
            return
        self._release_quarantined(device_id)
        link, record, hello = held
        record.public_key_der = None  # the store holds the key; the session needs only its fingerprint
        record.key_fingerprint = fingerprint
        self.session_started(link, record, hello)
        for sub in self._held_subscriptions.pop(device_id, []):
            self.subscription_from_device(link, sub.prefix, sub.scope, sub.device_id)

    async def _key_rejected_here(self, device_id: str, fingerprint: str) -> None:
        held = self._quarantined.get(device_id)
        if held is not None and held[0].key_fingerprint == fingerprint:
            del self._quarantined[device_id]
            self._held_subscriptions.pop(device_id, None)
            self._release_quarantined(device_id)
            held[0].close()

    async def _close_sessions_here(self, device_id: str, *, keep_key: str | None = None) -> None:
        session = self._sessions.get(device_id)
        if session is not None and (keep_key is None or session.link.key_fingerprint != keep_key):
            session.link.close()
        held = self._quarantined.get(device_id)
        if held is not None and (keep_key is None or held[0].key_fingerprint != keep_key):
            del self._quarantined[device_id]
            self._held_subscriptions.pop(device_id, None)
            self._release_quarantined(device_id)
            held[0].close()

    # -- asking a device (the use cases decided the caller may) ----------------------------------

    def _session_for(self, device_id: str) -> _Session:
        session = self._sessions.get(device_id)
        if session is None:
            if device_id in self._quarantined:
                raise DeviceQuarantinedError(device_id)
            raise DeviceOfflineError(device_id)
        return session

    async def _elsewhere(self, device_id: str) -> str | None:
        """The node that holds the device, when it is not this one; None when the session is here (it may have
        started while the bus was asked). `DeviceOfflineError` (or quarantined) otherwise."""
        if device_id not in self._sessions and device_id not in self._quarantined:
            presence = await self.bus.holder(device_id)
            if presence is not None and presence.node_id != self.bus.node_id:
                return presence.node_id
        self._session_for(device_id)  # quarantined here, or offline
        return None

    async def call_function(self, device_id: str, name: str, argument: str, *, timeout: float | None = None) -> int:
        timeout = timeout or self.request_timeout
        if device_id in self._sessions:
            return await self._local_call(device_id, name, argument, timeout)
        node = await self._elsewhere(device_id)
        if node is None:
            return await self._local_call(device_id, name, argument, timeout)
        result = await self.bus.request(node, CallFunction(device_id, name, argument, timeout), timeout + _ROUTE_MARGIN)
        return int(result)

    async def _local_call(self, device_id: str, name: str, argument: str, timeout: float) -> int:
        session = self._session_for(device_id)
        record = session.record
        if record.functions and name not in record.functions:
            raise UnknownFunctionError(record.id, name)
        return await session.link.call_function(name, argument, timeout)

    async def read_variable(
        self, device_id: str, name: str, *, timeout: float | None = None
    ) -> tuple[bytes, VariableValue | None]:
        timeout = timeout or self.request_timeout
        if device_id in self._sessions:
            return await self._local_read(device_id, name, timeout)
        node = await self._elsewhere(device_id)
        if node is None:
            return await self._local_read(device_id, name, timeout)
        raw, value = await self.bus.request(node, ReadVariable(device_id, name, timeout), timeout + _ROUTE_MARGIN)
        return bytes(raw), value

    async def _local_read(self, device_id: str, name: str, timeout: float) -> tuple[bytes, VariableValue | None]:
        session = self._session_for(device_id)
        record = session.record
        if record.variables and name not in {v.name for v in record.variables}:
            raise UnknownVariableError(record.id, name)
        raw, value = await session.link.read_variable(name, timeout)
        if value is None:
            # A session resumed with no handshake (UDP) may bring no Describe: the firmware skips it when its
            # checksum is unchanged, so the link knows no types. The ones the device last described do.
            value = _decoded(raw, next((v.type for v in record.variables if v.name == name), None))
        return raw, value

    async def signal(self, device_id: str, on: bool) -> None:
        if device_id in self._sessions:
            await self._session_for(device_id).link.signal(on, self.request_timeout)
            return
        node = await self._elsewhere(device_id)
        if node is None:
            await self._session_for(device_id).link.signal(on, self.request_timeout)
            return
        await self.bus.request(node, Signal(device_id, on), self.request_timeout + _ROUTE_MARGIN)

    def publish(self, name: str, data: str | None, *, owner: str | None, private: bool = True, ttl: int = 60) -> None:
        """An event from the API: to the owner's devices and every stream that matches."""
        self._originate(CloudEvent(name, data, ttl, self._clock(), None, owner, private))


def _system_module_version(modules: object) -> int | None:
    """The version of the system part(s) in a system Describe's module list (protocol.md §6.7), if any.

    A Photon's system is two parts of one version; the highest is taken should they ever differ (one part
    updated, the device not yet reset)."""
    if not isinstance(modules, list):
        return None
    versions = [
        module["v"]
        for module in modules
        if isinstance(module, dict)
        and module.get("f") == "s"
        and isinstance(module.get("v"), int)
        and not isinstance(module.get("v"), bool)
        and 0 <= module["v"] < 2**16
    ]
    return max(versions) if versions else None


#: The Particle API's type names (`Variable.type`) back to Describe's type codes.
_VARIABLE_TYPES = {kind.api_name: kind for kind in VariableType}


def _decoded(raw: bytes, api_type: str | None) -> VariableValue | None:
    kind = _VARIABLE_TYPES.get(api_type or "")
    if kind is None:
        return None
    try:
        return decode_variable(kind, raw)
    except ValueError:
        return None
