"""The webhooks' HTTP client against real receivers on loopback: what it sends, what it reads, and the address
policy applied when the connection is opened (nothing reaches a refused address, not even a SYN)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from cyan.cloud.webhook_http import HttpSender
from cyan.cloud.webhooks import AddressPolicy, HookRequest, HookSendError

LOOPBACK = AddressPolicy.parse("127.0.0.0/8, ::1")


@dataclass
class Receiver:
    """An HTTP/1.1 receiver on 127.0.0.1 written by hand, so that every byte it got can be checked."""

    answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    #: Never answer (a dead receiver that accepts and holds the connection).
    silent: bool = False
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.requests.append(head + await reader.readexactly(length))
            if self.silent:
                await asyncio.Event().wait()
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(receiver: Receiver, scenario: Callable[[Receiver], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        receiver.port = server.sockets[0].getsockname()[1]
        try:
            await scenario(receiver)
        finally:
            server.close()

    asyncio.run(main())


def request(url: str, **changes: object) -> HookRequest:
    values: dict[str, object] = {
        "method": "POST",
        "url": url,
        "headers": (("Content-Type", "text/plain"),),
        "body": b"hello",
        "auth": None,
        "verify": True,
    }
    values.update(changes)
    return HookRequest(**values)  # type: ignore[arg-type]


def test_the_request_goes_out_as_built_and_the_answer_comes_back() -> None:
    async def scenario(receiver: Receiver) -> None:
        sender = HttpSender(LOOPBACK, user_agent="Cyan/test (webhooks)")
        try:
            url = f"http://127.0.0.1:{receiver.port}/in?a=1"
            response = await sender.send(request(url, auth=("user", "pa:ss")), timeout=5, max_body=100)
        finally:
            await sender.aclose()
        assert (response.status, response.body, response.truncated) == (200, b"ok", False)
        (raw,) = receiver.requests
        head, body = raw.split(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /in?a=1 HTTP/1.1"
        headers = dict(line.split(": ", 1) for line in lines[1:])
        credentials = base64.b64encode(b"user:pa:ss").decode()
        assert headers == {
            "Host": f"127.0.0.1:{receiver.port}",
            "User-Agent": "Cyan/test (webhooks)",
            "Accept": "*/*",
            "Content-Type": "text/plain",
            "Authorization": f"Basic {credentials}",
            "Content-Length": "5",
        }
        assert body == b"hello"

    run(Receiver(), scenario)


def test_a_long_answer_is_read_up_to_the_limit_and_said_to_be_cut() -> None:
    answer = b"HTTP/1.1 500 Oops\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000

    async def scenario(receiver: Receiver) -> None:
        sender = HttpSender(LOOPBACK, user_agent="Cyan/test")
        try:
            url = f"http://127.0.0.1:{receiver.port}/"
            response = await sender.send(request(url, method="GET", body=None), timeout=5, max_body=512)
        finally:
            await sender.aclose()
        assert (response.status, len(response.body), response.truncated) == (500, 512, True)

    run(Receiver(answer=answer), scenario)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_by_default_loopback_is_refused_before_any_connection(host: str) -> None:
    async def scenario(receiver: Receiver) -> None:
        sender = HttpSender(AddressPolicy(), user_agent="Cyan/test")
        try:
            with pytest.raises(HookSendError, match="webhooks may not reach") as refused:
                await sender.send(request(f"http://{host}:{receiver.port}/"), timeout=5, max_body=100)
        finally:
            await sender.aclose()
        assert refused.value.retry is False
        assert receiver.connections == 0

    run(Receiver(), scenario)


def test_a_receiver_that_never_answers_times_out() -> None:
    async def scenario(receiver: Receiver) -> None:
        sender = HttpSender(LOOPBACK, user_agent="Cyan/test")
        try:
            with pytest.raises(HookSendError, match=r"no answer from 127\.0\.0\.1 within 0\.2 s") as silent:
                await sender.send(request(f"http://127.0.0.1:{receiver.port}/"), timeout=0.2, max_body=100)
        finally:
            await sender.aclose()
        assert silent.value.retry is True
        assert len(receiver.requests) == 1

    run(Receiver(silent=True), scenario)


def test_nothing_listening_is_a_failure_worth_retrying() -> None:
    async def scenario(receiver: Receiver) -> None:
        sender = HttpSender(LOOPBACK, user_agent="Cyan/test")
        try:
            with pytest.raises(HookSendError, match=r"cannot connect to 127\.0\.0\.1") as refused:
                await sender.send(request("http://127.0.0.1:9/"), timeout=5, max_body=100)
        finally:
            await sender.aclose()
        assert refused.value.retry is True

    run(Receiver(), scenario)
