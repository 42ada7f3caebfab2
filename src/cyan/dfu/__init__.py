"""USB DFU access to Gen 2 devices through the ``dfu-util`` program (an adapter; the key areas and their
meaning are in :mod:`cyan.keys`, protocol.md §11)."""

from ._dfu_util import (
    DFU_MODE_HELP,
    DfuAccessError,
    DfuDevice,
    DfuError,
    DfuTransferError,
    DfuUtil,
    DfuUtilMissingError,
    NoDfuDeviceError,
    SeveralDfuDevicesError,
    WrongDeviceError,
    parse_list,
)

__all__ = [
    "DFU_MODE_HELP",
    "DfuAccessError",
    "DfuDevice",
    "DfuError",
    "DfuTransferError",
    "DfuUtil",
    "DfuUtilMissingError",
    "NoDfuDeviceError",
    "SeveralDfuDevicesError",
    "WrongDeviceError",
    "parse_list",
]
