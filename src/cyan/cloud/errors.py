"""Domain errors. The API maps each to an HTTP status in one place; the CLI prints the message."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CloudError",
    "DeviceNotFoundError",
    "DeviceOfflineError",
    "DeviceQuarantinedError",
    "DeviceTimeoutError",
    "FunctionRefusedError",
    "UnknownFunctionError",
    "UnknownVariableError",
]


class CloudError(Exception):
    """Base class; the message is meant for people."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses take their parts, not their message, so the default pickling (call the class with
        # `args`) would fail; rebuild from the message instead. Device processes send these errors to the
        # parent pickled (cyan.server._ipc).
        return (_restore, (type(self), self.args), self.__dict__ or None)


def _restore(cls: type[CloudError], args: tuple[Any, ...]) -> CloudError:
    error = cls.__new__(cls)
    error.args = args
    return error


class DeviceNotFoundError(CloudError):
    def __init__(self, id_or_name: str) -> None:
        super().__init__(f"no device {id_or_name!r} is registered")
        self.id_or_name = id_or_name


class DeviceOfflineError(CloudError):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} is not connected")
        self.device_id = device_id


class UnknownFunctionError(CloudError):
    def __init__(self, device_id: str, name: str) -> None:
        super().__init__(f"device {device_id} has no function {name!r}")


class UnknownVariableError(CloudError):
    def __init__(self, device_id: str, name: str) -> None:
        super().__init__(f"device {device_id} has no variable {name!r}")
        self.name = name


class DeviceQuarantinedError(CloudError):
    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"device {device_id} is connected in quarantine: it presented a new key that an operator must "
            "approve before it gets any access (cyan policy approve)"
        )
        self.device_id = device_id


class DeviceTimeoutError(CloudError):
    def __init__(self, device_id: str, what: str, seconds: float) -> None:
        super().__init__(f"device {device_id} did not answer the {what} within {seconds:g} s")


class FunctionRefusedError(CloudError):
    """The device refused the call (for example an argument too long for it, protocol.md §6.5)."""
