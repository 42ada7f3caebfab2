"""The HTTP client of webhooks (`cyan.cloud.webhooks.HookSender`), with the address policy at the socket.

A hook's URL is its owner's choice, so where it may lead is checked where it cannot be dodged: when the
connection is opened, on the addresses the name resolved to right then (a name that resolves to a public
address when the hook is saved and to 127.0.0.1 when it is sent gets nowhere). A name that resolves to any
refused address is refused as a whole. Redirects are not followed and no proxy from the environment is used.
TLS is verified against the URL's host name unless the hook says otherwise (`rejectUnauthorized: false`).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

from .webhooks import AddressPolicy, HookRequest, HookResponse, HookSendError

__all__ = ["HttpSender"]


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        refused = [str(a) for a in addresses if not self._policy.allows(a)]
        if refused:
            where = host if refused == [host] else f"{host} ({', '.join(refused)})"
            raise HookSendError(
                f"{where} is an address webhooks may not reach "
                "(an operator allows networks with CYAN_HOOK_ALLOWED_NETWORKS)",
                retry=False,
            )
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def _resolve(
        self, host: str, port: int, timeout: float | None
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except TimeoutError:
            raise HookSendError(f"resolving {host} took longer than {timeout:g} s") from None
        except OSError as exc:
            raise HookSendError(f"{host} does not resolve: {exc.strerror or exc}") from None
        found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        if not found:
            raise HookSendError(f"{host} resolves to no address")
        return found

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class HttpSender:
    """Sends webhook requests over HTTP/1.1 with keep-alive, one pool for verified TLS and one for not."""

    def __init__(self, policy: AddressPolicy, *, user_agent: str, max_connections: int = 256) -> None:
        backend = _GuardedBackend(policy)
        #: Where requests may go.
        self.policy = policy
        self._user_agent = user_agent
        self._pools = {
            verify: httpcore.AsyncConnectionPool(
                ssl_context=ssl.create_default_context() if verify else _unverified_context(),
                max_connections=max_connections,
                max_keepalive_connections=max_connections // 4,
                keepalive_expiry=30.0,
                network_backend=backend,
            )
            for verify in (True, False)
        }

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()

    async def send(self, request: HookRequest, *, timeout: float, max_body: int) -> HookResponse:
        parts = urlsplit(request.url)
        headers = [("Host", parts.netloc.rsplit("@", 1)[-1]), ("User-Agent", self._user_agent), ("Accept", "*/*")]
        given = {name.lower() for name, _ in request.headers}
        headers = [(name, value) for name, value in headers if name.lower() not in given]
        headers += list(request.headers)
        if request.auth is not None and "authorization" not in given:
            token = base64.b64encode(f"{request.auth[0]}:{request.auth[1]}".encode()).decode()
            headers.append(("Authorization", f"Basic {token}"))
        if request.body is not None or request.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(request.body or b""))))
        phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        pool = self._pools[request.verify]
        try:
            async with asyncio.timeout(timeout):
                async with pool.stream(
                    request.method,
                    request.url,
                    headers=headers,
                    content=request.body or b"",
                    extensions={"timeout": phases},
                ) as response:
                    body = bytearray()
                    truncated = False
                    async for piece in response.aiter_stream():
                        body += piece
                        if len(body) > max_body:
                            truncated = True
                            del body[max_body:]
                            break
                    return HookResponse(response.status, bytes(body), truncated)
        except HookSendError:
            raise
        except TimeoutError:
            raise HookSendError(f"no answer from {parts.hostname} within {timeout:g} s") from None
        except httpcore.TimeoutException:
            raise HookSendError(f"no answer from {parts.hostname} within {timeout:g} s") from None
        except httpcore.ConnectError as exc:
            raise HookSendError(f"cannot connect to {parts.hostname}: {exc or 'refused'}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise HookSendError(f"{parts.hostname}: {type(exc).__name__}: {exc}") from None
        except httpcore.UnsupportedProtocol as exc:
            raise HookSendError(f"{parts.hostname}: {exc}", retry=False) from None
        except ssl.SSLError as exc:
            raise HookSendError(f"TLS with {parts.hostname} failed: {exc.reason or exc}") from None
