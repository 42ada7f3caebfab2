"""The floor under an idle ping on this machine: a bare asyncio echo server answering small messages over
loopback TCP, at a given rate over a given number of connections, and its CPU per message.

An idle device's ping costs the server an event-loop wake-up, a read, a write and the kernel's loopback TCP
both ways before any protocol work; this measures those alone (an asyncio `Protocol` that writes back what it
reads, with TCP_NODELAY as the device server sets it), so a benchmark can print the server's CPU per ping
beside it, measured in the same run on the same shared cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from multiprocessing.connection import Connection

from cyan.sim import ensure_file_limit

#: A ping frame and its answer are one 16-byte AES block behind a 2-byte length (protocol.md §4).
MESSAGE = bytes(18)
#: The clients send what is due in ticks, as a fleet's timers fire spread over time.
TICK = 0.01


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def _serve(pipe: Connection) -> None:
    """The echo server: report its port, then its CPU seconds whenever the parent asks."""
    ensure_file_limit()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=4096)
        pipe.send(server.sockets[0].getsockname()[1])
        while (await loop.run_in_executor(None, pipe.recv)) is not None:
            pipe.send(time.process_time())
        server.close()

    asyncio.run(run())


def _drive(port: int, connections: int, rate: float, seconds: float, pipe: Connection) -> None:
    """The clients: `connections` sockets, `rate` messages a second in all, for `seconds` once connected."""
    ensure_file_limit()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []
        for _ in range(connections):
            transport, _ = await loop.create_connection(_Sink, "127.0.0.1", port)
            transports.append(transport)
        pipe.send("connected")
        await loop.run_in_executor(None, pipe.recv)  # the parent has read the server's CPU
        began = loop.time()
        sent = 0
        while (elapsed := loop.time() - began) < seconds:
            due = int(elapsed * rate)
            for n in range(sent, due):
                transports[n % connections].write(MESSAGE)
            sent = due
            await asyncio.sleep(TICK)
        pipe.send(sent)
        for transport in transports:
            transport.close()

    asyncio.run(run())


def echo_cpu_per_message(connections: int, rate: float, seconds: float = 10.0) -> float:
    """Seconds of the echo server's CPU per message answered."""
    context = multiprocessing.get_context("spawn")
    server_pipe, server_end = context.Pipe()
    server = context.Process(target=_serve, args=(server_end,), daemon=True)
    server.start()
    port = server_pipe.recv()
    client_pipe, client_end = context.Pipe()
    client = context.Process(target=_drive, args=(port, connections, rate, seconds, client_end), daemon=True)
    client.start()
    try:
        client_pipe.recv()  # connected
        time.sleep(1.0)  # the connects' own work done
        server_pipe.send("cpu")
        before = server_pipe.recv()
        client_pipe.send("go")
        messages = int(client_pipe.recv())
        time.sleep(0.2)  # the last answers
        server_pipe.send("cpu")
        spent = float(server_pipe.recv()) - float(before)
        server_pipe.send(None)
    finally:
        client.join(30)
        server.join(30)
        for process in (client, server):
            if process.is_alive():
                process.kill()
    return spent / max(1, messages)
