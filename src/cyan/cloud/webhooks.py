"""Webhooks: an event of an account's devices (or one it publishes) becomes an HTTP request to a URL it chose,
and the answer comes back as events its devices can subscribe to (Particle's webhooks, docs/api.md "Webhooks").

What happens to an event (`WebhookDispatcher`):

1. `offer` (called for every event this node's devices and API callers publish, never blocking) finds the
   owner's integrations whose prefix the name starts with, and queues one delivery each. A full queue drops
   the event for that integration and says so in its record; nothing waits.
2. A delivery renders the request (`build_request`: the templates with the event's variables), publishes
   ``hook-sent/<event>`` on its first attempt, and sends it through the `HookSender` (the HTTP client, which
   refuses addresses the `AddressPolicy` does not allow).
3. A 2xx answer is published as ``hook-response/<event>/<n>`` in 512-byte chunks (or under the integration's
   `responseTopic`, after its `responseTemplate`); any other outcome as ``hook-error/<event>/<n>``. They go
   to the owner's devices and streams like any private event of the owner.
4. A failure worth retrying (no answer, 408, 429, 5xx) is tried again after an exponential backoff, up to
   `HookLimits.attempts` times. Every attempt is recorded (time, status, duration, error) for the owner.

Each integration has its own queue and its own limit of requests in flight, so a dead or slow receiver holds up
only its own deliveries, never the events' way to devices and streams. The queue is in memory: deliveries
still queued when the server stops are recorded as dropped (docs/api.md "Webhooks").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

from cyan.tasks import TaskSet

from .models import CloudEvent, DeviceRecord, HookDelivery, Integration, iso_time
from .ports import Bus, Store, StoreUnavailableError
from .templates import TemplateError, compile_template

__all__ = [
    "CHUNK_SIZE",
    "CLOUD_SOURCE",
    "HOOK_EVENT_PREFIXES",
    "METHODS",
    "AddressPolicy",
    "DeliveryResult",
    "HookError",
    "HookLimits",
    "HookRequest",
    "HookResponse",
    "HookSendError",
    "HookSender",
    "WebhookDispatcher",
    "build_request",
    "chunk_text",
    "error_events",
    "event_variables",
    "response_events",
    "retry_delay",
]

log = logging.getLogger("cyan.webhooks")

#: The events a webhook publishes: they never trigger one (a hook answering a hook would loop).
HOOK_EVENT_PREFIXES = ("hook-sent/", "hook-response/", "hook-error/")
#: The publisher Particle names for the cloud's own events (the `coreid` of hook-sent, -response, -error).
CLOUD_SOURCE = "particle-internal"
#: Responses reach devices in chunks of at most this many bytes (Particle's, which every Gen 2 device takes).
CHUNK_SIZE = 512
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Headers the request itself decides: the owner may not set them.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})
#: The longest URL sent (after its template is rendered).
MAX_URL = 2048
#: The longest name of an event a hook publishes; devices take at most 64 bytes (§6.4) and see only those.
MAX_TOPIC = 255
#: Delivery records waiting to be written, at most: past it the store is not keeping up and records are lost.
_MAX_UNWRITTEN = 10_000
_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HookError(ValueError):
    """The integration cannot make a request of this event (a template, a URL or a header that renders
    wrong): not retried; recorded with this message."""


class HookSendError(ConnectionError):
    """The request got no answer: refused connection, timeout, TLS failure, or an address the policy
    refuses. `retry` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


# -- where requests may go ----------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses a webhook may reach. A hook's URL is its owner's choice, so by default only public
    (globally routable) addresses: not loopback, private networks, link-local (cloud metadata services at
    169.254.169.254), shared or reserved ranges, nor IPv6 forms that embed one of those. An operator adds
    networks with `allowed` (CYAN_HOOK_ALLOWED_NETWORKS), e.g. a receiver on the LAN, or loopback for tests.
    The address checked is the one connected to, after name resolution (docs/security.md)."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AddressPolicy:
        """From a comma-separated list of networks or addresses ("127.0.0.0/8, ::1, 10.1.2.3")."""
        networks = []
        for part in text.split(","):
            entry = part.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not a network (like 10.0.0.0/8) nor an address") from None
        return cls(tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # the same address, written as IPv6
        return all(self._allows(candidate) for candidate in _embedded(address))

    def _allows(self, address: IPAddress) -> bool:
        if any(address.version == net.version and address in net for net in self.allowed):
            return True
        return address.is_global and not address.is_multicast


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address it carries (6to4, Teredo, NAT64), each checked on its own."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# -- the request and its answer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HookRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    #: Basic authentication (username, password).
    auth: tuple[str, str] | None
    #: Verify the receiver's TLS certificate.
    verify: bool


@dataclass(frozen=True, slots=True)
class HookResponse:
    status: int
    #: At most `HookLimits.max_response` bytes of the body.
    body: bytes
    #: The body was longer and was cut.
    truncated: bool = False


class HookSender(Protocol):
    """Sends a request (`cyan.cloud.webhook_http.HttpSender`; a fake in unit tests)."""

    async def send(self, request: HookRequest, *, timeout: float, max_body: int) -> HookResponse:
        """The answer, whatever its status; `HookSendError` when there is none."""


@dataclass(frozen=True, slots=True)
class HookLimits:
    """How much webhooks may take (docs/security.md lists each with its default)."""

    #: Requests one integration has in flight at once.
    concurrency: int = 4
    #: Requests in flight over all integrations.
    total_concurrency: int = 256
    #: Deliveries one integration may have waiting (queued, in flight or waiting to be retried).
    queue: int = 1000
    #: Deliveries waiting over all integrations.
    total_queue: int = 100_000
    #: Tries of one delivery: the first and the retries.
    attempts: int = 3
    #: Seconds before the first retry; each next one waits `backoff` times longer, at most `max_delay`.
    first_delay: float = 30.0
    backoff: float = 2.0
    max_delay: float = 300.0
    #: Seconds a receiver has to answer (Particle's limit too).
    timeout: float = 20.0
    #: Bytes of an answer read; the rest is cut (and so said in the delivery's record).
    max_response: int = 16 * 1024
    #: Deliveries kept per integration for its owner to read.
    history: int = 100


# -- rendering ------------------------------------------------------------------------------------------------


def event_variables(event: CloudEvent, device: DeviceRecord | None, event_id: str) -> dict[str, Any]:
    """What a template may use: the fields of the event's data when it is a JSON object, then Particle's
    predefined variables (which the data cannot override) and their older SPARK_ names."""
    variables: dict[str, Any] = {}
    data = event.data
    if data and data.lstrip()[:1] == "{":
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            variables.update(parsed)
    published = iso_time(event.published_at)
    coreid = event.device_id or "api"
    fields = {"event": event.name, "data": event.data, "published_at": published, "coreid": coreid}
    variables.update(
        {
            "PARTICLE_DEVICE_ID": coreid,
            "PARTICLE_EVENT_NAME": event.name,
            "PARTICLE_EVENT_VALUE": event.data if event.data is not None else "",
            "PARTICLE_PUBLISHED_AT": published,
            "PARTICLE_EVENT_ID": event_id,
            "PARTICLE_EVENT_JSON": json.dumps(fields, separators=(",", ":")),
            "PRODUCT_ID": _product_id(device),
            "PRODUCT_VERSION": device.product_version if device is not None else None,
            "PRODUCT_USER_ID": event.owner,
            "SPARK_CORE_ID": coreid,
            "SPARK_EVENT_NAME": event.name,
            "SPARK_EVENT_VALUE": event.data if event.data is not None else "",
            "SPARK_PUBLISHED_AT": published,
        }
    )
    return variables


def _product_id(device: DeviceRecord | None) -> int | None:
    if device is None:
        return None
    return device.product_id if device.product_id is not None else device.platform_id


def _render(source: str, variables: Mapping[str, Any], what: str) -> str:
    try:
        return compile_template(source).render(variables)
    except TemplateError as exc:
        raise HookError(f"{what}: {exc}") from None


def _render_value(value: Any, variables: Mapping[str, Any], what: str, depth: int = 0) -> Any:
    """A JSON template: strings (keys too) rendered, everything else as it is."""
    if depth > 32:
        raise HookError(f"{what}: nested more than 32 deep")
    if isinstance(value, str):
        return _render(value, variables, what)
    if isinstance(value, dict):
        return {
            _render(str(k), variables, what): _render_value(v, variables, what, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_render_value(v, variables, what, depth + 1) for v in value]
    return value


def _render_fields(template: Any, variables: Mapping[str, Any], what: str) -> dict[str, str]:
    if not template:
        return {}
    rendered = _render_value(template, variables, what)
    return {key: _field_text(value) for key, value in rendered.items()}


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _defaults(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The fields Particle sends unless `noDefaults` (docs: "Default data")."""
    return {
        "event": variables["PARTICLE_EVENT_NAME"],
        "data": variables["PARTICLE_EVENT_VALUE"],
        "published_at": variables["PARTICLE_PUBLISHED_AT"],
        "coreid": variables["PARTICLE_DEVICE_ID"],
    }


def check_url(url: str, what: str = "the URL") -> str:
    """A URL a hook may be sent to: http or https, with a host, no whitespace or control character."""
    if len(url) > MAX_URL:
        raise HookError(f"{what} is over {MAX_URL} characters")
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise HookError(f"{what} has a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HookError(f"{what} is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise HookError(f"{what} must start with http:// or https://")
    if not parts.hostname:
        raise HookError(f"{what} names no host")
    if port == 0:
        raise HookError(f"{what} names port 0")
    if parts.username is not None or parts.password is not None:
        raise HookError(f"{what} carries credentials: give them as auth")
    return url


def build_request(integration: Integration, variables: Mapping[str, Any]) -> HookRequest:
    """The request an event makes of the integration: its URL, query, headers and body rendered with the event's
    variables, and the default fields added unless `no_defaults` (`HookError` when something renders wrong)."""
    templates = integration.templates
    method = integration.request_type.upper()
    url = check_url(_render(integration.url, variables, "url"), "the rendered URL")
    defaults = {} if integration.no_defaults else _defaults(variables)
    query = _render_fields(templates.get("query"), variables, "query")
    form = _render_fields(templates.get("form"), variables, "form")
    headers: dict[str, str] = {}
    body: bytes | None = None
    has_body = method in ("POST", "PUT", "PATCH")
    json_template = templates.get("json")
    if not has_body:
        # A request without a body takes the form and the default fields in its query (docs: "Web form").
        query = {**{k: _field_text(v) for k, v in defaults.items()}, **form, **query}
    elif json_template is not None:
        if isinstance(json_template, str):
            text = _render(json_template, variables, "json")
            try:
                document = json.loads(text)
            except (ValueError, RecursionError):
                raise HookError("json: the template did not render to JSON") from None
        else:
            document = _render_value(json_template, variables, "json")
        if isinstance(document, dict):
            document = {**defaults, **document}
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    elif templates.get("body") is not None:
        body = _render(str(templates["body"]), variables, "body").encode()
    else:
        fields = {**{k: _field_text(v) for k, v in defaults.items()}, **form}
        if fields:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
    if query:
        separator = "&" if urlsplit(url).query else "?"
        url = f"{url.split('#', 1)[0]}{separator}{urlencode(query, quote_via=quote)}"
        check_url(url, "the URL with its query")
    for name, value in _render_fields(templates.get("headers"), variables, "headers").items():
        if not name or not set(name) <= _HEADER_NAME:
            raise HookError(f"headers: {name[:40]!r} is not a header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise HookError(f"headers: {name} is set by the request itself")
        if not value.isprintable():
            raise HookError(f"headers: the value of {name} has a control character")
        # The owner's Content-Type wins over the one the body implies.
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        headers[name] = value
    auth = templates.get("auth")
    credentials = None
    if isinstance(auth, dict) and (auth.get("username") or auth.get("password")):
        credentials = (
            _render(str(auth.get("username") or ""), variables, "auth"),
            _render(str(auth.get("password") or ""), variables, "auth"),
        )
    return HookRequest(
        method=method,
        url=url,
        headers=tuple(headers.items()),
        body=body,
        auth=credentials,
        verify=integration.reject_unauthorized,
    )


def chunk_text(text: str, size: int = CHUNK_SIZE) -> list[str]:
    """`text` in pieces of at most `size` bytes of UTF-8, never splitting a character; at least one piece."""
    raw = text.encode()
    if len(raw) <= size:
        return [text]
    chunks = []
    start = 0
    while start < len(raw):
        end = min(start + size, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # a continuation byte: back off to the character
            end -= 1
        chunks.append(raw[start:end].decode())
        start = end
    return chunks


def _topic(source: str | None, default: str, variables: Mapping[str, Any], what: str) -> str:
    topic = _render(source, variables, what) if source else _render(default, variables, what)
    if not topic or not topic.isprintable() or len(topic.encode()) > MAX_TOPIC:
        raise HookError(f"{what}: rendered to {topic[:40]!r}, not an event name of 1 to {MAX_TOPIC} bytes")
    return topic


def response_events(integration: Integration, variables: Mapping[str, Any], text: str) -> list[tuple[str, str]]:
    """The events a successful answer (its body, as text) becomes: (name, data), ``<topic>/<n>`` for each
    512-byte chunk."""
    templates = integration.templates
    template = templates.get("responseTemplate")
    if template:
        context = dict(variables)
        try:
            parsed = json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            context.update(parsed)
        elif isinstance(parsed, list):
            context["."] = parsed
        source = template if isinstance(template, str) else json.dumps(template, separators=(",", ":"))
        text = _render(source, context, "responseTemplate")
    default = "hook-response/{{{PARTICLE_EVENT_NAME}}}"
    topic = _topic(templates.get("responseTopic"), default, variables, "responseTopic")
    return [(f"{topic}/{n}", chunk) for n, chunk in enumerate(chunk_text(text))]


def error_events(integration: Integration, variables: Mapping[str, Any], message: str) -> list[tuple[str, str]]:
    """The events a failed attempt becomes: ``<errorResponseTopic>/<n>``."""
    topic = _topic(
        integration.templates.get("errorResponseTopic"),
        "hook-error/{{{PARTICLE_EVENT_NAME}}}",
        variables,
        "errorResponseTopic",
    )
    return [(f"{topic}/{n}", chunk) for n, chunk in enumerate(chunk_text(message))]


def retry_delay(attempt: int, limits: HookLimits, rng: Callable[[], float] = random.random) -> float:
    """Seconds before try `attempt + 1` after try `attempt` failed: exponential, capped, with jitter (a half to
    the whole of it), so that the deliveries that failed together do not come back together."""
    base = min(limits.max_delay, limits.first_delay * limits.backoff ** max(0, attempt - 1))
    return base * (0.5 + rng() / 2)


def _retryable(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


# -- delivering -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt went: what the API's test answers, and what the record keeps."""

    ok: bool
    status: int | None
    #: Seconds the request took; None when none was made (the request could not be built).
    duration: float | None
    error: str | None
    body: str = ""
    #: Whether another try may go otherwise (no answer, 408, 425, 429, 5xx).
    retry: bool = False


@dataclass(slots=True)
class _Job:
    event: CloudEvent
    variables: dict[str, Any]
    attempt: int = 1


@dataclass(slots=True)
class _Hook:
    integration: Integration
    ready: deque[_Job] = field(default_factory=deque)
    in_flight: int = 0
    #: Waiting for a retry's timer.
    delayed: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    dropped: int = 0
    #: Drops since the last one recorded, and when that was (ticks): a flood is recorded once a second.
    unrecorded_drops: int = 0
    drop_recorded_at: float = float("-inf")
    removed: bool = False
    #: Deliveries cut off in flight by a stop.
    cut_off: int = 0

    @property
    def waiting(self) -> int:
        return len(self.ready) + self.in_flight + self.delayed


class WebhookDispatcher:
    """Delivers events to the integrations that want them (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        sender: HookSender,
        *,
        limits: HookLimits | None = None,
        device: Callable[[str], DeviceRecord | None] = lambda _: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ticks: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        record_interval: float = 0.5,
        reload_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.sender = sender
        self.limits = limits or HookLimits()
        self._device = device
        self._clock = clock
        self._ticks = ticks
        self._rng = rng
        self._record_interval = record_interval
        self._reload_interval = reload_interval
        self._hooks: dict[str, _Hook] = {}
        self._by_owner: dict[str, list[_Hook]] = {}
        self._in_flight = 0
        self._waiting = 0
        self._blocked: deque[_Hook] = deque()
        self._records: list[HookDelivery] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks = TaskSet(log, "cyan-webhooks")
        self._writer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._records_ready = asyncio.Event()
        # One write of the records at a time: a reader's flush waits for the write under way, so that what the
        # hook-* events announced is in the store when their owner reads the deliveries.
        self._writing_records = asyncio.Lock()
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored integrations and start recording deliveries."""
        for integration in await self.store.integrations.all():
            self.integration_changed(integration)
        self._records_ready = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_records(), name="cyan-webhook-records")
        self._follower = asyncio.get_running_loop().create_task(self._follow_store(), name="cyan-webhook-reload")

    async def _follow_store(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval)
            try:
                await self.reload()
            except StoreUnavailableError as exc:
                log.warning("webhooks not reloaded from the store: %s", exc)

    async def stop(self, grace: float = 5.0) -> None:
        """Let the requests in flight finish for up to `grace` seconds, record what is left as dropped, and
        write the records."""
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        try:
            await asyncio.wait_for(self._tasks.drain(), grace)
        except TimeoutError:
            await self._tasks.cancel()
        for hook in self._hooks.values():
            left = len(hook.ready) + hook.delayed + hook.cut_off
            if left:
                hook.dropped += left
                self._record(
                    HookDelivery(
                        hook.integration.id,
                        self._clock(),
                        hook.integration.event,
                        None,
                        0,
                        "dropped",
                        error=f"{left} queued delivery(ies) dropped: the server stopped before sending them",
                    )
                )
                hook.ready.clear()
                hook.delayed = hook.cut_off = 0
        for task in (self._writer, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._follower = None
        await self.flush_records()

    # -- the integrations ---------------------------------------------------------------------------

    def integration_changed(self, integration: Integration) -> None:
        """Created or edited: later events are delivered with this configuration (queued ones too)."""
        hook = self._hooks.get(integration.id)
        if hook is None:
            hook = _Hook(integration)
            self._hooks[integration.id] = hook
            self._by_owner.setdefault(integration.owner, []).append(hook)
            return
        if hook.integration.owner != integration.owner:  # never, but the index must not lie
            self._unindex(hook)
            self._by_owner.setdefault(integration.owner, []).append(hook)
        hook.integration = integration

    def integration_removed(self, integration_id: str) -> None:
        hook = self._hooks.pop(integration_id, None)
        if hook is None:
            return
        hook.removed = True
        self._unindex(hook)
        self._waiting -= len(hook.ready) + hook.delayed
        hook.ready.clear()
        hook.delayed = 0

    async def reload(self) -> None:
        """Follow the store: integrations removed or changed elsewhere (an account removed, another node)."""
        stored = {i.id: i for i in await self.store.integrations.all()}
        for integration_id in [i for i in self._hooks if i not in stored]:
            self.integration_removed(integration_id)
        for integration in stored.values():
            self.integration_changed(integration)

    def _unindex(self, hook: _Hook) -> None:
        owned = self._by_owner.get(hook.integration.owner, [])
        if hook in owned:
            owned.remove(hook)
        if not owned:
            self._by_owner.pop(hook.integration.owner, None)

    def counters(self, integration_id: str) -> dict[str, int]:
        """Since this server started: what is waiting, in flight, and how the deliveries ended."""
        hook = self._hooks.get(integration_id)
        if hook is None:
            return {"queued": 0, "in_flight": 0, "sent": 0, "succeeded": 0, "failed": 0, "dropped": 0}
        return {
            "queued": len(hook.ready) + hook.delayed,
            "in_flight": hook.in_flight,
            "sent": hook.sent,
            "succeeded": hook.succeeded,
            "failed": hook.failed,
            "dropped": hook.dropped,
        }

    # -- events in ----------------------------------------------------------------------------------

    def offer(self, event: CloudEvent) -> None:
        """An event published on this node: queue it for each of its owner's integrations that want it. Never
        blocks and never raises (it runs in the path of every event)."""
        try:
            self._offer(event)
        except Exception:
            log.exception("could not queue event %s for its webhooks", event.name)

    def _offer(self, event: CloudEvent) -> None:
        if event.owner is None or self._stopping or event.name.startswith(HOOK_EVENT_PREFIXES):
            return
        hooks = self._by_owner.get(event.owner)
        if not hooks:
            return
        wanting = [
            hook
            for hook in hooks
            if not hook.integration.disabled
            and event.name.startswith(hook.integration.event)
            and (hook.integration.device_id is None or hook.integration.device_id == event.device_id)
        ]
        if not wanting:
            return
        device = self._device(event.device_id) if event.device_id else None
        variables = event_variables(event, device, secrets.token_hex(12))
        for hook in wanting:
            if hook.waiting >= self.limits.queue or self._waiting >= self.limits.total_queue:
                self._dropped(hook, event)
                continue
            hook.ready.append(_Job(event, variables))
            self._waiting += 1
            self._pump(hook)

    def _dropped(self, hook: _Hook, event: CloudEvent) -> None:
        hook.dropped += 1
        hook.unrecorded_drops += 1
        now = self._ticks()
        if now - hook.drop_recorded_at < 1.0:
            return
        full = "its queue" if hook.waiting >= self.limits.queue else "the server's queue of webhooks"
        self._record(
            HookDelivery(
                hook.integration.id,
                self._clock(),
                event.name,
                event.device_id,
                0,
                "dropped",
                error=f"{hook.unrecorded_drops} event(s) dropped: {full} is full (the receiver is not keeping up)",
            )
        )
        hook.unrecorded_drops = 0
        hook.drop_recorded_at = now

    # -- sending ------------------------------------------------------------------------------------

    def _pump(self, hook: _Hook) -> None:
        while hook.ready and hook.in_flight < self.limits.concurrency and not hook.removed:
            if self._in_flight >= self.limits.total_concurrency:
                if hook not in self._blocked:
                    self._blocked.append(hook)
                return
            job = hook.ready.popleft()
            hook.in_flight += 1
            self._in_flight += 1
            self._tasks.spawn(self._deliver(hook, job), f"deliver {job.event.name} to {hook.integration.id}")

    def _slot_freed(self, hook: _Hook) -> None:
        self._pump(hook)
        while self._blocked and self._in_flight < self.limits.total_concurrency:
            self._pump(self._blocked.popleft())

    async def _deliver(self, hook: _Hook, job: _Job) -> None:
        retry_at: float | None = None
        finished = False
        try:
            retry_at = await self._attempt(hook, job)
            finished = True
        finally:
            hook.in_flight -= 1
            self._in_flight -= 1
            if not finished:
                hook.cut_off += 1  # cancelled by a stop (or a fault, which is logged)
            if retry_at is not None and not hook.removed and not self._stopping:
                hook.delayed += 1
                job.attempt += 1
                self._later(retry_at, hook, job)
            else:
                self._waiting -= 1
            if not self._stopping:
                self._slot_freed(hook)

    def _later(self, delay: float, hook: _Hook, job: _Job) -> None:
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._retry(hook, job)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _retry(self, hook: _Hook, job: _Job) -> None:
        if hook.removed or self._stopping:
            return
        hook.delayed -= 1
        hook.ready.append(job)
        self._pump(hook)

    async def _attempt(self, hook: _Hook, job: _Job) -> float | None:
        """One try; the delay before the next, or None when the delivery is over."""
        integration = hook.integration
        event = job.event
        if job.attempt == 1:
            self._publish(integration, f"hook-sent/{event.name}", None)
        result = await self._send(integration, job.variables)
        if result.duration is not None:
            hook.sent += 1
        self._record_attempt(integration, event, job.attempt, result)
        if result.ok:
            hook.succeeded += 1
            self._answer(integration, job.variables, result.body)
            return None
        self._fail(integration, job.variables, result.error or "failed")
        if result.retry and job.attempt < self.limits.attempts:
            return retry_delay(job.attempt, self.limits, self._rng)
        hook.failed += 1
        return None

    async def _send(self, integration: Integration, variables: Mapping[str, Any]) -> DeliveryResult:
        try:
            request = build_request(integration, variables)
        except HookError as exc:
            return DeliveryResult(False, None, None, str(exc))
        started = self._ticks()
        try:
            response = await self.sender.send(request, timeout=self.limits.timeout, max_body=self.limits.max_response)
        except HookSendError as exc:
            return DeliveryResult(False, None, round(self._ticks() - started, 6), str(exc), retry=exc.retry)
        duration = round(self._ticks() - started, 6)
        body = response.body.decode("utf-8", "replace")
        if 200 <= response.status < 300:
            error = f"the answer was cut at {self.limits.max_response} bytes" if response.truncated else None
            return DeliveryResult(True, response.status, duration, error, body)
        host = urlsplit(request.url).hostname or "the receiver"
        error = f"error status {response.status} from {host}"
        return DeliveryResult(False, response.status, duration, error, body, retry=_retryable(response.status))

    def _answer(self, integration: Integration, variables: Mapping[str, Any], body: str) -> None:
        try:
            events = response_events(integration, variables, body)
        except HookError as exc:
            self._fail(integration, variables, str(exc))
            return
        for name, data in events:
            self._publish(integration, name, data)

    def _fail(self, integration: Integration, variables: Mapping[str, Any], message: str) -> None:
        try:
            events = error_events(integration, variables, message)
        except HookError as exc:
            log.info("integration %s: %s", integration.id, exc)
            return
        for name, data in events:
            self._publish(integration, name, data)

    def _publish(self, integration: Integration, name: str, data: str | None) -> None:
        # Private to the owner: their devices subscribed to it and their streams get it, nobody else's.
        self.bus.publish(CloudEvent(name, data, 60, self._clock(), CLOUD_SOURCE, integration.owner, True))

    async def test(self, integration: Integration, event: CloudEvent) -> DeliveryResult:
        """Send `event` to the integration once, now, outside its queue: what `POST .../test` answers. The
        attempt is recorded like any other."""
        device = self._device(event.device_id) if event.device_id else None
        variables = event_variables(event, device, secrets.token_hex(12))
        result = await self._send(integration, variables)
        self._record_attempt(integration, event, 1, result)
        return result

    # -- the record of deliveries ----------------------------------------------------------------------

    def _record_attempt(
        self, integration: Integration, event: CloudEvent, attempt: int, result: DeliveryResult
    ) -> None:
        outcome = "success" if result.ok else "failure"
        self._record(
            HookDelivery(
                integration.id,
                self._clock(),
                event.name,
                event.device_id,
                attempt,
                outcome,
                result.status,
                result.duration,
                result.error,
            )
        )

    def _record(self, delivery: HookDelivery) -> None:
        if len(self._records) >= _MAX_UNWRITTEN:
            return  # the store is not keeping up: these are records, not answers to anyone
        self._records.append(delivery)
        self._records_ready.set()

    async def _write_records(self) -> None:
        while True:
            await self._records_ready.wait()
            self._records_ready.clear()
            await self.flush_records()
            await asyncio.sleep(self._record_interval)

    async def flush_records(self) -> None:
        """Write the deliveries recorded so far (after any write under way has ended)."""
        async with self._writing_records:
            records, self._records = self._records, []
            if not records:
                return
            try:
                await self.store.integrations.add_deliveries(records, keep=self.limits.history)
            except StoreUnavailableError as exc:
                log.warning("%d webhook delivery record(s) not written: %s", len(records), exc)
