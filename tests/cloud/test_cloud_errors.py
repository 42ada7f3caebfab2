"""The cloud's errors cross from a device process to the parent pickled: each must arrive whole."""

from __future__ import annotations

import pickle

import pytest

from cyan.cloud import errors


@pytest.mark.parametrize(
    "error",
    [
        errors.CloudError("something"),
        errors.DeviceNotFoundError("kitchen"),
        errors.DeviceOfflineError("0123456789abcdef01234567"),
        errors.DeviceQuarantinedError("0123456789abcdef01234567"),
        errors.DeviceTimeoutError("0123456789abcdef01234567", "call of 'led'", 20.0),
        errors.FunctionRefusedError("device 0123456789abcdef01234567: the argument is too long"),
        errors.UnknownFunctionError("0123456789abcdef01234567", "led"),
        errors.UnknownVariableError("0123456789abcdef01234567", "temp"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_cloud_error_survives_pickling(error: errors.CloudError) -> None:
    error.__dict__["hint"] = "an attribute set on the error travels too"
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error)
    assert str(restored) == str(error)
    assert restored.__dict__ == error.__dict__
