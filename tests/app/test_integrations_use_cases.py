"""Webhooks through their one door: who may create, read, change, delete and test them; that each change is
audited in its own transaction; and every hostile configuration refused with the field at fault."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cyan.app import Actor, Application, NewDevice
from cyan.app.integrations import parse_settings
from cyan.bus import InProcessBus
from cyan.cloud.errors import DeviceNotFoundError, InvalidInputError, NotFoundError, PermissionDeniedError
from cyan.cloud.models import Role
from cyan.cloud.webhooks import HookLimits, HookRequest, HookResponse, WebhookDispatcher
from cyan.keys import public_key_der
from cyan.store import MemoryStore, _memory
from cyan.testing import fixed_device_key

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KITCHEN, SHED = "ab" * 12, "cd" * 12
ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
OPERATOR = Actor.operator()
alice, bob, admin = Actor.account(ALICE, Role.USER), Actor.account(BOB, Role.USER), Actor.account(ADMIN, Role.ADMIN)
HOOK = {"event": "temp", "url": "https://example.com/in?key=secret"}


class Sender:
    def __init__(self) -> None:
        self.requests: list[HookRequest] = []

    async def send(self, request: HookRequest, *, timeout: float, max_body: int) -> HookResponse:
        self.requests.append(request)
        return HookResponse(200, b"received")


Scenario = Callable[[Application, MemoryStore, WebhookDispatcher, Sender], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        sender = Sender()
        hooks = WebhookDispatcher(store, InProcessBus(), sender, limits=HookLimits(), clock=lambda: NOW)
        await hooks.start()
        app = Application(store, clock=lambda: NOW, hooks=hooks)
        for user, role in ((ALICE, Role.USER), (BOB, Role.USER), (ADMIN, Role.ADMIN)):
            await app.accounts.create_user(OPERATOR, user, "a good password", role=role)
        await app.devices.register(
            OPERATOR,
            [
                NewDevice(KITCHEN, public_key_der(fixed_device_key(1).public_key()), name="kitchen", owner=ALICE),
                NewDevice(SHED, public_key_der(fixed_device_key(2).public_key()), name="shed", owner=BOB),
            ],
        )
        try:
            await scenario(app, store, hooks, sender)
        finally:
            await hooks.stop()
            await store.close()

    asyncio.run(main())


async def actions(store: MemoryStore, subject: str) -> list[str]:
    return [e.action for e in await store.audit.recent(subject=subject) if e.action.startswith("integration")]


def test_creating_stores_the_configuration_and_audits_it_without_the_urls_secrets() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        config = {
            **HOOK,
            "requestType": "put",
            "deviceid": "kitchen",  # the CLI's spelling, a name
            "name": "Record",
            "noDefaults": "true",
            "rejectUnauthorized": False,
            "json": {"t": "{{{t}}}", "n": [1, 2.5, None]},
            "headers[X-Key]": "{{PARTICLE_DEVICE_ID}}",
            "auth": '{"user": "u", "pass": "p"}',
            "responseTopic": "{{PARTICLE_DEVICE_ID}}/hook-response/temp",
            "responseTemplate": {"v": "{{{value}}}"},
            "integration_type": "Webhook",
            "_": "comments and unknown keys are left out",
        }
        created = await app.integrations.create(alice, config)
        stored = await store.integrations.get(created.id)
        assert stored == created
        assert (created.owner, created.event, created.request_type, created.device_id) == (
            ALICE,
            "temp",
            "PUT",
            KITCHEN,
        )
        assert (created.name, created.no_defaults, created.reject_unauthorized, created.my_devices) == (
            "Record",
            True,
            False,
            True,
        )
        assert created.templates == {
            "json": {"t": "{{{t}}}", "n": [1, 2.5, None]},
            "headers": {"X-Key": "{{PARTICLE_DEVICE_ID}}"},
            "auth": {"username": "u", "password": "p"},
            "responseTopic": "{{PARTICLE_DEVICE_ID}}/hook-response/temp",
            "responseTemplate": '{"v":"{{{value}}}"}',
        }
        (entry,) = await store.audit.recent(subject=ALICE, limit=1)
        assert (entry.action, entry.actor, entry.device_id) == ("integration_created", ALICE, KITCHEN)
        assert entry.detail == f"integration {created.id}: 'temp' to example.com"
        assert [i.id for i in await app.integrations.mine(alice)] == [created.id]
        assert await app.integrations.mine(bob) == []

    run(scenario)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"url": "https://example.com"}, "event"),
    ({**HOOK, "event": ""}, "event"),
    ({**HOOK, "event": "x" * 65}, "event"),
    ({**HOOK, "event": "temp\nevent: forged"}, "event"),
    ({**HOOK, "event": 5}, "event"),
    ({**HOOK, "event": "hook-response/temp"}, "event"),
    ({"event": "temp"}, "url"),
    ({**HOOK, "url": "ftp://example.com/"}, "url"),
    ({**HOOK, "url": "file:///etc/passwd"}, "url"),
    ({**HOOK, "url": "https://example.com/a b"}, "url"),
    ({**HOOK, "url": "https:///no-host"}, "url"),
    ({**HOOK, "url": "https://example.com:99999/"}, "url"),
    ({**HOOK, "url": "https://u:p@example.com/"}, "url"),
    ({**HOOK, "url": "https://example.com/" + "a" * 2048}, "url"),
    ({**HOOK, "url": "https://example.com/{{#a}}"}, "url"),
    ({**HOOK, "requestType": "TRACE"}, "requestType"),
    ({**HOOK, "requestType": 7}, "requestType"),
    ({**HOOK, "json": {"t": float("nan")}}, "json"),
    ({**HOOK, "json": {"t": float("inf")}}, "json"),
    ({**HOOK, "json": 5}, "json"),
    ({**HOOK, "json": "{not json"}, "json"),
    ({**HOOK, "json": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": 1}}}}}}}}}}}, "json"),
    ({**HOOK, "json": {"t": "{{#open}}"}}, "json"),
    ({**HOOK, "json": {"a": 1}, "form": {"b": 2}}, "form"),
    ({**HOOK, "form": ["a"]}, "form"),
    ({**HOOK, "form": {"a": {"nested": 1}}}, "form"),
    ({**HOOK, "form": {f"k{n}": n for n in range(101)}}, "form"),
    ({**HOOK, "query": {"q": float("-inf")}}, "query"),
    ({**HOOK, "query": {"": "x"}}, "query"),
    ({**HOOK, "headers": {"Host": "internal"}}, "headers"),
    ({**HOOK, "headers": {"Content-Length": "1"}}, "headers"),
    ({**HOOK, "headers": {"X-A": "a\r\nX-Evil: 1"}}, "headers"),
    ({**HOOK, "headers": {"bad name": "x"}}, "headers"),
    ({**HOOK, "headers": "not an object"}, "headers"),
    ({**HOOK, "auth": "user:pass"}, "auth"),
    ({**HOOK, "auth": {"username": 1}}, "auth"),
    ({**HOOK, "body": {"not": "text"}}, "body"),
    ({**HOOK, "responseTopic": "a\nb"}, "responseTopic"),
    ({**HOOK, "errorResponseTopic": "x" * 256}, "errorResponseTopic"),
    ({**HOOK, "responseTemplate": "{{/never}}"}, "responseTemplate"),
    ({**HOOK, "name": "a\x00b"}, "name"),
    ({**HOOK, "disabled": "maybe"}, "disabled"),
    ({**HOOK, "noDefaults": 2}, "noDefaults"),
    ({**HOOK, "integration_type": "AzureIotHub"}, "integration_type"),
    ({**HOOK, "body": "x" * (64 * 1024)}, "json"),
    ({**HOOK, "headers[b]": "2", "headers": "whole"}, "headers"),
]


@pytest.mark.parametrize(("config", "field"), BAD)
def test_a_hostile_configuration_is_refused_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        parse_settings(config)
    assert refused.value.field == field, str(refused.value)


def test_a_refused_configuration_leaves_nothing_behind() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        for config, _ in BAD:
            with pytest.raises(InvalidInputError):
                await app.integrations.create(alice, config)
        assert await store.integrations.all() == []
        assert await actions(store, ALICE) == []

    run(scenario)


def test_what_is_not_yours_is_not_found_and_an_admin_may_act_on_it() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        created = await app.integrations.create(alice, HOOK)
        with pytest.raises(DeviceNotFoundError):
            await app.integrations.create(alice, {**HOOK, "deviceID": SHED})  # Bob's device
        for attempt in (
            lambda: app.integrations.get(bob, created.id),
            lambda: app.integrations.update(bob, created.id, HOOK),
            lambda: app.integrations.delete(bob, created.id),
            lambda: app.integrations.test(bob, created.id),
            lambda: app.integrations.get(alice, "00" * 12),
            lambda: app.integrations.get(alice, "x" * 500),
        ):
            with pytest.raises(NotFoundError):
                await attempt()
        assert (await app.integrations.get(admin, created.id.upper())).integration == created
        with pytest.raises(PermissionDeniedError, match="belong to an account"):
            await app.integrations.create(OPERATOR, HOOK)
        await app.integrations.delete(admin, created.id)
        (entry,) = [e for e in await store.audit.recent(subject=ALICE) if e.action == "integration_deleted"]
        assert entry.actor == ADMIN

    run(scenario)


def test_an_update_replaces_the_configuration_keeping_the_event_and_url_when_absent() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        created = await app.integrations.create(alice, {**HOOK, "json": {"a": "1"}, "deviceID": KITCHEN})
        changed = await app.integrations.update(alice, created.id, {"form": {"b": "2"}, "requestType": "GET"})
        assert (changed.id, changed.created_at, changed.updated_at) == (created.id, created.created_at, NOW)
        assert (changed.event, changed.url, changed.request_type) == ("temp", HOOK["url"], "GET")
        assert (changed.templates, changed.device_id) == ({"form": {"b": "2"}}, None)
        assert await store.integrations.get(created.id) == changed
        with pytest.raises(InvalidInputError):
            await app.integrations.update(alice, created.id, {"url": "gopher://x"})
        assert await store.integrations.get(created.id) == changed
        assert await actions(store, ALICE) == ["integration_changed", "integration_created"]

    run(scenario)


def test_an_account_has_at_most_a_hundred_integrations() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        for _ in range(100):
            await app.integrations.create(bob, HOOK)
        with pytest.raises(InvalidInputError, match="at most 100"):
            await app.integrations.create(bob, HOOK)
        await app.integrations.create(alice, HOOK)  # another account's count is its own
        # Two racing for the last place: the count is read in the transaction that adds, so one wins.
        await app.integrations.delete(bob, (await app.integrations.mine(bob))[0].id)
        racing = await asyncio.gather(
            app.integrations.create(bob, HOOK), app.integrations.create(bob, HOOK), return_exceptions=True
        )
        assert sorted(type(outcome).__name__ for outcome in racing) == ["Integration", "InvalidInputError"]
        assert len(await app.integrations.mine(bob)) == 100

    run(scenario)


def test_the_change_and_its_audit_entry_are_written_together(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        async def failing(self: object, entry: object) -> int:
            raise RuntimeError("the audit trail cannot be written")

        monkeypatch.setattr(_memory._Audit, "add", failing)
        with pytest.raises(RuntimeError, match="audit trail"):
            await app.integrations.create(alice, HOOK)
        assert await store.integrations.all() == []
        assert await hooks.store.integrations.all() == []

    run(scenario)


def test_the_dispatcher_follows_every_change_and_a_test_sends_now() -> None:
    async def scenario(app: Application, store: MemoryStore, hooks: WebhookDispatcher, sender: Sender) -> None:
        created = await app.integrations.create(alice, {**HOOK, "json": {"d": "{{{PARTICLE_EVENT_VALUE}}}"}})
        result = await app.integrations.test(alice, created.id, data="hello", device="kitchen")
        assert (result.ok, result.status, result.body) == (True, 200, "received")
        (request,) = sender.requests
        assert json.loads(request.body or b"") == {
            "event": "temp",
            "data": "hello",
            "published_at": "2026-12-01T12:00:00.000Z",
            "coreid": KITCHEN,
            "d": "hello",
        }
        view = await app.integrations.get(alice, created.id)
        assert [(d.outcome, d.status, d.device_id) for d in view.deliveries] == [("success", 200, KITCHEN)]
        with pytest.raises(InvalidInputError, match="data"):
            await app.integrations.test(alice, created.id, data="x" * 623)
        with pytest.raises(DeviceNotFoundError):
            await app.integrations.test(alice, created.id, device="shed")
        await app.integrations.update(alice, created.id, {"disabled": True})
        await app.integrations.delete(alice, created.id)
        assert hooks.counters(created.id)["sent"] == 0  # forgotten with its counters

    run(scenario)


def test_without_a_dispatcher_integrations_are_kept_but_not_tested() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        app = Application(store, clock=lambda: NOW)
        await app.accounts.create_user(OPERATOR, ALICE, "a good password")
        created = await app.integrations.create(alice, HOOK)
        view = await app.integrations.get(alice, created.id)
        assert (view.integration, view.deliveries, view.counters) == (created, [], {})
        with pytest.raises(PermissionDeniedError, match="not delivered"):
            await app.integrations.test(alice, created.id)
        await store.close()

    asyncio.run(main())
