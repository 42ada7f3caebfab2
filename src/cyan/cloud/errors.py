"""Domain errors. The API maps each to an HTTP status in one place; the CLI prints the message."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "CloudError",
    "ConflictError",
    "DeviceNameAmbiguousError",
    "DeviceNotFoundError",
    "DeviceOfflineError",
    "DeviceQuarantinedError",
    "DeviceTimeoutError",
    "FunctionRefusedError",
    "InvalidInputError",
    "NotFoundError",
    "PendingKeyChangedError",
    "PermissionDeniedError",
    "TooManyRequestsError",
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


class NotFoundError(CloudError):
    """There is no such thing, or it is not the caller's: the two are told apart to nobody."""


class DeviceNotFoundError(NotFoundError):
    def __init__(self, id_or_name: str) -> None:
        super().__init__(f"no device {id_or_name!r}: none is registered by that id or name, or it is not yours")
        self.id_or_name = id_or_name


class PermissionDeniedError(CloudError):
    """The caller may not do this at all (a role's act), whatever it is done to."""


class TooManyRequestsError(CloudError):
    """Too many tries in too short a time (failed logins): refused before any work; `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidInputError(CloudError):
    """The request itself is wrong; `field` names the part of it that is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConflictError(CloudError):
    """The request does not fit the current state (something changed meanwhile, or already exists)."""


class DeviceNameAmbiguousError(ConflictError):
    """A device name asked for across owners (an admin's view) that devices of several owners have: names are
    unique per owner only."""

    def __init__(self, name: str) -> None:
        super().__init__(f"devices of several owners are named {name!r}: name the device by its id")
        self.name = name


class AlreadyExistsError(ConflictError):
    """A device id or name, or a username, that is taken."""


class PendingKeyChangedError(ConflictError):
    """Approving or rejecting named a fingerprint that is not the device's pending key: the pending key
    changed since the owner looked. Nothing was done."""

    def __init__(self, device_id: str, named: str, pending: list[str]) -> None:
        now = ", ".join(pending) if pending else "none"
        super().__init__(
            f"device {device_id} has no pending key {named}; its pending key(s) now: {now}. Nothing was done: "
            "check the fingerprint the device presents before approving"
        )
        self.device_id = device_id
        self.named = named
        self.pending = pending


class DeviceOfflineError(CloudError):
    def __init__(self, device_id: str, consequence: str | None = None) -> None:
        super().__init__(f"device {device_id} is not connected" + (f": {consequence}" if consequence else ""))
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
