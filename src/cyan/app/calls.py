"""Asking devices: function calls, variable reads, signals, and events published to them."""

from __future__ import annotations

from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import DeviceRecord
from cyan.cloud.service import Cloud, VariableValue
from cyan.protocol.messages import MAX_EVENT_DATA, MAX_EVENT_NAME, MAX_FUNCTION_ARGUMENT

from ._context import AppContext, visible_device
from .actors import Actor

__all__ = ["DeviceCalls", "check_event_name"]

#: The longest time-to-live an event may carry (24 bits, as Particle's API takes).
MAX_TTL = 16_777_215


def check_event_name(name: object) -> str:
    """An event name as a device and every stream can carry it: 1 to 64 bytes, no control character (a
    newline would end a server-sent event's field and forge another)."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("the event name is required", "name")
    if len(name.encode()) > MAX_EVENT_NAME:
        raise InvalidInputError(f"the event name is over {MAX_EVENT_NAME} bytes", "name")
    if not name.isprintable():
        raise InvalidInputError("the event name has a control character", "name")
    return name


class DeviceCalls:
    def __init__(self, ctx: AppContext, cloud: Cloud) -> None:
        self._ctx = ctx
        self._cloud = cloud

    async def call_function(self, actor: Actor, device: str, name: str, argument: str) -> tuple[str, int]:
        """The device's id and the function's return value."""
        record, value = await self.function_call(actor, device, name, argument)
        return record.id, value

    async def function_call(self, actor: Actor, device: str, name: str, argument: str) -> tuple[DeviceRecord, int]:
        """The device's record, as read to authorize the call (what the API answers with), and the function's
        return value: the device is looked up once per call."""
        record = await visible_device(self._ctx.store, actor, device)
        if len(argument.encode()) > MAX_FUNCTION_ARGUMENT:
            raise InvalidInputError(f"the argument is over {MAX_FUNCTION_ARGUMENT} bytes", "arg")
        return record, await self._cloud.call_function(record.id, name, argument)

    async def read_variable(self, actor: Actor, device: str, name: str) -> tuple[str, bytes, VariableValue | None]:
        record, raw, value = await self.variable_read(actor, device, name)
        return record.id, raw, value

    async def variable_read(
        self, actor: Actor, device: str, name: str
    ) -> tuple[DeviceRecord, bytes, VariableValue | None]:
        """The device's record, as read to authorize the read, and the variable's bytes and value."""
        record = await visible_device(self._ctx.store, actor, device)
        raw, value = await self._cloud.read_variable(record.id, name)
        return record, raw, value

    async def signal(self, actor: Actor, device: str, on: bool) -> str:
        record = await visible_device(self._ctx.store, actor, device)
        await self._cloud.signal(record.id, on)
        return record.id

    def publish(self, actor: Actor, name: object, data: object, *, private: bool = True, ttl: object = 60) -> None:
        """An event to the actor's devices and to every stream that may see it."""
        name = check_event_name(name)
        text = None if data is None else str(data)
        if text is not None and len(text.encode()) > MAX_EVENT_DATA:
            raise InvalidInputError(f"the event data is over {MAX_EVENT_DATA} bytes", "data")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
            raise InvalidInputError(f"ttl is a whole number of seconds from 0 to {MAX_TTL}", "ttl")
        self._cloud.publish(name, text, owner=actor.username, private=private, ttl=ttl)
