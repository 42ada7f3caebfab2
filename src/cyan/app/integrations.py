"""Webhooks (Particle's integrations of type Webhook): who may create, read, change, delete and test them, and
what a configuration may hold.

An integration belongs to the account that made it; another account's is not found (an admin's act on it is
allowed and audited, as for devices). Every change is written with its audit entry in one transaction, then
handed to the dispatcher that delivers events (`cyan.cloud.webhooks.WebhookDispatcher`). A configuration is
someone's input sent on to a URL they chose, so every part of it is checked and bounded here, and a 400 names
the field at fault (docs/api.md "Webhooks").
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cyan.cloud.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from cyan.cloud.models import AuditEntry, CloudEvent, HookDelivery, Integration
from cyan.cloud.templates import MAX_TEMPLATE, TemplateError, compile_template
from cyan.cloud.webhooks import (
    FORBIDDEN_HEADERS,
    HOOK_EVENT_PREFIXES,
    MAX_TOPIC,
    METHODS,
    DeliveryResult,
    HookError,
    WebhookDispatcher,
    check_url,
)
from cyan.protocol.messages import MAX_EVENT_DATA, MAX_EVENT_NAME

from ._context import AppContext, visible_device
from .actors import Actor

__all__ = ["MAX_INTEGRATIONS", "IntegrationUseCases", "IntegrationView", "parse_settings"]

#: Integrations one account may have.
MAX_INTEGRATIONS = 100
#: The whole configuration, as JSON.
MAX_CONFIGURATION = 64 * 1024
#: Fields of a form, query or headers object.
MAX_FIELDS = 100
_MAX_DEPTH = 8
_TEXT_FIELDS = ("responseTemplate", "responseTopic", "errorResponseTopic", "body")
_OBJECT_FIELDS = ("form", "query", "headers")
_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class IntegrationView:
    """An integration as its owner reads it: its configuration, its recent deliveries (newest first) and what
    this server counted since it started."""

    integration: Integration
    deliveries: list[HookDelivery] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


class IntegrationUseCases:
    def __init__(self, ctx: AppContext, hooks: WebhookDispatcher | None) -> None:
        self._ctx = ctx
        self._hooks = hooks

    # -- reading ----------------------------------------------------------------------------------------

    async def mine(self, actor: Actor) -> list[Integration]:
        """The actor's integrations, oldest first."""
        owner = _owner(actor)
        return await self._ctx.store.integrations.all(owner)

    async def get(self, actor: Actor, integration_id: str, *, history: int = 20) -> IntegrationView:
        integration = await self._visible(actor, integration_id)
        if self._hooks is not None:
            await self._hooks.flush_records()
        deliveries = await self._ctx.store.integrations.deliveries(integration.id, limit=max(0, min(history, 100)))
        counters = self._hooks.counters(integration.id) if self._hooks is not None else {}
        return IntegrationView(integration, deliveries, counters)

    async def _visible(self, actor: Actor, integration_id: object) -> Integration:
        if not isinstance(integration_id, str) or not 1 <= len(integration_id) <= 64:
            raise NotFoundError(f"no integration {str(integration_id)[:64]!r}")
        integration = await self._ctx.store.integrations.get(integration_id.lower())
        if integration is None or not (actor.is_admin or integration.owner == actor.username):
            raise NotFoundError(f"no integration {integration_id[:64]!r} of yours")
        return integration

    # -- changing ---------------------------------------------------------------------------------------

    async def create(self, actor: Actor, params: Mapping[str, Any]) -> Integration:
        owner = _owner(actor)
        settings = parse_settings(params)
        device_id = await self._device(actor, settings.pop("device", None))
        now = self._ctx.clock()
        integration = Integration(
            id=secrets.token_hex(12), owner=owner, created_at=now, device_id=device_id, **settings
        )
        async with self._ctx.store.transaction() as tx:
            if len(await tx.integrations.all(owner)) >= MAX_INTEGRATIONS:
                raise InvalidInputError(f"an account has at most {MAX_INTEGRATIONS} integrations", "event")
            await tx.integrations.add(integration)
            await tx.audit.add(self._audit(now, "integration_created", actor, integration))
        if self._hooks is not None:
            self._hooks.integration_changed(integration)
        return integration

    async def update(self, actor: Actor, integration_id: str, params: Mapping[str, Any]) -> Integration:
        """Replace the configuration (as Particle's PUT does); an absent `event` or `url` keeps the current one."""
        current = await self._visible(actor, integration_id)
        given = dict(params)
        given.setdefault("event", current.event)
        given.setdefault("url", current.url)
        settings = parse_settings(given)
        device_id = await self._device(actor, settings.pop("device", None))
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            stored = await tx.integrations.get(current.id)
            if stored is None:
                raise NotFoundError(f"no integration {integration_id[:64]!r} of yours")
            changed = Integration(
                id=stored.id,
                owner=stored.owner,
                created_at=stored.created_at,
                device_id=device_id,
                updated_at=now,
                **settings,
            )
            await tx.integrations.save(changed)
            await tx.audit.add(self._audit(now, "integration_changed", actor, changed))
        if self._hooks is not None:
            self._hooks.integration_changed(changed)
        return changed

    async def delete(self, actor: Actor, integration_id: str) -> None:
        current = await self._visible(actor, integration_id)
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            if not await tx.integrations.remove(current.id):
                raise NotFoundError(f"no integration {integration_id[:64]!r} of yours")
            await tx.audit.add(self._audit(now, "integration_deleted", actor, current))
        if self._hooks is not None:
            self._hooks.integration_removed(current.id)

    async def test(
        self, actor: Actor, integration_id: str, *, data: object = None, device: object = None
    ) -> DeliveryResult:
        """Send one event to the integration now, whatever its prefix and device filter: the event is named by
        the prefix, with `data` (or "test-event") from `device` (or the API)."""
        if self._hooks is None:
            raise PermissionDeniedError("webhooks are not delivered by this server")
        integration = await self._visible(actor, integration_id)
        if data is not None and (not isinstance(data, str) or len(data.encode()) > MAX_EVENT_DATA):
            raise InvalidInputError(f"data is text of at most {MAX_EVENT_DATA} bytes", "data")
        device_id = await self._device(actor, device) or integration.device_id
        event = CloudEvent(
            integration.event,
            "test-event" if data is None else data,
            60,
            self._ctx.clock(),
            device_id,
            integration.owner,
        )
        return await self._hooks.test(integration, event)

    async def _device(self, actor: Actor, device: object) -> str | None:
        if device is None or device == "":
            return None
        if not isinstance(device, str):
            raise InvalidInputError("deviceID is a device id or name", "deviceID")
        return (await visible_device(self._ctx.store, actor, device)).id

    @staticmethod
    def _audit(now: datetime, action: str, actor: Actor, integration: Integration) -> AuditEntry:
        # The host only: a URL's path and query may hold the receiver's secret.
        host = urlsplit(integration.url).hostname or "?"
        detail = f"integration {integration.id}: {integration.event!r} to {host}"
        return AuditEntry(now, integration.device_id, action, actor.name, detail=detail, subject=integration.owner)


def _owner(actor: Actor) -> str:
    if actor.username is None:
        raise PermissionDeniedError("integrations belong to an account: use one's access token")
    return actor.username


# -- what a configuration may hold ------------------------------------------------------------------------


def parse_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as Particle's API and CLI send it (JSON or a form; the CLI's `deviceid`, the
    documented `deviceID`, particle-api-js's `deviceId`), checked: the fields of `Integration` except its id,
    owner and times, plus "device" (an id or name, resolved by the caller). `InvalidInputError` names the
    field at fault."""
    params = _nest(params)
    try:
        size = len(json.dumps(params, default=str))
    except (ValueError, RecursionError):
        raise InvalidInputError("the configuration cannot be read", "json") from None
    if size > MAX_CONFIGURATION:
        raise InvalidInputError(f"the configuration is over {MAX_CONFIGURATION} bytes", "json")
    kind = params.get("integration_type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() != "webhook"):
        raise InvalidInputError("integration_type: only Webhook integrations are supported", "integration_type")
    event = _first(params, "event", "eventName")
    if not isinstance(event, str) or not event:
        raise InvalidInputError("event is required: the prefix of the event names that trigger it", "event")
    if len(event.encode()) > MAX_EVENT_NAME or not event.isprintable():
        raise InvalidInputError(f"event is 1 to {MAX_EVENT_NAME} bytes without control characters", "event")
    if event.startswith(HOOK_EVENT_PREFIXES):
        raise InvalidInputError("the events webhooks publish (hook-sent, -response, -error) trigger none", "event")
    url = params.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInputError("url is required", "url")
    try:
        check_url(url, "url")
    except HookError as exc:
        raise InvalidInputError(str(exc), "url") from None
    _template(url, "url")
    method = _first(params, "requestType", "request_type", "method")
    method = "POST" if method is None or method == "" else method
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise InvalidInputError(f"requestType is one of {', '.join(METHODS)}", "requestType")
    name = params.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 255 or not name.isprintable()):
        raise InvalidInputError("name is text of at most 255 characters", "name")
    templates: dict[str, Any] = {}
    given = [key for key in ("json", "form", "body") if params.get(key) is not None]
    if len(given) > 1:
        raise InvalidInputError(f"json, form and body are exclusive; {', '.join(given)} are given", given[1])
    if params.get("json") is not None:
        templates["json"] = _json_template(params["json"])
    for key in _OBJECT_FIELDS:
        if params.get(key) is not None:
            templates[key] = _fields(params[key], key)
    for key in _TEXT_FIELDS:
        value = params.get(key)
        if value is None or value == "":
            continue
        if key == "responseTemplate" and isinstance(value, dict | list):
            value = json.dumps(_checked_json(value, key), separators=(",", ":"))
        if not isinstance(value, str):
            raise InvalidInputError(f"{key} is text", key)
        if key.endswith("Topic") and (len(value.encode()) > MAX_TOPIC or not value.isprintable()):
            raise InvalidInputError(f"{key} is 1 to {MAX_TOPIC} bytes without control characters", key)
        templates[key] = _template(value, key)
    if params.get("auth") is not None:
        templates["auth"] = _auth(params["auth"])
    device = _first(params, "deviceID", "deviceId", "deviceid", "device_id")
    return {
        "event": event,
        "url": url,
        "request_type": method.upper(),
        "name": name or None,
        "disabled": _flag(params, "disabled", False),
        "no_defaults": _flag(params, "noDefaults", False),
        "reject_unauthorized": _flag(params, "rejectUnauthorized", True),
        "my_devices": _flag(params, "mydevices", True),
        "templates": templates,
        "device": device,
    }


def _nest(params: Mapping[str, Any]) -> dict[str, Any]:
    """Form fields named ``headers[X-Key]`` gathered into objects, as form-encoded clients send them."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        head, bracket, rest = key.partition("[")
        if bracket and rest.endswith("]") and head in (*_OBJECT_FIELDS, "auth", "json"):
            inner = nested.setdefault(head, {})
            if not isinstance(inner, dict):
                raise InvalidInputError(f"{head} is given both whole and by field", head)
            inner[rest[:-1]] = value
        elif key in nested and isinstance(nested[key], dict):
            raise InvalidInputError(f"{key} is given both whole and by field", key)
        else:
            nested[key] = dict(value) if isinstance(value, dict) else value  # the caller's is not changed
    return nested


def _first(params: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if params.get(name) is not None:
            return params[name]
    return None


def _flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise InvalidInputError(f"{key} is true or false", key)


def _template(text: str, where: str) -> str:
    try:
        compile_template(text)
    except TemplateError as exc:
        raise InvalidInputError(f"{where}: {exc}", where) from None
    return text


def _maybe_object(value: Any, where: str) -> Any:
    """A form client sends objects as JSON text."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise InvalidInputError(f"{where} is not valid JSON", where) from None
    return value


def _checked_json(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON template's value: finite numbers, bounded nesting, every string a template that compiles."""
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"{where} is nested more than {_MAX_DEPTH} deep", where)
    if isinstance(value, str):
        return _template(value, where)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where} holds {value}, which JSON cannot carry", where)
        return value
    if isinstance(value, list):
        return [_checked_json(item, where, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_template(str(k), where): _checked_json(v, where, depth + 1) for k, v in value.items()}
    raise InvalidInputError(f"{where} holds a {type(value).__name__}", where)


def _json_template(value: Any) -> Any:
    if isinstance(value, str):
        if len(value.encode()) > MAX_TEMPLATE:
            raise InvalidInputError(f"json is over {MAX_TEMPLATE} bytes", "json")
        parsed = _maybe_object(value, "json") if value.lstrip()[:1] in ("{", "[") else value
        if isinstance(parsed, str):
            return _template(parsed, "json")  # a template that is JSON only once rendered
        value = parsed
    if not isinstance(value, dict | list):
        raise InvalidInputError("json is an object, a list, or a template that renders to JSON", "json")
    return _checked_json(value, "json")


def _fields(value: Any, where: str) -> dict[str, Any]:
    value = _maybe_object(value, where)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} is an object of names and values", where)
    if len(value) > MAX_FIELDS:
        raise InvalidInputError(f"{where} has more than {MAX_FIELDS} fields", where)
    checked: dict[str, Any] = {}
    for raw_key, item in value.items():
        key = str(raw_key)
        if not key or len(key) > 255 or not key.isprintable():
            raise InvalidInputError(f"{where}: a name is 1 to 255 characters without control characters", where)
        if item is not None and not isinstance(item, str | int | float | bool):
            raise InvalidInputError(f"{where}: the value of {key[:40]!r} is not text, a number or a boolean", where)
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidInputError(f"{where}: the value of {key[:40]!r} is {item}", where)
        if where == "headers":
            _header(key, item)
        checked[_template(key, where)] = _template(item, where) if isinstance(item, str) else item
    return checked


def _header(name: str, value: Any) -> None:
    if "{{" not in name:
        if not set(name) <= _HEADER_NAME:
            raise InvalidInputError(f"headers: {name[:40]!r} is not a header name", "headers")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidInputError(f"headers: {name} is set by the request itself", "headers")
    if isinstance(value, str) and not value.isprintable():
        raise InvalidInputError(f"headers: the value of {name[:40]!r} has a control character", "headers")


def _auth(value: Any) -> dict[str, str]:
    value = _maybe_object(value, "auth")
    if not isinstance(value, dict):
        raise InvalidInputError("auth is {username, password}", "auth")
    username = _first(value, "username", "user")
    password = _first(value, "password", "pass")
    for part in (username, password):
        if part is not None and (not isinstance(part, str) or len(part) > 1024 or not part.isprintable()):
            raise InvalidInputError("auth: username and password are text", "auth")
    return {"username": _template(username or "", "auth"), "password": _template(password or "", "auth")}
