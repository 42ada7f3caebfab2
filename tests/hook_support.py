"""A real HTTP receiver for webhook tests: `http.server` on 127.0.0.1 in a thread of its own, so that it serves
the same whether the test drives an in-process service on its event loop or a `cyan serve` subprocess."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers every request with `status` and `body`; when `silent`, holds every request and never answers
    (a dead receiver) until it is closed. `connections` counts the requests that reached it."""

    status: int = 200
    body: bytes = b"ok"
    silent: bool = False
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    held: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(found := self.received()) < count:
            assert time.monotonic() < deadline, f"the receiver got {len(found)} request(s), not {count}, in {timeout} s"
            time.sleep(0.01)
        return found

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = Received(self.command, parts.path, dict(parse_qsl(parts.query)), dict(self.headers), body)
                with receiver._lock:
                    receiver.requests.append(seen)
                if receiver.silent:
                    with receiver._lock:
                        receiver.held += 1
                    receiver._release.wait()
                    self.close_connection = True
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


@contextmanager
def receiver(**settings: Any) -> Iterator[Receiver]:
    """A `Receiver` listening on 127.0.0.1 for the block's length."""
    found = Receiver(**settings)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), found._handler())
    server.daemon_threads = True
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="hook-receiver", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found._release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not so in {timeout} s"
        time.sleep(0.01)
