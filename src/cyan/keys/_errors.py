"""The one exception type of :mod:`cyan.keys` and the key-size constants."""

from __future__ import annotations

__all__ = ["DEVICE_KEY_BITS", "PUBLIC_EXPONENT", "SERVER_KEY_BITS", "KeyFormatError", "ServerAddressError"]

#: Device keys are RSA-1024: the firmware reads a 128-byte modulus at a fixed offset (protocol.md §2.2).
DEVICE_KEY_BITS = 1024
#: Server keys are RSA-2048: the firmware reads a 256-byte modulus at offset 33 (protocol.md §2.3).
SERVER_KEY_BITS = 2048
#: The firmware never reads the public exponent; it always assumes 65537 (protocol.md §2.2-§2.3).
PUBLIC_EXPONENT = 65537


class KeyFormatError(ValueError):
    """A key or key file that cannot be used.

    The message says precisely what is wrong (which field, which offset, what was expected) so that it can be
    shown to an operator as it is.
    """


class ServerAddressError(KeyFormatError):
    """A server address that cannot be stored in a server-key file: a host a device could not use."""

    hint = (
        "give the address devices reach this server by: an IPv4 address a.b.c.d or a domain name "
        "(cyan serve --public-address or CYAN_PUBLIC_ADDRESS; cyan keys server --host)"
    )
