"""The CoAP message codec (RFC 7252 framing as the Gen 2 firmware uses it, protocol.md §6.1).

This is a plain, strict codec: it turns bytes into a `Message` and back, and knows nothing of what the
messages mean (that is `messages.py`). Two firmware habits that RFC 7252 frowns upon are kept because
real devices depend on them:

* a payload marker followed by no payload: the firmware publishes an event with empty data as a bare
  ``FF`` (§6.4), so `Message.payload` distinguishes ``None`` (no marker) from ``b""`` (marker only);
* options are emitted exactly in the order given, with the minimal delta/length encoding, because the
  firmware parses server requests at fixed offsets (§6.1): the caller decides the option layout.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CoapDecodeError",
    "Code",
    "Message",
    "MessageType",
    "Option",
    "decode",
    "format_code",
]


class CoapDecodeError(ValueError):
    """The bytes are not a well-formed CoAP message; the text says which byte and why."""


class MessageType(enum.IntEnum):
    CON = 0
    NON = 1
    ACK = 2
    RST = 3


class Code(enum.IntEnum):
    """The CoAP codes that occur on this protocol (class << 5 | detail)."""

    EMPTY = 0x00
    GET = 0x01
    POST = 0x02
    PUT = 0x03
    CREATED = 0x41  # 2.01
    CHANGED = 0x44  # 2.04
    CONTENT = 0x45  # 2.05
    BAD_REQUEST = 0x80  # 4.00
    NOT_FOUND = 0x84  # 4.04
    INTERNAL_SERVER_ERROR = 0xA0  # 5.00
    SERVICE_UNAVAILABLE = 0xA3  # 5.03


class Option(enum.IntEnum):
    URI_PATH = 11
    MAX_AGE = 14
    URI_QUERY = 15
    NO_RESPONSE = 258


def format_code(code: int) -> str:
    """``0x45`` -> ``"2.05"``, the way CoAP codes are written in logs and specs."""
    return f"{code >> 5}.{code & 0x1F:02d}"


_MAX_TOKEN_LENGTH = 8
_PAYLOAD_MARKER = 0xFF


@dataclass(frozen=True, slots=True)
class Message:
    """One CoAP message. `options` keeps order and repetition; numbers must not decrease."""

    type: MessageType
    code: int
    message_id: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.type, MessageType):
            raise ValueError(f"message type {self.type!r} is not CON, NON, ACK or RST")
        if not 0 <= self.message_id <= 0xFFFF:
            raise ValueError(f"message id {self.message_id} is outside 0..65535")
        if not 0 <= self.code <= 0xFF:
            raise ValueError(f"code {self.code} is outside 0..255")
        if len(self.token) > _MAX_TOKEN_LENGTH:
            raise ValueError(f"token of {len(self.token)} bytes; CoAP allows at most 8")
        previous = 0
        for number, value in self.options:
            if number < previous:
                raise ValueError(f"option {number} after option {previous}: options must be in order")
            if number - previous > 0xFFFF + 269:
                # The 14-form extension (+2 bytes) tops out at a delta of 65804 (§6.1, RFC 7252 §3.1);
                # without this check encode() would fail with OverflowError.
                raise ValueError(f"option {number} after option {previous}: a delta above 65804 cannot be encoded")
            if len(value) > 0xFFFF + 269:
                raise ValueError(f"option {number} value of {len(value)} bytes is too long")
            previous = number

    @classmethod
    def empty(cls, type: MessageType, message_id: int) -> Message:
        """An empty message (a ping when CON, a bare acknowledgement when ACK), built without the general
        checks: it is sent once per ping, the commonest message of an idle fleet."""
        if not 0 <= message_id <= 0xFFFF:
            raise ValueError(f"message id {message_id} is outside 0..65535")
        return _trusted(type, Code.EMPTY, message_id, token=b"", options=(), payload=None)

    # -- reading helpers ------------------------------------------------------------------------

    def option_values(self, number: int) -> list[bytes]:
        return [value for n, value in self.options if n == number]

    @property
    def uri_path(self) -> tuple[bytes, ...]:
        """All Uri-Path segments in order (an event name travels as a single segment, §6.4)."""
        return tuple(self.option_values(Option.URI_PATH))

    @property
    def uri_query(self) -> list[bytes]:
        return self.option_values(Option.URI_QUERY)

    @property
    def is_empty(self) -> bool:
        """An empty message (code 0.00): a ping when CON, a bare acknowledgement when ACK."""
        return self.code == Code.EMPTY and not self.options and self.payload is None

    # -- encoding -------------------------------------------------------------------------------

    def encode(self) -> bytes:
        if not self.token and not self.options and self.payload is None:
            # Pings and acknowledgements, most of an idle fleet's traffic: the 4-byte header alone.
            message_id = self.message_id
            return bytes((0x40 | self.type << 4, self.code, message_id >> 8, message_id & 0xFF))
        out = bytearray((0x40 | (self.type << 4) | len(self.token), self.code))
        out += self.message_id.to_bytes(2, "big")
        out += self.token
        previous = 0
        for number, value in self.options:
            delta = number - previous
            previous = number
            delta_nibble, delta_ext = _encode_nibble(delta)
            length_nibble, length_ext = _encode_nibble(len(value))
            out.append(delta_nibble << 4 | length_nibble)
            out += delta_ext
            out += length_ext
            out += value
        if self.payload is not None:
            out.append(_PAYLOAD_MARKER)
            out += self.payload
        return bytes(out)


def _encode_nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def decode(data: bytes) -> Message:
    """Parse one CoAP message occupying all of `data`. Raises `CoapDecodeError`."""
    if len(data) < 4:
        raise CoapDecodeError(f"message of {len(data)} bytes is shorter than the 4-byte CoAP header")
    first = data[0]
    if first >> 6 != 1:
        raise CoapDecodeError(f"CoAP version {first >> 6} in header byte {first:#04x}; only version 1 exists")
    token_length = first & 0x0F
    if token_length > _MAX_TOKEN_LENGTH:
        raise CoapDecodeError(f"token length {token_length} is reserved (at most 8)")
    end_of_token = 4 + token_length
    size = len(data)
    if size < end_of_token:
        raise CoapDecodeError(f"message ends inside its {token_length}-byte token")
    if size == end_of_token:
        options: tuple[tuple[int, bytes], ...] = ()
        payload = None
    else:
        found, payload = _decode_options(data, end_of_token)
        options = tuple(found)
    # What the bytes can express is already valid (a 16-bit id, an 8-bit code, a token of at most 8 bytes,
    # option numbers that only grow), so the checks of `Message.__init__` are skipped: an idle fleet's
    # pings and acknowledgements are most of what a server parses.
    return _trusted(
        _MESSAGE_TYPES[(first >> 4) & 0x03],
        data[1],
        data[2] << 8 | data[3],
        token=bytes(data[4:end_of_token]) if token_length else b"",
        options=options,
        payload=payload,
    )


_MESSAGE_TYPES = tuple(MessageType)
_new_message = object.__new__
_set = object.__setattr__


def _trusted(
    type: MessageType,
    code: int,
    message_id: int,
    *,
    token: bytes,
    options: tuple[tuple[int, bytes], ...],
    payload: bytes | None,
) -> Message:
    """A `Message` whose fields are known to be valid, made without `__post_init__`'s checks."""
    message = _new_message(Message)
    _set(message, "type", type)
    _set(message, "code", code)
    _set(message, "message_id", message_id)
    _set(message, "token", token)
    _set(message, "options", options)
    _set(message, "payload", payload)
    return message


def _decode_options(data: bytes, offset: int) -> tuple[list[tuple[int, bytes]], bytes | None]:
    options: list[tuple[int, bytes]] = []
    number = 0
    size = len(data)
    while offset < size:
        header = data[offset]
        if header == _PAYLOAD_MARKER:
            return options, bytes(data[offset + 1 :])
        offset += 1
        delta, offset = _decode_nibble(data, offset, header >> 4, "delta")
        length, offset = _decode_nibble(data, offset, header & 0x0F, "length")
        if offset + length > size:
            raise CoapDecodeError(f"option {number + delta} claims {length} bytes but only {size - offset} remain")
        number += delta
        options.append((number, bytes(data[offset : offset + length])))
        offset += length
    return options, None


def _decode_nibble(data: bytes, offset: int, nibble: int, what: str) -> tuple[int, int]:
    if nibble < 13:
        return nibble, offset
    if nibble == 13:
        if offset >= len(data):
            raise CoapDecodeError(f"message ends inside an extended option {what}")
        return data[offset] + 13, offset + 1
    if nibble == 14:
        if offset + 2 > len(data):
            raise CoapDecodeError(f"message ends inside an extended option {what}")
        return int.from_bytes(data[offset : offset + 2], "big") + 269, offset + 2
    raise CoapDecodeError(f"option {what} nibble 15 is reserved outside the payload marker")
