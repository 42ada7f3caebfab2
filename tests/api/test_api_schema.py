"""The API against its own OpenAPI document (schemathesis): requests the document allows, and ones it does not,
to every route, as a user with devices of their own (one connected, one not) next to another account's device.
Every answer must be documented: no 5xx, a documented status, content type, headers and body.

Each route also gets requests that must succeed (`_good`), so that every documented 200 is checked against a
real answer, not only the errors random input gets. Event streams never end: instead of being fuzzed, each is
read up to its first event, and its errors are checked (`test_event_streams`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import events

from cyan.api import ApiContext, create_app
from cyan.app import Actor, Application, NewDevice
from cyan.cloud.models import CloudEvent, PendingKey, Role
from cyan.keys import encode_public_key_pem, fingerprint, public_key_der
from cyan.protocol.binary import build_module
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key
from serve_support import loopback_service

T = TypeVar("T")

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
PASSWORD = "a good password"
OPS = Actor.operator()
USERS = [(ALICE, Role.USER), (BOB, Role.USER), (ADMIN, Role.ADMIN)]
#: id, owner, name, key, connected
DEVICES: list[tuple[str, str | None, str, int, bool]] = [
    (f"{1:024x}", ALICE, "kitchen", 1, True),
    (f"{2:024x}", ALICE, "garage", 2, False),
    (f"{3:024x}", BOB, "shed", 3, True),
    (f"{4:024x}", None, "spare", 4, False),
]
KITCHEN, GARAGE, SHED, SPARE = (device[0] for device in DEVICES)
#: The examples schemathesis generates for each route in its fuzzing phase (its coverage phase adds its own).
EXAMPLES = 5

#: The document the running service serves, as the app writes it: which routes there are is known before any
#: service starts, so that each is a test of its own.
DOCUMENT = create_app(ApiContext(Application(MemoryStore()))).openapi()
OPERATIONS = sorted((method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item)
STREAMS = [
    (method, path)
    for method, path in OPERATIONS
    if "text/event-stream" in DOCUMENT["paths"][path][method.lower()]["responses"]["200"]["content"]
]
FUZZED = [operation for operation in OPERATIONS if operation not in STREAMS]


class Live:
    """A loopback service on an event loop of its own in a thread, for synchronous clients (schemathesis sends
    with requests). Whatever a request changed of the accounts and devices the tests rely on is put back before
    the next one is sent (`token`)."""

    def __init__(self, data: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-service", daemon=True)
        self.thread.start()
        self.tokens: dict[str, str] = {}
        self.devices: list[VirtualDevice] = []
        # Wrong passwords are part of the fuzzing (PUT and DELETE /v1/user): no limit may refuse later logins.
        self.service = loopback_service(data, login_failures_per_account=10**9, login_failures_per_address=10**9)
        self.job = 0
        self.firmware = ""
        self.integration = ""
        self.pending: list[str] = []
        self._changed = False
        self.run(self._start())

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.api_port}"

    async def _start(self) -> None:
        service = self.service
        await service.start()
        for user, role in USERS:
            await service.app.accounts.create_user(OPS, user, PASSWORD, role=role)
        await service.app.devices.register(
            OPS,
            [
                NewDevice(device_id, public_key_der(fixed_device_key(key).public_key()), name=name, owner=owner)
                for device_id, owner, name, key, _connected in DEVICES
            ],
        )
        for device_id, _owner, _name, key, connected in DEVICES:
            if connected:
                device = VirtualDevice(
                    VirtualDeviceSpec(device_id, fixed_device_key(key)),
                    service.keys.private_key.public_key(),
                    config=SimConfig(backoff_scale=0.05),
                )
                device.start("127.0.0.1", service.device_server.port)
                self.devices.append(device)
        for device in self.devices:
            await asyncio.wait_for(device.connected.wait(), 20)
        # An update job of Alice's offline device: queued until it connects, so the job routes have one to show.
        alice = Actor.account(ALICE, Role.USER)
        updates = service.app.updates
        assert updates is not None
        image = build_module(hashlib.sha256(b"image").digest() * 200, platform_id=6)
        firmware = await updates.upload(alice, image, "app.bin")
        (job,) = await updates.flash(alice, await updates.targets(alice, devices=[GARAGE]), firmware)
        assert job.id is not None
        self.job, self.firmware = job.id, firmware.sha256
        # Two keys the garage presented that are not its own, for its owner to approve or reject.
        record = await service.store.devices.get(GARAGE)
        assert record is not None
        now = datetime.now(UTC)
        for key in (5, 6):
            der = public_key_der(fixed_device_key(key).public_key())
            pending = PendingKey(GARAGE, der, fingerprint(der), record.key_fingerprint, now, now, 2, "127.0.0.1:4000")
            await service.store.keys.save_pending_key(pending)
            self.pending.append(pending.fingerprint)
        # A webhook of Alice's (its receiver an address hooks may not reach: a test of it answers at once), and
        # her kitchen's vitals, asked for once, so that the routes that show them have something to show.
        self.integration = await self._new_integration()
        await service.app.vitals.refresh(alice, KITCHEN)
        await self._restore()

    async def _new_integration(self) -> str:
        alice = Actor.account(ALICE, Role.USER)
        hook = await self.service.app.integrations.create(alice, {"event": "temp", "url": "http://192.0.2.1/hook"})
        return hook.id

    def fresh_integration(self) -> str:
        """A webhook of Alice's that nothing else uses: one to delete."""
        return self.run(self._new_integration())

    def fresh_rollout(self) -> tuple[int, str]:
        """A rollout of Alice's offline garage (its job queued), to hold and let go: (job id, rollout id)."""

        async def flash() -> tuple[int, str]:
            alice = Actor.account(ALICE, Role.USER)
            updates = self.service.app.updates
            assert updates is not None
            firmware = await updates.firmware(alice, self.firmware)
            targets = await updates.targets(alice, devices=[GARAGE])
            (job,) = await updates.flash(alice, targets, firmware, concurrency=1)
            assert job.id is not None
            assert job.rollout is not None
            return job.id, job.rollout

        return self.run(flash())

    def fresh_refresh_token(self) -> str:
        """A refresh token of Bob's that nothing else uses: one to spend."""
        issued = self.run(self.service.app.accounts.login(BOB, PASSWORD, "CLI2", 60))
        assert issued.refresh_token is not None
        return issued.refresh_token

    def spare_token_hash(self, user: str) -> str:
        """The hash of a new token of `user`'s that nothing else uses: one to revoke."""
        issued = self.run(self.service.app.accounts.create_token(OPS, user, None))
        return issued.record.token_hash

    def stop(self) -> None:
        async def stop() -> None:
            for device in self.devices:
                await device.stop()
            await self.service.stop()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @contextmanager
    def kitchen_publishing(self) -> Iterator[None]:
        """Alice's kitchen publishes an event every 50 ms meanwhile: a stream of hers that starts gets one."""

        async def publish() -> None:
            while True:
                event = CloudEvent("temp/kitchen", "21.5", 60, datetime.now(UTC), KITCHEN, ALICE)
                self.service.cloud.bus.publish(event)
                await asyncio.sleep(0.05)

        publishing = asyncio.run_coroutine_threadsafe(publish(), self.loop)
        try:
            yield
        finally:
            publishing.cancel()

    def token(self, user: str = ALICE, method: str = "POST") -> str:
        """A valid token of `user` for a request with `method`, once the accounts and devices the tests rely on
        are as they were: they are put back after any request that may have changed them (any but a GET)."""
        if self._changed:
            self.run(self._restore())
        self._changed = method != "GET"
        return self.tokens[user]

    async def _restore(self) -> None:
        app = self.service.app
        present = {user.username for user in await app.accounts.users(OPS)}
        for user, role in USERS:
            if user not in present:
                await app.accounts.create_user(OPS, user, PASSWORD, role=role)
        records = {record.id: record for record in await self.service.store.devices.all()}
        renamed = [(device_id, name) for device_id, _owner, name, *_ in DEVICES if records[device_id].name != name]
        # Through names no device has, as one may have taken another's name meanwhile.
        for device_id, _name in renamed:
            await app.devices.rename(OPS, device_id, f"restoring-{device_id}")
        for device_id, name in renamed:
            await app.devices.rename(OPS, device_id, name)
        for device_id, owner, *_ in DEVICES:
            if records[device_id].owner != owner:
                if records[device_id].owner is not None:
                    await app.devices.release(OPS, device_id)
                if owner is not None:
                    await app.devices.claim(OPS, device_id, owner=owner)
        for user, _role in USERS:
            token = self.tokens.get(user)
            if token is None or await app.accounts.resolve(token) is None:
                self.tokens[user] = (await app.accounts.create_token(OPS, user, None)).token
        # Alice's webhook goes with her account when a request removed it.
        if self.integration and not any(
            hook.id == self.integration for hook in await app.integrations.mine(Actor.account(ALICE, Role.USER))
        ):
            self.integration = await self._new_integration()

    def settle(self) -> None:
        """Put back what the last request may have changed, before a test reads the fixtures' ids."""
        if self._changed:
            self.run(self._restore())
            self._changed = False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    live = Live(tmp_path_factory.mktemp("api-schema") / "data")
    try:
        yield live
    finally:
        live.stop()


#: What every answer is checked for. Not the checks of what a request should be answered (a schema-valid body
#: accepted, an invalid one refused): bodies are read as Particle reads them, more leniently than their schemas,
#: and the use cases refuse what breaks their rules (a name in use, a window too long) with a documented 400.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
]


@pytest.fixture(scope="module")
def api_schema(live: Live) -> schemathesis.BaseSchema:
    """The document the service serves, with the values path parameters mostly take: the tests' own devices,
    users and job (random ones would only ever find nothing). Each request is sent as Alice, with a token that
    is valid once the tests' accounts and devices are put back as they were."""
    config = schemathesis.Config.from_dict(
        {
            "seed": 15,
            "generation": {"deterministic": True, "max-examples": EXAMPLES},
            # No stateful phase: the document has no links between operations. Two methods no route takes are
            # enough to see every route's 405.
            "phases": {"stateful": {"enabled": False}, "coverage": {"unexpected-methods": ["patch", "trace"]}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "request-timeout": 20,
            # An event stream is read up to its first event.
            "max-stream-events": 1,
            "parameters": {
                "path.device": {"dictionary": "devices", "probability": 0.9},
                "path.device_id": {"dictionary": "devices", "probability": 0.9},
                "path.function": {"dictionary": "functions", "probability": 0.8},
                "path.variable": {"dictionary": "variables", "probability": 0.8},
                "path.product": {"dictionary": "products", "probability": 0.8},
                "path.username": {"dictionary": "users", "probability": 0.8},
                "path.job_id": {"dictionary": "jobs", "probability": 0.8},
            },
            "dictionaries": {
                "devices": {"values": [KITCHEN, GARAGE, SHED, "kitchen", "shed"]},
                "functions": {"values": ["setArg"]},
                "variables": {"values": ["counter", "lastArg", "temp"]},
                "products": {"values": ["6", "0"]},
                "users": {"values": [ALICE, BOB, ADMIN]},
                "jobs": {"values": [live.job]},
            },
        }
    )
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)

    # No caching and no retry on a 401: each request gets a token that is valid when it is sent, and a 401 is
    # an answer to check like any other.
    @schema.auth(refresh_interval=None, retry_on=[])
    class AsAlice:
        def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
            return live.token(method=case.method.upper())

        def set(self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext) -> None:
            case.headers["Authorization"] = f"Bearer {data}"

    return schema


def _failures(schema: schemathesis.BaseSchema) -> list[str]:
    """What a schemathesis run of `schema` finds, as it reports each failure, with a curl command to replay it."""
    found = []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    info = check.failure_info
                    if check.status is engine.Status.FAILURE and info is not None:
                        failure = info.failure
                        found.append(f"{failure.title} ({event.phase}): {failure.message}\n{info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: {event.info}")
        elif isinstance(event, events.FatalError):
            found.append(repr(event.exception))
    return found


@dataclass(frozen=True)
class Good:
    """A request that must succeed, as `user`."""

    path_parameters: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    media_type: str = "application/json"
    user: str = ALICE


#: Routes whose good requests need an update of their own, made when their test runs (another test's update of
#: the same device replaces a queued one).
_HOLDS = {("POST", "/v1/updates/{job_id}/{action}"), ("POST", "/v1/rollouts/{rollout}/{action}")}


def _good(live: Live, operation: tuple[str, str]) -> dict[tuple[str, str], list[Good]]:
    pem = encode_public_key_pem(fixed_device_key(1).public_key()).decode()
    form = "application/x-www-form-urlencoded"
    device = {"device": KITCHEN}
    product = {"product": "6", "device": KITCHEN}
    image = build_module(hashlib.sha256(b"other image").digest() * 200, platform_id=6)
    job, rollout = live.fresh_rollout() if operation in _HOLDS else (0, "")
    doomed = live.fresh_integration() if operation[0] == "DELETE" and "integration_id" in operation[1] else ""
    hook = {"integration_id": live.integration}
    refresh_token = live.fresh_refresh_token() if operation == ("POST", "/oauth/token") else ""
    return {
        ("POST", "/oauth/token"): [
            Good(body={"grant_type": "password", "username": ALICE, "password": PASSWORD}, media_type=form),
            Good(body={"grant_type": "password", "username": BOB, "password": PASSWORD, "expires_in": 0}),
            Good(body={"grant_type": "refresh_token", "refresh_token": refresh_token}, media_type=form),
        ],
        ("GET", "/v1/user"): [Good()],
        ("PUT", "/v1/user"): [Good(body={"password": PASSWORD, "current_password": PASSWORD})],
        ("DELETE", "/v1/user"): [Good(body={"password": PASSWORD}, user=BOB)],
        ("DELETE", "/v1/access_tokens/current"): [Good()],
        ("DELETE", "/v1/access_tokens/{token}"): [Good(path_parameters={"token": live.tokens[BOB]})],
        ("GET", "/v1/users"): [Good(user=ADMIN)],
        ("POST", "/v1/users"): [Good(body={"username": "carol@example.com", "password": PASSWORD}, user=ADMIN)],
        ("PUT", "/v1/users/{username}"): [Good({"username": BOB}, body={"role": "user"}, user=ADMIN)],
        ("DELETE", "/v1/users/{username}"): [Good({"username": BOB}, user=BOB)],
        ("GET", "/v1/devices"): [Good(), Good(query={"all": True}, user=ADMIN)],
        ("POST", "/v1/devices"): [Good(body={"id": SPARE, "owner": BOB}, media_type=form, user=ADMIN)],
        ("GET", "/v1/products/{product}/devices"): [Good({"product": "6"})],
        ("GET", "/v1/devices/{device}"): [Good(device), Good({"device": "garage"})],
        ("GET", "/v1/products/{product}/devices/{device}"): [Good(product)],
        ("PUT", "/v1/devices/{device}"): [
            Good(device, body={"signal": "1"}, media_type=form),
            Good({"device": GARAGE}, body={"name": "garage"}),
            Good({"device": GARAGE}, body={"notes": "in the garage, left of the door"}),
            Good({"device": GARAGE}, body={"file": image, "queue": "true"}, media_type="multipart/form-data"),
        ],
        ("PUT", "/v1/products/{product}/devices/{device}"): [Good(product, body={"signal": "0"})],
        ("DELETE", "/v1/devices/{device}"): [Good({"device": GARAGE})],
        ("DELETE", "/v1/products/{product}/devices/{device}"): [Good(product)],
        ("POST", "/v1/device_claims"): [Good(body={})],
        ("POST", "/v1/devices/{device}/{function}"): [Good({**device, "function": "setArg"}, body={"arg": "x"})],
        ("POST", "/v1/products/{product}/devices/{device}/{function}"): [
            Good({**product, "function": "setArg"}, body={"args": "y"})
        ],
        ("GET", "/v1/devices/{device}/{variable}"): [
            Good({**device, "variable": name}) for name in ("counter", "lastArg", "temp")
        ],
        ("GET", "/v1/products/{product}/devices/{device}/{variable}"): [Good({**product, "variable": "temp"})],
        ("POST", "/v1/provisioning/{device_id}"): [Good({"device_id": KITCHEN}, body={"publicKey": pem})],
        ("GET", "/v1/devices/{device}/attempts"): [Good(device, query={"limit": 5})],
        ("GET", "/v1/devices/{device}/doctor"): [Good(device), Good({"device": GARAGE})],
        ("GET", "/v1/diagnostics/unidentified"): [Good(user=ADMIN)],
        ("POST", "/v1/devices/events"): [Good(body={"name": "temp", "data": "21", "private": False})],
        ("POST", "/v1/products/{product}/events"): [Good({"product": "6"}, body={"name": "temp"})],
        ("GET", "/v1/devices/{device}/keys"): [Good(device)],
        ("POST", "/v1/devices/{device}/keys/approve"): [
            Good({"device": GARAGE}, body={"fingerprint": live.pending[0]})
        ],
        ("POST", "/v1/devices/{device}/keys/reject"): [Good({"device": GARAGE}, body={"fingerprint": live.pending[1]})],
        ("POST", "/v1/devices/{device}/keys/rekey"): [Good({"device": GARAGE}, body={"seconds": 60})],
        ("DELETE", "/v1/devices/{device}/keys/rekey"): [Good({"device": GARAGE})],
        ("PUT", "/v1/devices/{device}/keys/policy"): [Good({"device": GARAGE}, body={"mode": "quarantine"})],
        ("DELETE", "/v1/devices/{device}/keys/policy"): [Good({"device": GARAGE})],
        ("GET", "/v1/keys/policy"): [Good()],
        ("PUT", "/v1/keys/policy"): [Good(body={"mode": "strict"}, user=ADMIN)],
        ("GET", "/v1/keys/pending"): [Good(), Good(user=ADMIN)],
        ("GET", "/v1/audit"): [Good(query={"device": KITCHEN}), Good(query={"limit": 3}, user=ADMIN)],
        ("POST", "/v1/firmware"): [Good(body={"file": image}, media_type="multipart/form-data")],
        ("POST", "/v1/updates"): [Good(body={"firmware": live.firmware, "devices": [GARAGE]})],
        ("GET", "/v1/updates"): [Good(), Good(query={"limit": 1})],
        ("GET", "/v1/updates/{job_id}"): [Good({"job_id": live.job})],
        ("GET", "/v1/devices/{device}/updates"): [Good({"device": GARAGE})],
        ("GET", "/v1/fleet"): [Good(), Good(user=ADMIN)],
        ("GET", "/v1/fleet/devices"): [
            Good(),
            Good(query={"status": "online", "sort": "last_heard", "order": "desc", "limit": 2}, user=ADMIN),
        ],
        ("GET", "/v1/fleet/groups"): [Good()],
        ("POST", "/v1/updates/{job_id}/{action}"): [
            Good({"job_id": job, "action": action}) for action in ("pause", "resume")
        ],
        ("POST", "/v1/rollouts/{rollout}/{action}"): [
            Good({"rollout": rollout, "action": action}) for action in ("pause", "resume", "cancel")
        ],
        ("GET", "/v1/access_tokens"): [Good(), Good(query={"username": BOB}, user=ADMIN)],
        ("POST", "/v1/users/{username}/tokens"): [Good({"username": BOB}, body={"expires_in": 60}, user=ADMIN)],
        ("DELETE", "/v1/users/{username}/tokens/{token_hash}"): [
            Good({"username": BOB, "token_hash": live.spare_token_hash(BOB)}, user=ADMIN)
        ],
        ("GET", "/v1/keys/rekey"): [Good(), Good(user=ADMIN)],
        ("GET", "/v1/server/key"): [Good()],
        ("GET", "/v1/server/key/file"): [Good()],
        ("GET", "/v1/integrations"): [Good()],
        ("GET", "/v1/webhooks"): [Good()],
        ("POST", "/v1/integrations"): [Good(body={"event": "temp", "url": "http://192.0.2.1/new"})],
        ("POST", "/v1/webhooks"): [Good(body={"event": "temp", "url": "http://192.0.2.1/cli"}, media_type=form)],
        ("GET", "/v1/integrations/{integration_id}"): [Good(hook)],
        ("GET", "/v1/webhooks/{integration_id}"): [Good(hook)],
        ("PUT", "/v1/integrations/{integration_id}"): [
            Good(hook, body={"event": "temp", "url": "http://192.0.2.1/hook", "requestType": "PUT"})
        ],
        ("DELETE", "/v1/integrations/{integration_id}"): [Good({"integration_id": doomed})],
        ("DELETE", "/v1/webhooks/{integration_id}"): [Good({"integration_id": doomed})],
        ("POST", "/v1/integrations/{integration_id}/test"): [Good(hook, body={"data": "21.5"})],
        ("GET", "/v1/diagnostics/{device}"): [Good(device)],
        ("GET", "/v1/diagnostics/{device}/last"): [Good(device)],
        ("POST", "/v1/diagnostics/{device}/update"): [Good(device)],
    }


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{method} {path}" for method, path in FUZZED])
def test_every_answer_is_documented(api_schema: schemathesis.BaseSchema, live: Live, method: str, path: str) -> None:
    operation = api_schema[path][method]
    live.settle()
    for request in _good(live, (method, path))[method, path]:
        body = {} if request.body is None else {"body": request.body, "media_type": request.media_type}
        case = operation.Case(path_parameters=request.path_parameters, query=request.query, **body)
        token = live.token(request.user, method)
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, (request, response.text)
    failures = _failures(api_schema.include(method=method, path=path))
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(("method", "path"), STREAMS, ids=[f"{method} {path}" for method, path in STREAMS])
def test_event_streams(api_schema: schemathesis.BaseSchema, live: Live, method: str, path: str) -> None:
    """A stream up to its first event, and its errors, as documented."""
    operation = api_schema[path][method]
    wanted = {"device": KITCHEN, "product": "6", "prefix": "temp"}
    parameters = {name: value for name, value in wanted.items() if f"{{{name}}}" in path}
    auth = {"Authorization": f"Bearer {live.token(method=method)}"}
    with live.kitchen_publishing():
        stream = operation.Case(path_parameters=parameters).call_and_validate(headers=auth, timeout=10)
    assert stream.status_code == 200
    opening, event, *_ = stream.content.decode().split("\n\n")
    assert opening == ":ok"
    name, data = event.split("\n")
    payload = json.loads(data.removeprefix("data: "))
    assert (name, payload["data"], payload["coreid"]) == ("event: temp/kitchen", "21.5", KITCHEN)
    refused = operation.Case(path_parameters=parameters).call_and_validate(timeout=5)
    assert refused.status_code == 401
    for name, absent in (("device", SHED), ("product", "x")):
        if name in parameters:
            case = operation.Case(path_parameters={**parameters, name: absent})
            assert case.call_and_validate(headers=auth, timeout=5).status_code == 404
