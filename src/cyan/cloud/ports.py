"""The interfaces the cloud needs from storage and from the event bus (design.md §1).

Storage is cut by role, one repository each: devices, keys (policies, re-key windows, pending keys, claim
codes), accounts, connection attempts, firmware and updates, audit, integrations (webhooks), vitals.
`Repositories` is all of them over one transaction; a `Store` hands out transactions and also offers each
repository on its own, where every call commits by itself. The use cases (`cyan.app`) change state only
inside `Store.transaction()`, so that a change and its audit entry are written together or not at all.

`Bus` carries events between devices, event streams and nodes, knows which node holds which device
(presence) and routes a request to that node.

`cyan.store` and `cyan.bus` implement these, each beside an in-memory implementation; one contract suite
per port (tests/ports/) runs against every implementation. The domain never imports a database or a broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .models import (
    AccessToken,
    AuditEntry,
    ClaimCode,
    CloudEvent,
    ConnectionAttempt,
    DeviceRecord,
    FirmwareRecord,
    HookDelivery,
    Integration,
    KeyPolicy,
    PendingKey,
    RefreshToken,
    RekeyWindow,
    UdpSession,
    UpdateJob,
    User,
    VitalsRecord,
)
from .queries import DevicePage, DeviceQuery

__all__ = [
    "AccountRepository",
    "AttemptRepository",
    "AuditRepository",
    "Bus",
    "BusSubscription",
    "BusUnavailableError",
    "DeviceExistsError",
    "DeviceRepository",
    "EventFilter",
    "IntegrationRepository",
    "KeyRepository",
    "NodeUnreachableError",
    "Presence",
    "Repositories",
    "RequestHandler",
    "Sessions",
    "Store",
    "StoreUnavailableError",
    "UdpSessionRepository",
    "UpdateRepository",
    "UserExistsError",
    "VitalsRepository",
]


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached or written; the message says what failed."""


class DeviceExistsError(ValueError):
    """A device with this id (or name) is already registered."""


class UserExistsError(ValueError):
    """A user with this username already exists."""


class BusUnavailableError(RuntimeError):
    """The bus (its broker) cannot be reached; the message says what failed."""


class NodeUnreachableError(ConnectionError):
    """The node that holds a device did not answer a request routed to it."""


# -- storage --------------------------------------------------------------------------------------------
#
# Every method raises `StoreUnavailableError` when the database fails.


class DeviceRepository(Protocol):
    """Registered devices: identity, owner, key, and what their connections last reported."""

    async def get(self, device_id: str) -> DeviceRecord | None:
        """By id, compared without regard to case."""

    async def find(self, id_or_name: str, *, owner: str | None = None) -> DeviceRecord | None:
        """By id (case-insensitive) or, failing that, by exact name: among `owner`'s devices, or among all
        when `owner` is None, where a name given to devices of several owners is `DeviceNameAmbiguousError`
        (names are unique per owner)."""

    async def all(self, owner: str | None = None) -> list[DeviceRecord]:
        """All devices, or one owner's, ordered by id."""

    async def add(self, device: DeviceRecord) -> None:
        """Raises `DeviceExistsError` for a taken id or name."""

    async def add_many(self, devices: list[DeviceRecord]) -> None:
        """All of them, or none when one id or name is taken (`DeviceExistsError` names the first)."""

    async def save(self, device: DeviceRecord) -> None:
        """Insert or replace every field of the device (raises `DeviceExistsError` for a taken name)."""

    async def update_states(self, devices: list[DeviceRecord]) -> None:
        """Write only what a connection learns (online, last heard and address, Hello and Describe fields),
        never the name, owner or key, so that a queued session update cannot undo a rename, a claim or a key
        change made meanwhile. Unregistered devices are skipped."""

    async def remove(self, device_id: str) -> bool:
        """Remove the device and what is kept about it (its pending keys, policy, re-key window, group
        memberships, claim codes and vitals); True if it existed."""

    async def mark_all_offline(self) -> None:
        """At start-up: no device is connected to a process that just started."""

    async def search(self, query: DeviceQuery) -> DevicePage:
        """The devices that match `query`, sorted as it says (ties by id), from its offset: filtered, sorted and
        paged by the database (docs/console.md). `total` counts every match."""


class KeyRepository(Protocol):
    """What decides which key a device may connect with: policies, re-key windows, pending keys; and the
    claim codes that let their holders take ownerless devices."""

    async def get_policy(self, scope: str) -> KeyPolicy | None:
        """The policy of a device id, or of the fleet for scope "*"; None when none was set."""

    async def set_policy(self, policy: KeyPolicy) -> None: ...

    async def remove_policy(self, scope: str) -> bool: ...

    async def list_policies(self) -> list[KeyPolicy]:
        """Ordered by scope."""

    async def get_rekey(self, device_id: str) -> RekeyWindow | None: ...

    async def save_rekey(self, window: RekeyWindow) -> None:
        """Arm, re-arm or update the device's window."""

    async def remove_rekey(self, device_id: str) -> bool: ...

    async def list_rekeys(self) -> list[RekeyWindow]:
        """Ordered by the end of the window."""

    async def save_pending_key(self, pending: PendingKey) -> None:
        """Insert or replace the device's pending key with this fingerprint."""

    async def list_pending_keys(self, device_id: str | None = None) -> list[PendingKey]:
        """One device's, or every device's; oldest first."""

    async def remove_pending_key(self, device_id: str, fingerprint: str | None = None) -> int:
        """The pending key with this fingerprint, or every pending key of the device; how many."""

    async def add_claim_code(self, code: ClaimCode) -> None: ...

    async def take_claim_code(self, code_hash: str) -> ClaimCode | None:
        """Remove the code and return it (used once), or None when there is none by that hash."""

    async def remove_expired_claim_codes(self, now: datetime) -> int: ...


class AccountRepository(Protocol):
    """Users and their access tokens. Usernames are compared without regard to case."""

    async def add_user(self, user: User) -> None:
        """Raises `UserExistsError` for a taken username."""

    async def get_user(self, username: str) -> User | None: ...

    async def save_user(self, user: User) -> bool:
        """Write the user's password hash and role; False when there is no such user."""

    async def list_users(self) -> list[User]:
        """Ordered by username."""

    async def remove_user(self, username: str) -> bool:
        """Remove the user and all their tokens (access and refresh) and integrations, and release their devices
        (owner becomes None)."""

    async def add_token(self, token: AccessToken) -> None: ...

    async def get_token(self, token_hash: str) -> AccessToken | None: ...

    async def list_tokens(self, username: str) -> list[AccessToken]:
        """Newest first."""

    async def remove_token(self, token_hash: str) -> bool:
        """True if it existed."""

    async def remove_expired_tokens(self, now: datetime) -> int:
        """Delete access and refresh tokens (spent ones too) whose `expires_at` is at or before `now`; how
        many."""

    async def add_refresh_token(self, token: RefreshToken) -> None: ...

    async def take_refresh_token(self, token_hash: str, now: datetime) -> RefreshToken | None:
        """Mark the refresh token spent at `now` and return it as it was, expired or not: with `spent_at` None
        when this call spent it, with the time it was spent when it had been before (a reuse). None when there
        is none by that hash. Of two callers taking the same one at once, only one finds it unspent."""

    async def remove_token_family(self, family: str) -> int:
        """Delete the family's refresh tokens, spent or not, and the access tokens issued with them; how many."""

    async def remove_expired_refresh_tokens(self, now: datetime) -> int:
        """Delete refresh tokens, spent or not, whose `expires_at` is at or before `now`; how many."""

    async def remove_refresh_tokens(self, username: str) -> int:
        """Delete the account's refresh tokens; how many."""


class AttemptRepository(Protocol):
    """Every connection attempt on the device port and how far it got: the evidence diagnostics read."""

    async def add(self, attempts: list[ConnectionAttempt]) -> None:
        """Store the attempts (in one transaction)."""

    async def recent(
        self,
        device_id: str | None = None,
        *,
        since: datetime | None = None,
        peer_address: str | None = None,
        limit: int = 100,
    ) -> list[ConnectionAttempt]:
        """Newest first. `device_id` None means all attempts, identified or not."""

    async def prune(self, *, before: datetime, keep: int) -> int:
        """Delete the attempts that started before `before`, then the oldest beyond the newest `keep`; how
        many were deleted."""

    async def latest(self, device_ids: list[str], *, since: datetime | None = None) -> dict[str, ConnectionAttempt]:
        """The newest attempt (by start, then id) of each of these devices that has one since `since`."""


class UpdateRepository(Protocol):
    """Firmware metadata, update jobs and device groups (protocol.md §7). The binaries themselves are
    files, kept by `cyan.store.FirmwareFiles`."""

    async def save_firmware(self, firmware: FirmwareRecord) -> None:
        """Insert the record unless one with the same SHA-256 exists (the same bytes, the same record)."""

    async def get_firmware(self, sha256: str) -> FirmwareRecord | None: ...

    async def add_job(self, job: UpdateJob) -> int:
        """Store a new job and return its id (also set on `job`)."""

    async def save_job(self, job: UpdateJob) -> None:
        """Write every field of an existing job."""

    async def get_job(self, job_id: int) -> UpdateJob | None: ...

    async def list_jobs(
        self,
        *,
        device_id: str | None = None,
        rollout: str | None = None,
        unfinished: bool = False,
        limit: int = 100,
    ) -> list[UpdateJob]:
        """Newest first; `unfinished` keeps the queued, sending and waiting ones."""

    async def add_to_group(self, group: str, device_ids: list[str]) -> int:
        """Add devices to a group (created on first use); how many were not in it yet."""

    async def remove_from_group(self, group: str, device_ids: list[str]) -> int:
        """How many were removed."""

    async def list_group(self, group: str) -> list[str]:
        """The group's device ids, sorted."""

    async def list_groups(self) -> dict[str, int]:
        """Group names and their sizes."""


class AuditRepository(Protocol):
    """Who changed what, when: written in the transaction of the change."""

    async def add(self, entry: AuditEntry) -> int:
        """Store the entry; its id (also set on `entry`)."""

    async def recent(
        self, device_id: str | None = None, *, subject: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Newest first: all entries, one device's, or those about one subject (a username)."""


class IntegrationRepository(Protocol):
    """Webhooks (their configuration, as their owners gave it) and the record of their recent deliveries."""

    async def add(self, integration: Integration) -> None: ...

    async def get(self, integration_id: str) -> Integration | None: ...

    async def all(self, owner: str | None = None) -> list[Integration]:
        """Every integration, or one owner's, oldest first."""

    async def save(self, integration: Integration) -> bool:
        """Write every field of an existing integration; False when there is none by its id."""

    async def remove(self, integration_id: str) -> bool:
        """Remove it and its deliveries; True if it existed."""

    async def add_deliveries(self, deliveries: list[HookDelivery], *, keep: int) -> None:
        """Record the deliveries (those of integrations that no longer exist are dropped), then keep only
        the newest `keep` of each integration concerned."""

    async def deliveries(self, integration_id: str, *, limit: int = 100) -> list[HookDelivery]:
        """Newest first."""


class VitalsRepository(Protocol):
    """Device vitals: what devices reported of themselves and what the server measured, over time."""

    async def add(self, record: VitalsRecord, *, keep: int) -> int:
        """Store the record and return its id; keep only the device's newest `keep`."""

    async def history(
        self,
        device_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[VitalsRecord]:
        """The newest `limit` records within [since, until], oldest first."""

    async def last(self, device_id: str) -> VitalsRecord | None: ...

    async def prune(self, *, before: datetime) -> int:
        """Delete the records from before `before`; how many."""


class UdpSessionRepository(Protocol):
    """The UDP devices' DTLS sessions, by connection id, so that a restarted server resumes them."""

    async def save(self, session: UdpSession) -> None:
        """Add it, or replace the one with its connection id; a `sequence_limit` never goes down (a save with
        a lower one, or none, keeps the stored one)."""

    async def get(self, connection_id: bytes) -> UdpSession | None: ...

    async def of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        """The device's sessions, the last saved first, at most `limit`: a device without connection ids
        (Device OS ≤ 2.x) names itself, not its session, when it resumes one (udp-dtls.md §1.4)."""

    async def reserve(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        """Reserve the next `count` write sequence numbers, in one atomic step against every node: the limit
        becomes max(limit, floor) + count and is returned (the block is the `count` numbers below it); None
        when there is no such session."""

    async def all(self) -> list[UdpSession]:
        """Every session, oldest save first."""

    async def remove(self, connection_id: bytes) -> bool: ...

    async def prune(self, *, before: datetime) -> int:
        """Delete the sessions not saved since `before`; how many."""


class Repositories(Protocol):
    """Every repository, over one connection: a transaction, or the store's own per-call access."""

    @property
    def devices(self) -> DeviceRepository: ...

    @property
    def keys(self) -> KeyRepository: ...

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def attempts(self) -> AttemptRepository: ...

    @property
    def updates(self) -> UpdateRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def integrations(self) -> IntegrationRepository: ...

    @property
    def vitals(self) -> VitalsRepository: ...

    @property
    def udp_sessions(self) -> UdpSessionRepository: ...


class Store(Repositories, Protocol):
    """The database. Its repositories commit each call by itself; `transaction()` groups calls.

    A transaction is serializable with respect to the other transactions of every process on the same
    database: what it reads stays true until it commits. It commits when its block ends and rolls back when
    the block raises.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Repositories]: ...


# -- the bus --------------------------------------------------------------------------------------------


EventFilter = Callable[[CloudEvent], bool]
#: Handles a request routed to this node: a typed message in, a typed reply out (`cyan.cloud.routing`).
RequestHandler = Callable[[Any], Awaitable[Any]]


class BusSubscription(Protocol):
    """One subscriber's view of the events. `dropped` counts events lost to a slow reader."""

    prefix: str
    dropped: int
    #: Times the events of other nodes could not reach this node (its bus lost the broker) while it was open.
    interruptions: int
    closed: bool

    async def get(self) -> CloudEvent | None:
        """The next event, or None once the subscription is closed."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Presence:
    """Which node holds a device's session, and which session (a newer one replaces an older)."""

    node_id: str
    session_id: str
    since: datetime


class Bus(Protocol):
    """Events, presence and requests between the nodes of a cloud (one node in the embedded default).

    Events reach every subscriber and listener on every node, in the order they were published by one
    node. A subscriber that does not keep up loses its oldest events (and is told how many), and never
    slows a publisher down.
    """

    node_id: str

    async def start(self) -> None:
        """Join the cluster: return once this node holds its place among the nodes, receives the others' events
        and answers their requests. `BusUnavailableError` (naming the broker) if the broker does not answer."""

    def publish(self, event: CloudEvent) -> None:
        """Send the event to every node; never blocks."""

    def subscribe(
        self, prefix: str = "", accept: EventFilter | None = None, *, capacity: int | None = None
    ) -> BusSubscription:
        """Events whose name starts with `prefix` and that `accept` takes."""

    def add_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """A synchronous callback for every event (the fan-out to devices); it must not block."""

    def close_all(self) -> None:
        """End every subscription of this node (shutdown): their readers get None."""

    async def claim(self, device_id: str, session_id: str) -> Presence | None:
        """This node now holds the device's session; returns the presence it replaced, if any."""

    async def release(self, device_id: str, session_id: str) -> None:
        """The session ended: forget it, unless a newer session of the device has replaced it."""

    async def holder(self, device_id: str) -> Presence | None: ...

    def serve(self, handler: RequestHandler) -> None:
        """Answer the requests other nodes route to this one."""

    async def request(self, node_id: str, message: Any, timeout: float) -> Any:
        """Send `message` to the handler of `node_id` and return its reply; the handler's exception
        (a `CloudError`) is raised here. `NodeUnreachableError` when the node does not answer in time."""

    async def close(self) -> None:
        """Leave the cluster: this node's presences go, its subscriptions end."""


# -- live sessions ----------------------------------------------------------------------------------


class Sessions(Protocol):
    """What the use cases need of the devices' live sessions, wherever they are held (`cyan.cloud.service.Cloud`
    in a server; the stored state when the command line works on the data alone)."""

    async def connected(self, device_id: str) -> bool:
        """The device has a session started with its registered key right now."""

    def quarantined(self, device_id: str) -> bool:
        """A client holds a quarantined session in the device's name (and the device has no proven one)."""

    def live(self, device_id: str) -> DeviceRecord | None:
        """The device's record as its session on this node keeps it (what it reported since connecting), or
        None when it has no session here."""

    def shown_online(self, record: DeviceRecord) -> bool:
        """Whether a device's view shows it connected: its session is here, or, one of several nodes, the state
        stored by the node that holds it says so."""

    async def owner_changed(self, device_id: str, owner: str | None) -> None:
        """A claim or a release: the session and the routing of events follow the new owner."""

    async def key_approved(self, device_id: str, fingerprint: str) -> None:
        """A quarantined session with this key gets its access."""

    async def key_rejected(self, device_id: str, fingerprint: str) -> None:
        """A quarantined session with this key is closed."""

    async def close_sessions(self, device_id: str, *, keep_key: str | None = None) -> None:
        """Close the device's sessions (its key changed under them, or it was removed), except those started
        with the key `keep_key` names: the device reconnects with the key it must now present."""
