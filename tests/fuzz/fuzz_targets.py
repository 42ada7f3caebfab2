"""Fuzz targets: every decoder of untrusted bytes, and the invariant each one keeps.

A target is a function of one `bytes` argument. It returns normally when the code under test did
something allowed with the input: produced a result, or raised one of the project's own errors for it
(the exact type the module documents, raised by Cyan's code, not a foreign exception passing through).
Anything else propagates: that is a crash, for atheris (`scripts/fuzz`) and for the tests alike.

The targets take plain bytes and read them with `Data`, not with atheris's FuzzedDataProvider, so that the
replay tests run without atheris and every input means the same thing to both. Seeds for every corpus
come from the real firmware recordings in tests/vectors/ and the device logs in tests/diagnose/logs/
(`seeds`); `scripts/fuzz --seed` writes them to tests/fuzz/corpus/<target>/.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import cyan
from cyan import diagnose as dg
from cyan import keys
from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Application,
    DeviceConfig,
    DeviceConnection,
    LocalProtocolError,
    Reason,
    RemoteProtocolError,
    ServerConfig,
    ServerConnection,
    State,
    Subscription,
    VariableType,
    binary,
    coap,
    handshake,
)
from cyan.protocol import messages as m
from cyan.protocol.events import DeviceIdentified, Event, PrivateKeyOperationNeeded
from cyan.protocol.framing import (
    DEVICE_MAX_FRAME_LENGTH_LEGACY,
    DEVICE_MAX_FRAME_LENGTH_NEW,
    SERVER_MAX_FRAME_LENGTH,
    FrameDecoder,
    FrameEncoder,
    FramingError,
    SessionCredentials,
)
from cyan.testing import ScriptedRandom

__all__ = ["CORPUS", "TARGETS", "Data", "Target", "seeds"]

TESTS = Path(__file__).parents[1]
VECTORS = TESTS / "vectors"
LOGS = TESTS / "diagnose" / "logs"
CORPUS = Path(__file__).parent / "corpus"
_CYAN_SOURCE = str(Path(cyan.__file__).parent)


# -- reading the fuzzer's bytes ------------------------------------------------------------------------


class Data:
    """The input, read front to back. Reads past the end give zeros and empty strings, so every input
    means something and the fuzzer never wastes a run on a too-short one."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def byte(self) -> int:
        if self._at >= len(self._data):
            return 0
        self._at += 1
        return self._data[self._at - 1]

    def take(self, count: int) -> bytes:
        out = self._data[self._at : self._at + count]
        self._at += len(out)
        return out

    def chunk(self) -> bytes:
        """A length-prefixed piece (2-byte big-endian length): what `piece()` writes."""
        return self.take(self.byte() << 8 | self.byte())

    def rest(self) -> bytes:
        return self.take(self.remaining)


def piece(data: bytes) -> bytes:
    """`data` as `Data.chunk()` reads it."""
    return len(data).to_bytes(2, "big") + data


# -- the invariant -------------------------------------------------------------------------------------


def _raised_by_cyan(exc: BaseException) -> bool:
    """True when the innermost frame of the traceback is Cyan's own code: the error was raised on
    purpose, not let through from the standard library or `cryptography`."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_CYAN_SOURCE)


@contextmanager
def only(*allowed: type[BaseException]) -> Iterator[None]:
    """Let the block raise only exactly these types (a subclass is something else: UnicodeDecodeError
    is not the ValueError a module documents), and only from Cyan's own code. Anything else goes on."""
    try:
        yield
    except allowed as exc:
        if type(exc) not in allowed or not _raised_by_cyan(exc):
            raise


@contextmanager
def peer_input(connection: ServerConnection | DeviceConnection) -> Iterator[None]:
    """What the peer sends may only raise `RemoteProtocolError`, and only once it has closed the connection
    and kept the failure (the step and reason the device server records)."""
    try:
        yield
    except RemoteProtocolError as exc:
        if type(exc) is not RemoteProtocolError or not _raised_by_cyan(exc):
            raise
        if not connection.closed or connection.failure is None or connection.failure.reason is not exc.reason:
            raise AssertionError(f"{exc!r} did not close the connection with its failure") from exc


def _check_events(connection: ServerConnection | DeviceConnection) -> list[Event]:
    events = []
    while (event := connection.next_event()) is not None:
        if not isinstance(event, Event):
            raise TypeError(f"the connection queued {event!r}, which is not an event")
        events.append(event)
    return events


# -- fixed keys and credentials ------------------------------------------------------------------------


def _load_key(name: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((VECTORS / "device-os-3.1.0" / name).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@cache
def _server_key() -> rsa.RSAPrivateKey:
    return _load_key("server_key.pem")


@cache
def _device_key() -> rsa.RSAPrivateKey:
    return _load_key("device_key.pem")


def _device_public_der() -> bytes:
    return (
        _device_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")
#: Session credentials of the harness's own sessions (any 40 bytes will do).
CREDENTIALS = bytes(range(40))


@cache
def _recorded_credentials() -> tuple[bytes, ...]:
    """The credentials of every recorded session, so that the recorded frames decrypt."""
    found = [CREDENTIALS]
    for path in sorted(VECTORS.glob("**/*.session.json")):
        session = json.loads(path.read_text())
        if session.get("session_credentials"):
            found.append(bytes.fromhex(session["session_credentials"]))
    return tuple(found)


# -- framing ---------------------------------------------------------------------------------------------

_MAX_LENGTHS = (SERVER_MAX_FRAME_LENGTH, DEVICE_MAX_FRAME_LENGTH_NEW, DEVICE_MAX_FRAME_LENGTH_LEGACY)


def fuzz_framing(data: bytes) -> None:
    """Frames of any bytes, in any chunking: messages or `FramingError`; a frame we encode decodes back."""
    d = Data(data)
    mode = d.byte()
    credentials = _recorded_credentials()
    chosen = SessionCredentials.from_bytes(credentials[d.byte() % len(credentials)])
    if mode & 0x80:
        with only(ValueError):
            SessionCredentials.from_bytes(d.chunk())
        plaintext = d.chunk()
        decoder = FrameDecoder(chosen, max_length=SERVER_MAX_FRAME_LENGTH)
        decoder.feed(FrameEncoder(chosen).encode(plaintext))
        if decoder.next_frame() != plaintext:
            raise AssertionError("a frame did not decrypt to what was encrypted")
        return
    decoder = FrameDecoder(chosen, max_length=_MAX_LENGTHS[mode % 3], strict_padding=bool(mode & 0x40))
    step = d.byte()
    stream = d.rest()
    step = step or len(stream) or 1
    with only(FramingError):
        for start in range(0, len(stream), step):
            decoder.feed(stream[start : start + step])
            while decoder.next_frame() is not None:
                pass


# -- handshake -------------------------------------------------------------------------------------------

_NONCE = bytes(range(100, 140))


def fuzz_handshake(data: bytes) -> None:
    """The handshake messages: `HandshakeError` for bad content, `ValueError` for a wrong size."""
    d = Data(data)
    flags = d.byte()
    mode = flags % 4
    body = d.rest()
    if flags & 4:
        # The RSA messages at their exact sizes, so that most runs reach the decryption, not the size check.
        size = handshake.SESSION_KEY_MESSAGE_SIZE if mode == 2 else handshake.IDENTITY_MESSAGE_SIZE
        body = body[:size].ljust(size, b"\x00")
    if mode == 0:
        with only(handshake.HandshakeError):
            handshake.parse_identity_plaintext(_NONCE + body, _NONCE)
    elif mode == 1:
        with only(handshake.HandshakeError):
            handshake.parse_identity_plaintext(body, _NONCE)
    elif mode == 2:
        with only(handshake.HandshakeError, ValueError):
            handshake.open_session_key_message(_device_key(), _server_key().public_key(), body)
    else:
        with only(handshake.HandshakeError, ValueError):
            handshake.decrypt_identity_message(_server_key(), body, _NONCE)


# -- CoAP and messages -----------------------------------------------------------------------------------


def fuzz_coap(data: bytes) -> None:
    """Any bytes: a `Message` that encodes back to exactly those bytes, or `CoapDecodeError`."""
    with only(coap.CoapDecodeError):
        message = coap.decode(data)
        if message.encode() != data:
            raise AssertionError(f"{data.hex()} decodes to a message that encodes as {message.encode().hex()}")
        _ = (message.uri_path, message.uri_query, message.is_empty, coap.format_code(message.code))


def fuzz_messages(data: bytes) -> None:
    """The payload decoders of messages.py: a value, or the `ValueError` they document, raised by them."""
    d = Data(data)
    mode = d.byte() % 8
    payload = d.rest()
    with only(ValueError):
        if mode == 0:
            hello = m.parse_hello(payload)
            m.parse_hello(hello.encode())
        elif mode == 1:
            m.decode_describe(payload)
        elif mode == 2:
            m.json_object_or_none(payload)
        elif mode == 3:
            m.decode_goodbye(payload)
        elif mode == 4:
            m.parse_chunk_missed(payload)
        elif mode == 5:
            for kind in VariableType:
                with only(ValueError):
                    m.decode_variable(kind, payload)
        else:
            # A whole message, as a connection reads it: decode, then the payload by its path.
            with only(coap.CoapDecodeError):
                message = coap.decode(payload)
                body = message.payload or b""
                path = message.uri_path[:1]
                if path == (b"h",):
                    m.parse_hello(body)
                elif path == (b"x",):
                    m.decode_goodbye(body)
                elif path == (b"d",):
                    m.decode_describe(body)
                elif path == (b"c",):
                    m.parse_chunk_missed(body)


# -- the connection state machines -----------------------------------------------------------------------

_FAST = ServerConfig(describe_delay=1.0)


def _server_command(server: ServerConnection, d: Data, now: float) -> None:
    """One of the server's commands, as the device server would call it in a session."""
    kind = d.byte() % 10
    name = d.take(d.byte() % 16).decode("ascii", "replace") or "x"
    timeout = float(d.byte() % 30) or None
    # The caller's mistakes, each said so: the 1-byte token space runs out (LocalProtocolError), an argument
    # is longer than a device takes (ValueError from the message builders, as messages.py documents).
    with only(LocalProtocolError, ValueError):
        if kind == 0:
            server.call_function(name, d.chunk(), now, timeout)
        elif kind == 1:
            server.read_variable(name, now, timeout)
        elif kind == 2:
            server.request_describe(now, d.byte() % 8, timeout)
        elif kind == 3:
            server.signal(bool(d.byte() & 1), now, timeout)
        elif kind == 4:
            server.send_event(name, d.chunk()[:600], ttl=d.byte())
        elif kind == 5:
            server.ping()
        elif kind == 6:
            server.begin_update(file_size=d.byte() << 8 | d.byte(), chunk_size=512, fast=bool(d.byte() & 1), now=now)
        elif kind == 7:
            index = d.byte()
            server.send_chunk(d.chunk()[:512], d.byte(), index=index if index & 1 else None, now=now)
        elif kind == 8:
            server.finish_update(now, timeout)
        else:
            server.suspend_idle_timeout(bool(d.byte() & 1))


def _server_rng(seed: int) -> ScriptedRandom:
    """The server's randomness: our nonce, message id, token and session credentials, then padding."""
    return ScriptedRandom(_NONCE, b"\x12\x34", b"\x56", CREDENTIALS, seed=seed)


def _server_handshake(server: ServerConnection, d: Data, now: float) -> FrameEncoder | None:
    """Take the server through the handshake with the private-key operations done by the harness, so
    that the fuzzer chooses the identity plaintext (no RSA per run); return the device's frame encoder."""
    (operation,) = _check_events(server)
    assert isinstance(operation, PrivateKeyOperationNeeded)
    choice = d.byte()
    identity: bytes | None
    if choice % 4 == 0:
        identity = None  # the padding did not decrypt
    elif choice % 4 == 1:
        identity = d.chunk()
    else:
        identity = _NONCE + DEVICE_ID + (_device_public_der() if choice % 4 == 2 else d.chunk())
    with peer_input(server):
        server.private_key_done(identity, now)
    events = _check_events(server)
    if server.closed or not events:
        return None
    (identified,) = events
    assert isinstance(identified, DeviceIdentified)
    if choice & 0x80:
        server.reject(Reason.KEY_REJECTED)
        return None
    # A 52-byte identity carries no key: the caller's policy would use the one it holds.
    server.accept(identified.public_key or _device_key().public_key(), now)
    (sign,) = _check_events(server)
    assert isinstance(sign, PrivateKeyOperationNeeded)
    assert sign.operation == "sign"
    if choice & 0x40:
        server.private_key_failed("the harness failed the signature")
        return None
    server.private_key_done(bytes(256), now)
    return FrameEncoder(SessionCredentials.from_bytes(CREDENTIALS))


def fuzz_server(data: bytes) -> None:
    """The server role fed anything: events, or `RemoteProtocolError` (h11's fuzz invariant).

    Raw bytes reach the handshake; framed plaintexts, encrypted with the session's own credentials,
    reach every message handler; commands and timers interleave so that answers find their requests.
    """
    d = Data(data)
    now = 1000.0
    server = ServerConnection(None, now, config=_FAST, rng=_server_rng(d.byte()))
    server.data_to_send()
    encoder: FrameEncoder | None = None
    if d.byte() & 1:
        raw = d.chunk()
        with peer_input(server):
            server.receive_data(raw, now)
        _check_events(server)
    else:
        server.receive_data(bytes(handshake.IDENTITY_MESSAGE_SIZE), now)
        encoder = _server_handshake(server, d, now)
    while d.remaining and not server.closed:
        op = d.byte() % 8
        with peer_input(server):
            if op in (0, 1, 2) and encoder is not None:
                frame = encoder.encode(d.chunk())
                cut = d.byte() % (len(frame) + 1)
                server.receive_data(frame[:cut], now)
                if not server.closed:
                    server.receive_data(frame[cut:], now)
            elif op == 3:
                server.receive_data(d.chunk(), now)
            elif op == 4:
                now += d.byte() / 4
                server.handle_timer(now)
                timer = server.get_timer()
                if timer is not None and d.byte() & 1:
                    now = max(now, timer)
                    server.handle_timer(now)
            elif op == 5 and server.state is State.CONNECTED:
                _server_command(server, d, now)
            elif op == 6:
                server.receive_eof(now + d.byte() / 64)
            elif op == 7:
                server.close()
        _check_events(server)
        server.data_to_send()


@dataclass(frozen=True)
class _DeviceSession:
    """A handshake done once: what the server sends a device until the session starts."""

    nonce: bytes
    session_key: bytes


@cache
def _device_session() -> _DeviceSession:
    nonce = bytes(range(40))
    message = handshake.build_session_key_message(
        _server_key(), _device_key().public_key(), CREDENTIALS, ScriptedRandom(seed=1)
    )
    return _DeviceSession(nonce, message)


_APPLICATION = Application(
    functions=["setArg", "f"],
    variables={"counter": (VariableType.INT, 7), "temp": (VariableType.DOUBLE, 21.5), "s": (VariableType.STRING, "x")},
    subscriptions=[Subscription("vdev/ping"), Subscription("", m.SubscriptionScope.DEVICE, "0123")],
)


def fuzz_device(data: bytes) -> None:
    """The device role fed anything, as the simulator runs it: events, or `RemoteProtocolError`."""
    d = Data(data)
    setup = d.byte()
    now = 1000.0
    firmware = DEVICE_OS_0_6_1 if setup & 1 else DEVICE_OS_3_1_0
    config = DeviceConfig(
        strict_padding=bool(setup & 2),
        updates_enabled=not setup & 4,
        fast_ota=None if not setup & 8 else bool(setup & 16),
    )
    application = Application(
        functions=list(_APPLICATION.functions),
        variables=dict(_APPLICATION.variables),
        subscriptions=list(_APPLICATION.subscriptions),
    )
    device = DeviceConnection(
        DEVICE_ID,
        _device_key(),
        _server_key().public_key(),
        now,
        firmware=firmware,
        application=application,
        config=config,
        rng=ScriptedRandom(seed=setup),
    )
    encoder: FrameEncoder | None = None
    if setup & 32:
        with peer_input(device):
            device.receive_data(d.chunk(), now)
    else:
        session = _device_session()
        device.receive_data(session.nonce + session.session_key, now)
        encoder = FrameEncoder(SessionCredentials.from_bytes(CREDENTIALS))
    _check_events(device)
    device.data_to_send()
    while d.remaining and not device.closed:
        op = d.byte() % 8
        with peer_input(device):
            if op in (0, 1, 2) and encoder is not None:
                frame = encoder.encode(d.chunk())
                cut = d.byte() % (len(frame) + 1)
                device.receive_data(frame[:cut], now)
                if not device.closed:
                    device.receive_data(frame[cut:], now)
            elif op == 3:
                device.receive_data(d.chunk(), now)
            elif op == 4:
                now += d.byte() / 4
                device.handle_timer(now)
                timer = device.get_timer()
                if timer is not None and d.byte() & 1:
                    now = max(now, timer)
                    device.handle_timer(now)
            elif op == 5 and device.state is State.CONNECTED:
                _device_command(device, d, now)
            elif op == 6:
                device.receive_eof(now)
        _check_events(device)
        device.data_to_send()


def _device_command(device: DeviceConnection, d: Data, now: float) -> None:
    kind = d.byte() % 5
    with only(LocalProtocolError):  # Goodbye on firmware without it: the caller's mistake, said so
        if kind == 0:
            device.publish(d.take(d.byte() % 70).decode("utf-8", "replace") or "e", d.chunk(), now, with_ack=True)
        elif kind == 1:
            device.sync_time()
        elif kind == 2:
            device.respond_function(d.byte(), d.byte() - 128)
        elif kind == 3:
            device.goodbye(m.Goodbye(cloud_reason=d.byte()))
        else:
            device.subscribe(Subscription(d.take(d.byte() % 8).decode("utf-8", "replace")))


# -- keys ------------------------------------------------------------------------------------------------

_LAYOUTS = (None, keys.Layout.PHOTON, keys.Layout.CORE)


def fuzz_keys(data: bytes) -> None:
    """Key files and key areas: a key or report, or `KeyFormatError` naming what is wrong."""
    d = Data(data)
    mode = d.byte()
    body = d.rest()
    layout = _LAYOUTS[(mode >> 4) % 3]
    with only(keys.KeyFormatError):
        match mode % 9:
            case 0:
                key = keys.load_private_key(body)
                keys.fingerprint(key)
            case 1:
                keys.fingerprint(keys.load_public_key(body))
            case 2:
                parsed = keys.parse_server_key_file(body, layout)
                _ = (parsed.effective_address, str(parsed.effective_address))
            case 3:
                keys.firmware_parse_device_key(body)
            case 4:
                keys.is_firmware_parsable(body)
            case 5:
                keys.device_public_key_der_from_private(body)
            case 6:
                keys.read_firmware_server_key(body)
            case 7:
                keys.addresses_of([body])
            case _:
                keys.check_device_public_key(keys.load_public_key(body))


def fuzz_keys_inspect(data: bytes) -> None:
    """What `cyan keys inspect` reads: files, DCT images and key areas; a report or `KeyFormatError`."""
    d = Data(data)
    mode = d.byte()
    body = d.rest()
    layout = _LAYOUTS[(mode >> 4) % 3]
    facts = keys.CloudFacts(
        device_id=DEVICE_ID.hex(),
        device_registered=bool(mode & 1),
        device_key_fingerprint="SHA256:" + "0" * 64,
        server_key_fingerprints=("SHA256:" + "1" * 64,),
        addresses=(keys.ServerAddress("127.0.0.1", 5683),),
    )
    with only(keys.KeyFormatError):
        match (mode >> 1) % 4:
            case 0:
                keys.inspect_file(body, layout, facts).to_dict()
            case 1:
                image = keys.DctImage(layout or keys.Layout.PHOTON, body)
                keys.inspect_image(image, facts).to_dict()
                image.is_blank(image.keys.private_key)
            case 2:
                keys.inspect_private_key(body)
            case _:
                split = min(len(body), 612)
                keys.inspect_key_areas(
                    body[:split], body[split:] or None, layout or keys.Layout.PHOTON, facts, public_area=body[:384]
                ).to_dict()


# -- firmware binaries -----------------------------------------------------------------------------------


def fuzz_binary(data: bytes) -> None:
    """Module binaries: a `ModuleInfo`, or `ModuleError` saying why a device would refuse it.

    With the first byte's low bit set, the harness makes the header's size and the CRC agree with the
    bytes before parsing, so that the checks behind them are reached too."""
    d = Data(data)
    mode = d.byte()
    image = bytearray(d.rest())
    if mode & 1:
        offset = (0, 0x184, 0x10C)[(mode >> 1) % 3]
        if len(image) >= offset + binary.MODULE_PREFIX_SIZE + 4:
            start = int.from_bytes(image[offset : offset + 4], "little")
            struct.pack_into("<I", image, offset + 4, (start + len(image) - 4) & 0xFFFFFFFF)
            struct.pack_into(">I", image, len(image) - 4, zlib.crc32(bytes(image[:-4])))
    with only(binary.ModuleError):
        info = binary.parse_module(bytes(image))
        binary.check_module_for_device(info, platform_id=(None, 6, 8, 0)[mode >> 6], max_size=128 * 1024)
        _ = (info.describe_code, binary.platform_name(info.platform_id))


# -- device logs -----------------------------------------------------------------------------------------


def fuzz_diagnose(data: bytes) -> None:
    """`cyan diagnose` on any log: reading never fails (readers.py), so any exception is a bug.

    The bytes are decoded as the CLI decodes a log file (UTF-8, errors replaced); the first lines double
    as the LED descriptions and error codes a person would type."""
    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    diagnosis = dg.diagnose(text, source="fuzz", leds=lines[:2], codes=lines[2:4])
    json.dumps(diagnosis.to_json())
    diagnosis.summary_text()
    for line in lines[:8]:
        dg.explain_led(line)
        dg.explain_code_text(line)


# -- the catalogue ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    #: How long one input may take in the long runs before it counts as a hang (libFuzzer -timeout).
    timeout: int = 10
    #: The largest input the long runs try (libFuzzer -max_len).
    max_len: int = 4096
    #: Executions in the short run of the tests, beyond the corpus: about a second's worth here.
    short_runs: int = 2000


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("framing", fuzz_framing),
        Target("handshake", fuzz_handshake, max_len=1024),
        Target("coap", fuzz_coap),
        Target("messages", fuzz_messages),
        Target("server", fuzz_server, short_runs=1500),
        Target("device", fuzz_device, short_runs=1000),
        Target("keys", fuzz_keys, max_len=8192),
        Target("keys_inspect", fuzz_keys_inspect, max_len=16384, short_runs=500),
        Target("binary", fuzz_binary),
        Target("diagnose", fuzz_diagnose, max_len=16384, short_runs=200),
    )
}


# -- seeds from the recordings ---------------------------------------------------------------------------


def _sessions() -> Iterator[dict[str, object]]:
    for path in sorted(VECTORS.glob("**/*.session.json")):
        yield json.loads(path.read_text())


def _frames(session: dict[str, object], direction: str) -> list[dict[str, str]]:
    frames = session["frames"]
    assert isinstance(frames, list)
    return [f for f in frames if f["dir"] == direction and f["kind"] == "frame"]


def _plaintexts(direction: str) -> Iterator[list[bytes]]:
    for session in _sessions():
        found = [bytes.fromhex(f["plaintext"]) for f in _frames(session, direction) if "plaintext" in f]
        if found:
            yield found


def _key_files() -> list[bytes]:
    paths = [*VECTORS.glob("**/*.der"), *VECTORS.glob("**/*.pem"), *(TESTS / "keys" / "data").glob("*.*")]
    return [p.read_bytes() for p in sorted(paths) if p.suffix in (".der", ".pem")]


def _dct_images() -> Iterator[bytes]:
    """Photon and Core key images built from the recordings' keys, as `dfu-util -U` would dump them."""
    server_file = (VECTORS / "device-os-3.1.0" / "server_key.der").read_bytes()
    device = keys.encode_device_private_key(_device_key())
    photon = keys.DctImage.blank(keys.Layout.PHOTON).with_private_key(device).with_server_key_file(server_file)
    yield photon.data
    yield keys.DctImage.blank(keys.Layout.PHOTON).data[:2600]
    core_file = keys.build_server_key_file(_server_key().public_key(), "example.com", 5683, keys.Layout.CORE)
    yield keys.DctImage.blank(keys.Layout.CORE).with_private_key(device).with_server_key_file(core_file).data


def _modules() -> Iterator[bytes]:
    body = bytes(range(256)) * 4
    yield binary.build_module(body, platform_id=6)
    yield binary.build_module(body, platform_id=8, product_id=1234, product_version=5)
    yield binary.build_module(
        body, platform_id=6, function=binary.ModuleFunction.SYSTEM_PART, prefix_offset=0x184, dependencies=()
    )
    yield binary.build_module(body[:64], platform_id=0, prefix_offset=0x10C, start_address=0x08005000)


def _server_session_seed() -> bytes:
    """A session in the server target's terms: every command, answered with the token the server chose
    (its randomness is scripted: message ids from 0x1235, tokens from 0x57), then every device request."""
    out = bytearray(b"\x07\x00\x02")

    def frame(message: coap.Message) -> None:
        out.extend(b"\x00" + piece(message.encode()) + b"\x00")

    def command(kind: int, name: bytes = b"", extra: bytes = b"") -> None:
        out.extend(bytes((5, kind, len(name))) + name + b"\x05" + extra)

    hello = m.Hello(6, 1, m.HelloFlag.DEVICE_INITIATED_DESCRIBE, 6, 3103, 1024, 262144, 512)
    frame(m.device_hello(1, hello))
    frame(m.describe_post(2, 2, b'{"f":["setArg"],"v":{"counter":2,"temp":9,"s":4,"b":1}}'))
    command(0, b"setArg", piece(b"hi"))
    frame(m.empty_ack(0x1236))
    frame(m.function_return(3, b"\x58", 2))
    command(1, b"counter")
    frame(m.piggybacked_response(0x1237, b"\x59", coap.Code.CONTENT, b"\x00\x00\x00\x07"))
    command(2, b"", b"\x03")
    frame(m.empty_ack(0x1238))
    frame(m.content_response(4, b"\x5a", coap.Code.CONTENT, b'{"p":6,"m":[]}', confirmable=True))
    command(3, b"", b"\x01")
    frame(m.signal_ack(0x1239, b"\x5b"))
    command(6, b"", b"\x04\x00\x00")
    frame(m.empty_ack(0x123A))
    frame(m.update_ready(5, b"\x5c", fast=False))
    command(7, b"", b"\x00" + piece(b"x" * 16) + b"\x00")
    frame(m.chunk_received(6, b"\x5d", ok=True))
    command(8)
    frame(coap.Message(coap.MessageType.ACK, coap.Code.CHANGED, 0x123C, b"\x5e", payload=b'{"r":"ok"}'))
    frame(m.time_request(7, 9))
    frame(m.device_event(8, "x/y", "data", ttl=30, confirmable=True))
    frame(m.subscribe(9, "vdev"))
    frame(m.subscribe(10, "", m.SubscriptionScope.DEVICE, "0123"))
    frame(m.chunk_missed(11, [1, 2], confirmable=True))
    frame(m.device_update_done(12, b'{"r":0}'))
    frame(m.goodbye(13, m.Goodbye(1, 2, 3, 4)))
    frame(m.ping(14))
    command(0, b"f", piece(b""))
    out.extend(b"\x04\xff\x01")  # the clock runs: the call times out, the idle timer closes the session
    return bytes(out)


def seeds(name: str) -> list[bytes]:
    """The seed inputs of a target, built from the recordings and logs (deterministic)."""
    found: list[bytes] = []
    if name == "framing":
        for session in _sessions():
            raw = session.get("session_credentials")
            if not isinstance(raw, str):
                continue
            index = _recorded_credentials().index(bytes.fromhex(raw))
            for direction, mode in (("d2s", 0x40), ("s2d", 0x41)):
                stream = b"".join(bytes.fromhex(f["hex"]) for f in _frames(session, direction))
                found.append(bytes((mode, index, 0)) + stream[:4000])
                found.append(bytes((mode, index, 7)) + stream[:1000])
        found.append(b"\x80\x00" + piece(CREDENTIALS) + piece(b"\x40\x01\x00\x01"))
    elif name == "handshake":
        found += [b"\x00" + DEVICE_ID + _device_public_der(), b"\x00" + DEVICE_ID, b"\x01" + _NONCE]
        found.append(b"\x02" + _device_session().session_key)
        found.append(b"\x06" + _device_session().session_key[:200])
        found.append(b"\x03" + bytes(256))
        found.append(b"\x07" + bytes(range(256)))
    elif name in ("coap", "messages"):
        for messages in _plaintexts("d2s"):
            found += messages[:40] if name == "coap" else [bytes((6,)) + p for p in messages[:40]]
        for messages in _plaintexts("s2d"):
            found += messages[:20] if name == "coap" else [bytes((6,)) + p for p in messages[:20]]
        if name == "messages":
            found += [b"\x00" + bytes(20), b"\x03\x0f\x02\x05\x06", b"\x04\x00\x01\x00\x02", b"\x01{}"]
    elif name == "server":
        for messages in _plaintexts("d2s"):
            ops = b"".join(b"\x00" + piece(p) + b"\x00" for p in messages[:30])
            found.append(b"\x07\x00\x02" + ops)
            commands = b"\x05\x00\x06setArg" + b"\x05" + piece(b"hello") + b"\x05\x01\x07counter\x05"
            found.append(b"\x07\x00\x02" + ops[:400] + commands + ops[400:])
        found.append(b"\x07\x01" + piece(bytes(300)))
        found.append(_server_session_seed())
    elif name == "device":
        for index, messages in enumerate(_plaintexts("s2d")):
            ops = b"".join(b"\x00" + piece(p) + b"\x00" for p in messages[:30])
            found.append(bytes((index % 4,)) + ops)
        found.append(b"\x20" + piece(bytes(40)))
    elif name == "keys":
        for data in _key_files():
            found += [bytes((mode,)) + data for mode in (0, 1, 3, 4, 8)]
        server_file = (VECTORS / "device-os-3.1.0" / "server_key.der").read_bytes()
        found += [b"\x02" + server_file, b"\x12" + server_file, b"\x06" + server_file, b"\x07" + server_file]
    elif name == "keys_inspect":
        for data in [*_key_files(), *_dct_images()]:
            found += [b"\x00" + data, b"\x03" + data]
        found += [b"\x02" + image for image in _dct_images()]
        found.append(b"\x06" + keys.encode_device_private_key(_device_key()))
    elif name == "binary":
        for module in _modules():
            found += [b"\x00" + module, b"\x01" + module]
    elif name == "diagnose":
        for path in sorted(LOGS.glob("*.log")) + sorted(VECTORS.glob("**/*.device.log")):
            found.append(path.read_bytes()[:16000])
    else:
        raise KeyError(f"no target {name!r}")
    return found


def corpus_name(data: bytes) -> str:
    """libFuzzer's name for a corpus file: the SHA-1 of its bytes."""
    return hashlib.sha1(data).hexdigest()


def write_seeds() -> None:
    """Write every target's seeds into its corpus directory (`scripts/fuzz --seed`)."""
    for name in TARGETS:
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        found = seeds(name)
        for seed in found:
            (directory / corpus_name(seed)).write_bytes(seed)
        print(f"{name}: {len(found)} seeds")


def main(argv: list[str]) -> int:
    if argv[1:] == ["--seed"]:
        write_seeds()
    elif argv[1:] == ["--list"]:
        print("\n".join(TARGETS))
    elif len(argv) == 3 and argv[1] == "--limits" and argv[2] in TARGETS:
        print(TARGETS[argv[2]].max_len, TARGETS[argv[2]].timeout)
    else:
        print(f"usage: {argv[0]} --seed | --list | --limits TARGET", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
