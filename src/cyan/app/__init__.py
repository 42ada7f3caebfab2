"""The use cases: the only code that changes devices, keys, owners, policies and accounts.

Each use case checks who may do it, makes the change and writes its audit entry in one transaction
(`cyan.cloud.ports.Store.transaction`), and returns a typed result or raises a typed error
(`cyan.cloud.errors`). The API and the command line parse, call one of these, and render; the device
server reaches them through `DeviceGateway`. docs/architecture.md lists them; docs/keys.md states the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from cyan.cloud.alerts import AlertSink, LoggingAlerts
from cyan.cloud.models import DeviceRecord
from cyan.cloud.ota import UpdateManager
from cyan.cloud.ports import Sessions, Store
from cyan.cloud.service import Cloud
from cyan.cloud.vitals import VitalsCollector
from cyan.cloud.webhooks import WebhookDispatcher

from ._context import AppContext, _utc_now
from .accounts import AccountUseCases, InvalidCredentialsError, InvalidRefreshTokenError, IssuedToken, LoginLimits
from .actors import Actor, ActorKind
from .calls import DeviceCalls
from .devices import ClaimCodeIssued, DeviceUseCases, DeviceView, NewDevice
from .diagnostics import Diagnostics
from .fleet import DeviceRow, FleetPage, FleetSummary, FleetUseCases
from .handshake import DeviceGateway, Handshakes
from .integrations import IntegrationUseCases, IntegrationView
from .keys import KeyStatus, KeyUseCases, Provisioned, UnprovenSummary
from .server_key import UDP_SERVER_KEY, ServerKeyChangedError, ServerKeyMissingError, ServerKeyUseCases
from .updates import UpdateUseCases
from .vitals import VitalsUseCases

__all__ = [
    "UDP_SERVER_KEY",
    "AccountUseCases",
    "Actor",
    "ActorKind",
    "Application",
    "ClaimCodeIssued",
    "DeviceCalls",
    "DeviceGateway",
    "DeviceRow",
    "DeviceUseCases",
    "DeviceView",
    "Diagnostics",
    "FleetPage",
    "FleetSummary",
    "FleetUseCases",
    "Handshakes",
    "IntegrationUseCases",
    "IntegrationView",
    "InvalidCredentialsError",
    "InvalidRefreshTokenError",
    "IssuedToken",
    "KeyStatus",
    "KeyUseCases",
    "LoginLimits",
    "NewDevice",
    "Provisioned",
    "ServerKeyChangedError",
    "ServerKeyMissingError",
    "ServerKeyUseCases",
    "StoredSessions",
    "UnprovenSummary",
    "UpdateUseCases",
    "VitalsUseCases",
]


class StoredSessions:
    """`Sessions` where no device is served (the command line working on the data): what the server last
    wrote of each device stands for its session; nothing live can be changed from here, and a server running
    beside applies a change at the device's next connection."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def connected(self, device_id: str) -> bool:
        record = await self._store.devices.get(device_id)
        return record is not None and record.online

    def quarantined(self, device_id: str) -> bool:
        return False

    def live(self, device_id: str) -> DeviceRecord | None:
        return None

    def shown_online(self, record: DeviceRecord) -> bool:
        return False

    async def owner_changed(self, device_id: str, owner: str | None) -> None:
        return None

    async def key_approved(self, device_id: str, fingerprint: str) -> None:
        return None

    async def key_rejected(self, device_id: str, fingerprint: str) -> None:
        return None

    async def close_sessions(self, device_id: str, *, keep_key: str | None = None) -> None:
        return None


class Application:
    """Every use case over one store. With a `Cloud` (a server), also the device-facing ones: calls,
    updates, and the gateway the device server talks to; with a `WebhookDispatcher` and a `VitalsCollector`,
    webhooks are delivered and devices asked for their vitals."""

    def __init__(
        self,
        store: Store,
        *,
        cloud: Cloud | None = None,
        updates: UpdateManager | None = None,
        alerts: AlertSink | None = None,
        clock: Callable[[], datetime] = _utc_now,
        login_limits: LoginLimits | None = None,
        hooks: WebhookDispatcher | None = None,
        vitals: VitalsCollector | None = None,
    ) -> None:
        sessions: Sessions = cloud if cloud is not None else StoredSessions(store)
        alerts = alerts or (cloud.alerts if cloud is not None else LoggingAlerts())
        self.context = AppContext(store, sessions, alerts, clock)
        self.store = store
        self.devices = DeviceUseCases(self.context)
        self.keys = KeyUseCases(self.context)
        self.accounts = AccountUseCases(self.context, login_limits)
        self.diagnostics = Diagnostics(self.context)
        self.server_key = ServerKeyUseCases(self.context)
        self.cloud = cloud
        self.calls = DeviceCalls(self.context, cloud) if cloud is not None else None
        self.gateway = DeviceGateway(self.context, cloud) if cloud is not None else None
        self.updates = UpdateUseCases(self.context, updates) if updates is not None else None
        self.fleet = FleetUseCases(self.context, settle=cloud.flush if cloud is not None else None)
        self.integrations = IntegrationUseCases(self.context, hooks)
        self.vitals = VitalsUseCases(self.context, vitals)
