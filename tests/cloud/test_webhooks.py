"""Webhooks without a network: the request an event makes, the events an answer becomes, the backoff, the
address policy, and the dispatcher's queues, limits, retries and records over a fake sender."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from cyan.bus import InProcessBus
from cyan.cloud.models import CloudEvent, DeviceRecord, Integration
from cyan.cloud.webhooks import (
    CLOUD_SOURCE,
    AddressPolicy,
    HookError,
    HookLimits,
    HookRequest,
    HookResponse,
    HookSendError,
    WebhookDispatcher,
    build_request,
    chunk_text,
    error_events,
    event_variables,
    response_events,
    retry_delay,
)
from cyan.store import MemoryStore

T0 = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)
ALICE, BOB = "alice@example.com", "bob@example.com"
DEVICE, OTHER = "0123456789abcdef01234567", "fedcba9876543210fedcba98"


def hook(**changes: Any) -> Integration:
    base = Integration(id="ab" * 12, owner=ALICE, event="temp", url="https://example.com/in", created_at=T0)
    return dataclasses.replace(base, **changes)


def event(name: str = "temp/kitchen", data: str | None = "21.5", *, device: str | None = DEVICE) -> CloudEvent:
    return CloudEvent(name, data, 60, T0, device, ALICE)


def variables(e: CloudEvent | None = None, device: DeviceRecord | None = None) -> dict[str, Any]:
    return event_variables(e or event(), device, "e" * 24)


def form(body: bytes | None) -> dict[str, str]:
    assert body is not None
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


# -- the request an event makes --------------------------------------------------------------------------


def test_without_templates_a_post_carries_particles_default_fields_as_a_form() -> None:
    request = build_request(hook(), variables())
    assert (request.method, request.url, request.verify, request.auth) == ("POST", "https://example.com/in", True, None)
    assert dict(request.headers) == {"Content-Type": "application/x-www-form-urlencoded"}
    assert form(request.body) == {
        "event": "temp/kitchen",
        "data": "21.5",
        "published_at": "2026-11-25T12:00:00.123Z",
        "coreid": DEVICE,
    }


def test_no_defaults_and_no_templates_sends_an_empty_post() -> None:
    request = build_request(hook(no_defaults=True), variables())
    assert (request.body, request.headers) == (None, ())


def test_a_get_takes_the_defaults_and_the_form_in_its_query() -> None:
    integration = hook(
        url="https://example.com/in?key=1",
        request_type="GET",
        templates={"form": {"room": "{{{room}}}"}, "query": {"q": "{{PARTICLE_EVENT_NAME}}"}},
    )
    request = build_request(integration, variables(event(data='{"room": "kitchen & hall"}')))
    parts = urlsplit(request.url)
    assert request.body is None
    assert dict(parse_qsl(parts.query)) == {
        "key": "1",
        "event": "temp/kitchen",
        "data": '{"room": "kitchen & hall"}',
        "published_at": "2026-11-25T12:00:00.123Z",
        "coreid": DEVICE,
        "room": "kitchen & hall",
        "q": "temp/kitchen",
    }


def test_a_json_template_uses_the_events_json_fields_and_keeps_the_defaults_unless_told() -> None:
    integration = hook(
        templates={"json": {"temperature": "{{{t}}}", "where": ["{{room}}", 1, None], "event": "mine"}},
    )
    request = build_request(integration, variables(event(data='{"t": 21.5, "room": "<hall>"}')))
    assert dict(request.headers) == {"Content-Type": "application/json"}
    assert json.loads(request.body or b"") == {
        "event": "mine",  # the owner's field wins over the default one
        "data": '{"t": 21.5, "room": "<hall>"}',
        "published_at": "2026-11-25T12:00:00.123Z",
        "coreid": DEVICE,
        "temperature": "21.5",
        "where": ["&lt;hall&gt;", 1, None],
    }
    bare = build_request(dataclasses.replace(integration, no_defaults=True), variables(event(data='{"t": 3}')))
    assert json.loads(bare.body or b"") == {"temperature": "3", "where": ["", 1, None], "event": "mine"}


def test_a_json_string_template_renders_numbers_and_must_render_to_json() -> None:
    integration = hook(no_defaults=True, templates={"json": '{"lat": {{{lat}}}, "n": "{{{PARTICLE_EVENT_NAME}}}"}'})
    request = build_request(integration, variables(event(data='{"lat": 39.7}')))
    assert json.loads(request.body or b"") == {"lat": 39.7, "n": "temp/kitchen"}
    with pytest.raises(HookError, match="did not render to JSON"):
        build_request(integration, variables(event(data="not json")))


def test_a_custom_body_is_sent_as_rendered_with_the_owners_content_type() -> None:
    integration = hook(
        templates={
            "body": "v={{{PARTICLE_EVENT_VALUE}}}",
            "headers": {"content-type": "text/plain", "X-Dev": "{{PARTICLE_DEVICE_ID}}"},
        }
    )
    request = build_request(integration, variables(event(data="a&b")))
    assert request.body == b"v=a&b"
    assert dict(request.headers) == {"content-type": "text/plain", "X-Dev": DEVICE}


def test_headers_and_auth_are_rendered_and_checked_after_rendering() -> None:
    integration = hook(
        templates={
            "headers": {"X-Room": "{{{room}}}"},
            "auth": {"username": "{{{user}}}", "password": "secret"},
        }
    )
    request = build_request(integration, variables(event(data='{"room": "hall", "user": "dev-1"}')))
    assert ("X-Room", "hall") in request.headers
    assert request.auth == ("dev-1", "secret")
    # A device's data cannot add a header line, nor set what the request sets itself.
    with pytest.raises(HookError, match="control character"):
        build_request(integration, variables(event(data='{"room": "a\\r\\nX-Evil: 1"}')))
    with pytest.raises(HookError, match="set by the request"):
        build_request(hook(templates={"headers": {"{{{h}}}": "x"}}), variables(event(data='{"h": "Host"}')))
    with pytest.raises(HookError, match="not a header name"):
        build_request(hook(templates={"headers": {"{{{h}}}": "x"}}), variables(event(data='{"h": "a b"}')))


def test_the_url_is_checked_after_its_template_is_rendered() -> None:
    integration = hook(url="https://example.com/log/{{{room}}}")
    assert build_request(integration, variables(event(data='{"room": "kitchen"}'))).url.endswith("/log/kitchen")
    with pytest.raises(HookError, match="space or a control character"):
        build_request(integration, variables(event(data='{"room": "a b"}')))
    with pytest.raises(HookError, match="http:// or https://"):
        build_request(hook(url="{{{u}}}"), variables(event(data='{"u": "file:///etc/passwd"}')))
    with pytest.raises(HookError, match="credentials"):
        build_request(hook(url="{{{u}}}"), variables(event(data='{"u": "http://a:b@example.com/"}')))


def test_the_predefined_variables_win_over_the_events_data() -> None:
    record = DeviceRecord(id=DEVICE, platform_id=6, product_id=4242, product_version=3)
    found = variables(event(data='{"PARTICLE_DEVICE_ID": "forged", "t": 1}'), record)
    assert found["PARTICLE_DEVICE_ID"] == DEVICE
    assert (found["PRODUCT_ID"], found["PRODUCT_VERSION"], found["t"]) == (4242, 3, 1)
    assert variables(device=DeviceRecord(id=DEVICE, platform_id=6))["PRODUCT_ID"] == 6
    api = variables(event(data=None, device=None))
    assert (api["PARTICLE_DEVICE_ID"], api["PARTICLE_EVENT_VALUE"], api["SPARK_CORE_ID"]) == ("api", "", "api")
    assert json.loads(api["PARTICLE_EVENT_JSON"])["coreid"] == "api"


# -- what the answer becomes ------------------------------------------------------------------------------


def test_answers_are_chunked_at_512_bytes_without_splitting_a_character() -> None:
    assert chunk_text("") == [""]
    assert [len(c) for c in chunk_text("x" * 1100)] == [512, 512, 76]
    pieces = chunk_text("é" * 300)  # 600 bytes: a two-byte character must not straddle the boundary
    assert [len(p.encode()) for p in pieces] == [512, 88]
    assert "".join(pieces) == "é" * 300


def test_a_successful_answer_becomes_hook_response_events() -> None:
    events = response_events(hook(), variables(), "x" * 600)
    assert [(name, len(data)) for name, data in events] == [
        ("hook-response/temp/kitchen/0", 512),
        ("hook-response/temp/kitchen/1", 88),
    ]
    assert response_events(hook(), variables(), "") == [("hook-response/temp/kitchen/0", "")]


def test_the_response_template_and_topic() -> None:
    integration = hook(
        templates={
            "responseTemplate": "{{{results.0.elevation}}}",
            "responseTopic": "{{PARTICLE_DEVICE_ID}}/hook-response/elevation",
        }
    )
    body = json.dumps({"results": [{"elevation": 1608.637939453125}], "status": "OK"})
    expected = [(f"{DEVICE}/hook-response/elevation/0", "1608.637939453125")]
    assert response_events(integration, variables(), body) == expected
    # Not JSON: the template still sees the event's variables.
    plain = hook(templates={"responseTemplate": "got {{PARTICLE_EVENT_NAME}}"})
    assert response_events(plain, variables(), "<html>") == [("hook-response/temp/kitchen/0", "got temp/kitchen")]


def test_a_topic_that_renders_to_no_event_name_is_refused() -> None:
    forged = hook(templates={"responseTopic": "{{{room}}}"})
    with pytest.raises(HookError, match="not an event name"):
        response_events(forged, variables(event(data='{"room": "a\\nevent: forged"}')), "ok")
    with pytest.raises(HookError, match="not an event name"):
        response_events(forged, variables(event(data='{"room": ""}')), "ok")


def test_failures_become_hook_error_events() -> None:
    assert error_events(hook(), variables(), "error status 404 from example.com") == [
        ("hook-error/temp/kitchen/0", "error status 404 from example.com")
    ]
    custom = hook(templates={"errorResponseTopic": "failed_for_{{PARTICLE_DEVICE_ID}}"})
    assert error_events(custom, variables(), "x")[0][0] == f"failed_for_{DEVICE}/0"


def test_the_backoff_doubles_up_to_its_cap_with_jitter_of_half_at_most() -> None:
    limits = HookLimits(first_delay=30.0, backoff=2.0, max_delay=300.0)
    assert [retry_delay(n, limits, lambda: 1.0) for n in range(1, 7)] == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert [retry_delay(n, limits, lambda: 0.0) for n in (1, 2)] == [15.0, 30.0]


# -- where requests may go ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo to 127.0.0.1
    ],
)
def test_by_default_no_private_loopback_link_local_or_disguised_address_is_reached(address: str) -> None:
    assert not AddressPolicy().allows(ipaddress.ip_address(address))


def test_public_addresses_are_reached_and_an_operator_adds_networks() -> None:
    for public in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"):
        assert AddressPolicy().allows(ipaddress.ip_address(public))
    policy = AddressPolicy.parse(" 127.0.0.0/8 , 10.1.2.3,::1,")
    for allowed in ("127.0.0.1", "127.9.9.9", "10.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert policy.allows(ipaddress.ip_address(allowed))
    for refused in ("10.1.2.4", "169.254.169.254", "192.168.0.1"):
        assert not policy.allows(ipaddress.ip_address(refused))
    with pytest.raises(ValueError, match="not a network"):
        AddressPolicy.parse("127.0.0.0/8, localhost")
    with pytest.raises(ValueError, match="not a network"):
        AddressPolicy.parse("127.0.0.0/8; ::1")  # as the setting refuses it (cyan.config)


# -- the dispatcher ---------------------------------------------------------------------------------------


class FakeSender:
    """Answers with `answers` in turn (the last one again and again); `gate`, when set, holds every request
    until it opens. Counts the requests in flight at once."""

    def __init__(self, *answers: HookResponse | HookSendError) -> None:
        self.answers = list(answers) or [HookResponse(200, b"ok")]
        self.requests: list[HookRequest] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, request: HookRequest, *, timeout: float, max_body: int) -> HookResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, HookSendError):
                raise answer
            return answer
        finally:
            self.in_flight -= 1


FAST = HookLimits(first_delay=0.001, max_delay=0.01, attempts=3)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not so in {timeout} s: {what}"
        await asyncio.sleep(0.002)


Scenario = Callable[[WebhookDispatcher, FakeSender, InProcessBus, MemoryStore], Awaitable[None]]


def run(scenario: Scenario, sender: FakeSender | None = None, limits: HookLimits = FAST) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        bus = InProcessBus()
        fake = sender or FakeSender()
        dispatcher = WebhookDispatcher(
            store, bus, fake, limits=limits, clock=lambda: T0, rng=lambda: 1.0, record_interval=0.001
        )
        await dispatcher.start()
        try:
            await scenario(dispatcher, fake, bus, store)
        finally:
            if fake.gate is not None:
                fake.gate.set()
            await dispatcher.stop(grace=1.0)
            await store.close()

    asyncio.run(main())


async def install(dispatcher: WebhookDispatcher, store: MemoryStore, integration: Integration) -> None:
    await store.integrations.add(integration)
    dispatcher.integration_changed(integration)


def drain(subscription: Any) -> list[CloudEvent]:
    found = []
    while subscription._queue:
        found.append(subscription._queue.popleft())
    return found


def test_only_the_owners_events_with_the_prefix_and_device_trigger_a_hook() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook(device_id=DEVICE))
        await install(dispatcher, store, hook(id="cd" * 12, event="off", disabled=True))
        dispatcher.offer(CloudEvent("temp/x", "1", 60, T0, DEVICE, BOB))  # another account's
        dispatcher.offer(CloudEvent("temp/x", "1", 60, T0, DEVICE, None))  # an ownerless device's
        dispatcher.offer(event("humidity"))  # another prefix
        dispatcher.offer(event(device=OTHER))  # another of Alice's devices
        dispatcher.offer(event("off/now"))  # a disabled hook
        dispatcher.offer(event("hook-response/temp/0"))  # never a hook's own
        dispatcher.offer(event("temp/kitchen", "2"))
        await eventually(lambda: dispatcher.counters(hook().id)["succeeded"] == 1, "one delivery")
        assert [form(r.body)["data"] for r in sender.requests] == ["2"]

    run(scenario)


def test_a_delivery_publishes_sent_and_response_events_to_the_owner_only() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        hooks = bus.subscribe("hook-", capacity=100)
        dispatcher.offer(event())
        await eventually(lambda: len(hooks._queue) == 2, "hook-sent and hook-response")
        sent, response = drain(hooks)
        assert (sent.name, sent.data) == ("hook-sent/temp/kitchen", None)
        assert (response.name, response.data) == ("hook-response/temp/kitchen/0", "ok")
        for published in (sent, response):
            assert (published.owner, published.private, published.device_id) == (ALICE, True, CLOUD_SOURCE)

    run(scenario, FakeSender(HookResponse(201, b"ok")))


def test_failures_worth_retrying_are_retried_with_backoff_then_recorded() -> None:
    sender = FakeSender(HookResponse(503, b"busy"), HookSendError("no answer within 20 s"), HookResponse(200, b"done"))

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        errors = bus.subscribe("hook-error/", capacity=100)
        responses = bus.subscribe("hook-response/", capacity=100)
        dispatcher.offer(event())
        await eventually(lambda: len(responses._queue) == 1, "the third try's answer")
        assert [e.data for e in drain(errors)] == ["error status 503 from example.com", "no answer within 20 s"]
        await dispatcher.flush_records()
        records = await store.integrations.deliveries(hook().id)
        assert [(r.attempt, r.outcome, r.status, r.error) for r in reversed(records)] == [
            (1, "failure", 503, "error status 503 from example.com"),
            (2, "failure", None, "no answer within 20 s"),
            (3, "success", 200, None),
        ]
        assert dispatcher.counters(hook().id) == {
            "queued": 0,
            "in_flight": 0,
            "sent": 3,
            "succeeded": 1,
            "failed": 0,
            "dropped": 0,
        }

    run(scenario, sender)


def test_a_refusal_is_not_retried_and_attempts_are_bounded() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        await install(dispatcher, store, hook(id="cd" * 12, event="down"))
        sender.answers = [HookResponse(404, b"no")]
        dispatcher.offer(event())
        await eventually(lambda: dispatcher.counters(hook().id)["failed"] == 1, "the 404")
        sender.answers = [HookResponse(500, b"down")]
        dispatcher.offer(event("down/x"))
        await eventually(lambda: dispatcher.counters("cd" * 12)["failed"] == 1, "three 500s")
        assert len(sender.requests) == 1 + FAST.attempts
        sender.answers = [HookSendError("127.0.0.1 is an address webhooks may not reach", retry=False)]
        dispatcher.offer(event("down/y"))
        await eventually(lambda: dispatcher.counters("cd" * 12)["failed"] == 2, "the refused address")
        assert len(sender.requests) == 2 + FAST.attempts

    run(scenario)


def test_a_request_that_cannot_be_built_is_recorded_and_reported_not_sent() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook(url="https://example.com/{{{room}}}"))
        errors = bus.subscribe("hook-error/", capacity=100)
        dispatcher.offer(event(data='{"room": "a b"}'))
        await eventually(lambda: dispatcher.counters(hook().id)["failed"] == 1, "the refusal")
        assert sender.requests == []
        (error,) = drain(errors)
        assert "space or a control character" in (error.data or "")

    run(scenario)


def test_each_hook_has_its_own_concurrency_and_queue_and_a_full_queue_drops() -> None:
    sender = FakeSender()
    sender.gate = asyncio.Event()
    limits = dataclasses.replace(FAST, concurrency=2, queue=3)

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        slow, other = hook(), hook(id="cd" * 12, event="other")
        await install(dispatcher, store, slow)
        await install(dispatcher, store, other)
        for n in range(6):
            dispatcher.offer(event(data=str(n)))
        await eventually(lambda: sender.in_flight == 2, "two in flight")
        assert dispatcher.counters(slow.id) == {
            "queued": 1,
            "in_flight": 2,
            "sent": 0,
            "succeeded": 0,
            "failed": 0,
            "dropped": 3,
        }
        # Another hook's deliveries are not behind the stuck ones.
        dispatcher.offer(event("other/1"))
        await eventually(lambda: sender.in_flight == 3, "the other hook's request")
        assert sender.gate is not None
        sender.gate.set()
        await eventually(lambda: dispatcher.counters(slow.id)["succeeded"] == 3, "the queued ones sent")
        assert sender.most_in_flight == 3
        await dispatcher.flush_records()
        dropped = [r for r in await store.integrations.deliveries(slow.id) if r.outcome == "dropped"]
        # A flood of drops is recorded once a second, with how many.
        assert len(dropped) == 1
        assert dropped[0].error == "1 event(s) dropped: its queue is full (the receiver is not keeping up)"

    run(scenario, sender, limits)


def test_stopping_records_what_was_still_queued_as_dropped() -> None:
    sender = FakeSender()
    sender.gate = asyncio.Event()

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        for n in range(6):
            dispatcher.offer(event(data=str(n)))
        await eventually(lambda: sender.in_flight == 4, "four in flight")
        await dispatcher.stop(grace=0.01)
        records = await store.integrations.deliveries(hook().id)
        assert [(r.outcome, r.error) for r in records] == [
            ("dropped", "6 queued delivery(ies) dropped: the server stopped before sending them")
        ]
        dispatcher.offer(event())  # after the stop: nothing is queued
        assert dispatcher.counters(hook().id)["queued"] == 0

    run(scenario, sender)


def test_a_removed_hook_gets_nothing_more_and_reload_follows_the_store() -> None:
    sender = FakeSender(HookResponse(500, b""))

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        limits = dispatcher.limits
        dispatcher.limits = dataclasses.replace(limits, first_delay=30.0, max_delay=30.0)
        await install(dispatcher, store, hook())
        dispatcher.offer(event())
        await eventually(lambda: dispatcher.counters(hook().id)["queued"] == 1, "waiting for its retry")
        await store.integrations.remove(hook().id)
        dispatcher.integration_removed(hook().id)
        assert dispatcher.counters(hook().id)["queued"] == 0
        dispatcher.offer(event())
        assert len(sender.requests) == 1
        # Removed from the store behind the dispatcher's back (an account removed): reload forgets it.
        await install(dispatcher, store, hook(id="cd" * 12))
        await store.integrations.remove("cd" * 12)
        await dispatcher.reload()
        dispatcher.offer(event())
        await asyncio.sleep(0)
        assert len(sender.requests) == 1

    run(scenario, sender)


def test_a_test_sends_once_now_and_is_recorded() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        result = await dispatcher.test(hook(), event(data="test-event"))
        assert (result.ok, result.status, result.body, result.error) == (True, 200, "yes", None)
        assert form(sender.requests[0].body)["data"] == "test-event"
        await dispatcher.flush_records()
        (record,) = await store.integrations.deliveries(hook().id)
        assert (record.outcome, record.status) == ("success", 200)

    run(scenario, FakeSender(HookResponse(200, b"yes")))


def test_a_cut_answer_is_still_a_success_and_says_it_was_cut() -> None:
    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        result = await dispatcher.test(hook(), event())
        assert result.ok
        assert result.error == f"the answer was cut at {FAST.max_response} bytes"

    run(scenario, FakeSender(HookResponse(200, b"x" * 10, truncated=True)))


def test_records_of_deliveries_are_kept_to_the_limit() -> None:
    limits = dataclasses.replace(FAST, history=3)

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        for n in range(5):
            dispatcher.offer(event(data=str(n)))
        await eventually(lambda: dispatcher.counters(hook().id)["succeeded"] == 5, "five deliveries")
        await dispatcher.flush_records()
        assert len(await store.integrations.deliveries(hook().id)) == 3

    run(scenario, limits=limits)


def test_times_are_recorded_from_the_injected_clock() -> None:
    assert event_variables(event(), None, "x")["PARTICLE_PUBLISHED_AT"] == "2026-11-25T12:00:00.123Z"
    later = dataclasses.replace(event(), published_at=T0 + timedelta(hours=1))
    assert event_variables(later, None, "x")["SPARK_PUBLISHED_AT"] == "2026-11-25T13:00:00.123Z"


class _GatedDeliveryWrites:
    """The store, with each write of delivery records held until `gate` is set."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def integrations(self) -> Any:
        outer = self
        repository = self._store.integrations

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(repository, name)

            async def add_deliveries(self, records: Any, *, keep: int) -> None:
                outer.writing.set()
                await outer.gate.wait()
                await repository.add_deliveries(records, keep=keep)

        return Gated()


def test_a_readers_flush_waits_for_the_write_under_way() -> None:
    """Once the hook-error event is out, the owner reading the hook's deliveries (which flushes first) finds the
    attempt, even while the background writer is still storing it."""
    sender = FakeSender(HookResponse(404, b"gone"))

    async def scenario(
        dispatcher: WebhookDispatcher, sender: FakeSender, bus: InProcessBus, store: MemoryStore
    ) -> None:
        await install(dispatcher, store, hook())
        gated = _GatedDeliveryWrites(store)
        dispatcher.store = gated
        errors = bus.subscribe("hook-error/", capacity=100)
        dispatcher.offer(event())
        await eventually(lambda: len(errors._queue) == 1, "the hook-error event")
        await asyncio.wait_for(gated.writing.wait(), 5)
        reader = asyncio.ensure_future(dispatcher.flush_records())
        await asyncio.sleep(0.05)
        assert not reader.done(), "the reader's flush returned before the record was stored"
        gated.gate.set()
        await asyncio.wait_for(reader, 5)
        records = await store.integrations.deliveries(hook().id)
        assert [(r.attempt, r.outcome, r.status) for r in records] == [(1, "failure", 404)]

    run(scenario, sender)
