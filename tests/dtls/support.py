"""An in-memory wire between a `ClientEndpoint` and a `ServerEndpoint` behind a cookie-checking listener,
with seeded loss, duplication and reordering, and injected time (design §5 habit 3: h11's ConnectionPair)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.dtls import (
    ClientConfig,
    ClientEndpoint,
    CookieVerifier,
    DeviceKeyPresented,
    Event,
    RemoteDtlsError,
    ServerConfig,
    ServerEndpoint,
    Session,
)

CLIENT_ADDRESS = b"198.51.100.7:5684"
E = TypeVar("E", bound=Event)


def fixed_key(seed: int) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a fixed scalar: tests stay deterministic."""
    return ec.derive_private_key(0x1234567 + seed * 0x10001, ec.SECP256R1())


SERVER_KEY = fixed_key(1)
DEVICE_KEY = fixed_key(2)
OTHER_KEY = fixed_key(3)


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    #: Drop exactly these datagrams, counted per direction from 0 ("c" client->server, "s" server->client).
    drop: set[tuple[str, int]] = field(default_factory=set)


class Wire:
    """Two endpoints, two queues, one clock. The server side is created by the listener when a ClientHello
    comes back with a valid cookie, as a real listener would."""

    def __init__(
        self,
        seed: int = 0,
        *,
        faults: Faults | None = None,
        server_config: ServerConfig | None = None,
        client_config: ClientConfig | None = None,
        auto_accept: bool = True,
        server_key: ec.EllipticCurvePrivateKey = SERVER_KEY,
        pinned_key: ec.EllipticCurvePublicKey | None = None,
        client_session: Session | None = None,
        resumable: Session | None = None,
        client: ClientEndpoint | None = None,
        server: ServerEndpoint | None = None,
        use_cookies: bool = True,
    ) -> None:
        self.now = 1000.0
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.server_config = server_config
        self.auto_accept = auto_accept
        self.server_key = server_key
        self.resumable = resumable
        self.use_cookies = use_cookies
        self.cookies = CookieVerifier(b"cookie-secret-0123456789abcdef")
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.sent = {"c": 0, "s": 0}
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.server_errors: list[RemoteDtlsError] = []
        self.client_errors: list[RemoteDtlsError] = []
        self.delivered_to_server: list[bytes] = []
        self.client = client or ClientEndpoint(
            DEVICE_KEY,
            pinned_key or server_key.public_key(),
            now=self.now,
            random_bytes=seeded(seed + 100),
            config=client_config,
            session=client_session,
        )
        self.server = server

    # -- moving datagrams ---------------------------------------------------------------------------

    def _queue(self, direction: str, datagrams: list[bytes]) -> None:
        queue = self.to_server if direction == "c" else self.to_client
        for datagram in datagrams:
            index = self.sent[direction]
            self.sent[direction] += 1
            if (direction, index) in self.faults.drop or self.rng.random() < self.faults.loss:
                continue
            copies = 2 if self.rng.random() < self.faults.duplicate else 1
            for _ in range(copies):
                if queue and self.rng.random() < self.faults.reorder:
                    queue.insert(self.rng.randrange(len(queue)), datagram)
                else:
                    queue.append(datagram)

    def collect(self) -> None:
        self._queue("c", self.client.datagrams_to_send())
        if self.server is not None:
            self._queue("s", self.server.datagrams_to_send())
        self._drain_events()

    def _drain_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is None:
            return
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)
            if isinstance(event, DeviceKeyPresented) and self.auto_accept:
                self.server.accept(self.now)
                self._queue("s", self.server.datagrams_to_send())

    def _listener(self, datagram: bytes) -> None:
        if not self.use_cookies:
            self._create_server(datagram)
            return
        check = self.cookies.check(datagram, CLIENT_ADDRESS, self.now)
        if check.verified:
            self._create_server(datagram)
        elif check.reply is not None:
            assert len(check.reply) <= len(datagram), "a HelloVerifyRequest must not amplify"
            self._queue("s", [check.reply])

    def _create_server(self, datagram: bytes) -> None:
        self.server = ServerEndpoint(
            self.server_key,
            now=self.now,
            random_bytes=seeded(self.rng.randrange(1 << 30)),
            config=self.server_config,
            resumable=self.resumable,
        )
        self._feed_server(datagram)

    def _feed_server(self, datagram: bytes) -> None:
        assert self.server is not None
        self.delivered_to_server.append(datagram)
        try:
            self.server.receive_datagram(datagram, self.now)
        except RemoteDtlsError as exc:
            self.server_errors.append(exc)

    def _feed_client(self, datagram: bytes) -> None:
        try:
            self.client.receive_datagram(datagram, self.now)
        except RemoteDtlsError as exc:
            self.client_errors.append(exc)

    def step(self) -> bool:
        """Deliver one datagram, or else advance the clock to the next timer. False when nothing is left."""
        self.collect()
        if self.to_server:
            datagram = self.to_server.pop(0)
            if self.server is None:
                self._listener(datagram)
            else:
                self._feed_server(datagram)
        elif self.to_client:
            self._feed_client(self.to_client.pop(0))
        else:
            server_timer = self.server.get_timer() if self.server is not None else None
            timers = [t for t in (self.client.get_timer(), server_timer) if t is not None]
            if not timers:
                return False
            self.now = max(self.now, min(timers))
            self.client.handle_timer(self.now)
            if self.server is not None:
                self.server.handle_timer(self.now)
        self.collect()
        return True

    def run(self, until: Callable[[], bool] | None = None, max_steps: int = 5000) -> None:
        for _ in range(max_steps):
            if until is not None and until():
                return
            if not self.step():
                return
        raise AssertionError("the wire did not settle")

    def handshake(self) -> None:
        self.run(lambda: self.client.established and self.server is not None and self.server.established)
        assert self.client.established, (self.client_events, self.client_errors, self.server_errors)
        assert self.server is not None
        assert self.server.established

    def events(self, side: str, kind: type[E]) -> list[E]:
        return [e for e in (self.client_events if side == "c" else self.server_events) if isinstance(e, kind)]
