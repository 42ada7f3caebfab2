"""Where `cyan keys` registers device keys and learns what the cloud holds.

Two ways to reach a Cyan cloud, as an operator has them:

* its HTTP API (``--api URL`` and a token): ``POST /v1/provisioning/:id`` with the form fields ``particle keys
  send`` posts (deviceID, publicKey as PEM, order, filename, algorithm), ``GET /v1/devices/:id`` for the key
  fingerprint it holds, ``GET /v1/user`` to check the token first;
* its data directory (``--data-dir``), like `cyan devices add`: the use cases over its database, as the
  operator, and the server public key and server-key files `cyan serve` writes there (one per published
  address).

A device that is not the caller's is not found, the same as one that does not exist (docs/keys.md): over the
API, registering it is what tells the two apart, and a cloud that lets the account register no new device
says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cyan.app import Application, NewDevice
from cyan.data import open_application
from cyan.keys import (
    DEFAULT_UDP_PORT,
    KeyFormatError,
    Layout,
    ServerAddress,
    addresses_of,
    build_server_key_file,
    build_udp_server_key_file,
    check_server_public_key,
    fingerprint,
    load_ec_public_key,
    load_public_key,
    parse_server_key_file,
    public_key_der,
    udp_public_key_der,
)

from ._local import operator
from ._options import local_settings

#: A device's public key: RSA-1024 (Gen 2, TCP) or EC P-256 (Electron and Gen 3, UDP).
DevicePublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

__all__ = [
    "ApiRegistry",
    "CloudRefusedError",
    "CloudUnreachableError",
    "DataDirRegistry",
    "DeviceKey",
    "Registry",
    "RegistryError",
    "ServerIdentity",
    "load_server_identity",
]

_SERVER_FILE_SIZES = (Layout.PHOTON.size, Layout.PHOTON.max_size, Layout.CORE.size)
# httpx logs every request at INFO; the commands report what matters themselves.
logging.getLogger("httpx").setLevel(logging.WARNING)


class RegistryError(Exception):
    """The cloud could not be asked, or said no; ``hint`` says what to do."""

    hint = "check --api and --token, or --data-dir"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class CloudUnreachableError(RegistryError):
    hint = "check that `cyan serve` runs and that --api is its Cloud API address (http://HOST:8080)"


class CloudRefusedError(RegistryError):
    hint = "check the access token (`cyan tokens create EMAIL`) and that the device is yours"


@dataclass(frozen=True)
class DeviceKey:
    """What the cloud holds for a device: nothing (not registered), or a key by its fingerprint."""

    registered: bool
    fingerprint: str | None = None


class Registry(Protocol):
    """A Cyan cloud as `cyan keys` uses it."""

    where: str

    def check(self) -> str:
        """Raise unless the cloud can be used; say who we are there."""
        ...

    def device_key(self, device_id: str) -> DeviceKey: ...

    def register(
        self, device_id: str, public: DevicePublicKey, *, product_id: int | None = None, name: str | None = None
    ) -> str:
        """Register (or replace) the device's public key; returns its fingerprint as the cloud stored it."""
        ...

    def close(self) -> None: ...


def _api_error(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error_description", "info", "message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    return str(body)[:300]


class ApiRegistry:
    """A cloud reached over its Particle-compatible HTTP API."""

    def __init__(self, api_url: str, token: str | None, *, transport: httpx.BaseTransport | None = None) -> None:
        if not token:
            raise RegistryError(
                "no access token for the Cloud API",
                "give --token, or set CYAN_TOKEN (make one with `cyan tokens create EMAIL` or `particle login`)",
            )
        self.where = api_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.where,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=30.0,
            transport=transport,
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CloudUnreachableError(f"cannot reach the Cloud API at {self.where}: {exc}") from exc

    def check(self) -> str:
        response = self._request("GET", "/v1/user")
        if response.status_code in (401, 403):
            raise CloudRefusedError(f"the Cloud API at {self.where} refused the token: {_api_error(response)}")
        if response.status_code != 200:
            raise CloudUnreachableError(
                f"the Cloud API at {self.where} answered {response.status_code} to GET /v1/user: {_api_error(response)}"
            )
        user = response.json().get("username", "?")
        return f"{user} at {self.where}"

    def device_key(self, device_id: str) -> DeviceKey:
        response = self._request("GET", f"/v1/devices/{device_id}")
        if response.status_code == 404:
            return DeviceKey(registered=False)
        if response.status_code in (401, 403):
            raise CloudRefusedError(f"the cloud will not show device {device_id}: {_api_error(response)}")
        if response.status_code != 200:
            raise CloudUnreachableError(f"GET /v1/devices/{device_id} answered {response.status_code}")
        held = response.json().get("key_fingerprint")
        return DeviceKey(registered=bool(held), fingerprint=held or None)

    def register(
        self, device_id: str, public: DevicePublicKey, *, product_id: int | None = None, name: str | None = None
    ) -> str:
        # The same form `particle keys send` posts (particle-cli.md §A.3): "ecc" for a UDP device's P-256 key.
        is_ec = isinstance(public, ec.EllipticCurvePublicKey)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        form = {
            "deviceID": device_id,
            "publicKey": pem.decode("ascii"),
            "order": f"manual_{int(time.time() * 1000)}",
            "filename": "cli",
            "algorithm": "ecc" if is_ec else "rsa",
        }
        if product_id is not None:
            form["product_id"] = str(product_id)
        response = self._request("POST", f"/v1/provisioning/{device_id}", data=form)
        if response.status_code == 404:
            raise CloudRefusedError(
                f"the cloud will not take a key for {device_id}: no device of this account has that id, and this "
                "account may not register new ones",
                "ask an admin to register it (`cyan devices add ... --owner YOU`, or an admin's token), to give you "
                "a claim code for it, or to turn self-registration on (`cyan policy set --self-registration`)",
            )
        if response.status_code != 200:
            raise CloudRefusedError(
                f"the cloud refused the key for {device_id} ({response.status_code}): {_api_error(response)}"
            )
        held = response.json().get("key_fingerprint")
        if name:
            renamed = self._request("PUT", f"/v1/devices/{device_id}", json={"name": name})
            if renamed.status_code != 200:
                raise CloudRefusedError(
                    f"the key is registered, but naming {device_id} {name!r} failed: {_api_error(renamed)}"
                )
        return str(held) if held else fingerprint(public)

    def close(self) -> None:
        self._client.close()


class DataDirRegistry:
    """A cloud's data directory, through the use cases, as the operator."""

    def __init__(self, data_dir: Path | None) -> None:
        self.settings = local_settings(data_dir)
        self.where = str(self.settings.data_dir)
        self._runner: asyncio.Runner | None = None
        self._context: Any = None
        self._app: Application | None = None

    def _open(self) -> tuple[asyncio.Runner, Application]:
        if self._runner is None or self._app is None:
            if not self.settings.database_path.exists():
                raise RegistryError(
                    f"no Cyan database at {self.settings.database_path}",
                    "run `cyan serve` once, pass --data-dir, or use --api URL with a token",
                )
            runner = asyncio.Runner()
            context = open_application(self.settings)
            try:
                self._app = runner.run(context.__aenter__())
            except BaseException:
                runner.close()
                raise
            self._runner, self._context = runner, context
        return self._runner, self._app

    def check(self) -> str:
        runner, app = self._open()
        runner.run(app.store.devices.get("0" * 24))  # any query proves the database is readable
        return f"data directory {self.where}"

    def device_key(self, device_id: str) -> DeviceKey:
        runner, app = self._open()
        record = runner.run(app.store.devices.get(device_id))
        if record is None or not record.key_fingerprint:
            return DeviceKey(registered=False)
        return DeviceKey(registered=True, fingerprint=record.key_fingerprint)

    def register(
        self, device_id: str, public: DevicePublicKey, *, product_id: int | None = None, name: str | None = None
    ) -> str:
        runner, app = self._open()
        der = udp_public_key_der(public) if isinstance(public, ec.EllipticCurvePublicKey) else public_key_der(public)
        actor = operator()
        if runner.run(app.store.devices.get(device_id)) is None:
            new = NewDevice(device_id, der, name=name, product_id=product_id)
            (record,) = runner.run(app.devices.register(actor, [new]))
            return record.key_fingerprint or fingerprint(der)
        done = runner.run(app.keys.provision(actor, device_id, der, product_id=product_id))
        if name and done.record.name != name:
            runner.run(app.devices.rename(actor, device_id, name))
        return done.record.key_fingerprint or fingerprint(der)

    def close(self) -> None:
        if self._runner is not None:
            if self._context is not None:
                self._runner.run(self._context.__aexit__(None, None, None))
            self._runner.close()
        self._runner = self._context = self._app = None


# -- this cloud's server key and addresses -----------------------------------------------------------------


@dataclass(frozen=True)
class ServerIdentity:
    """This cloud's server public key and the addresses it publishes for devices."""

    public_key: rsa.RSAPublicKey
    source: str
    addresses: tuple[ServerAddress, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def key_file(self, layout: Layout, host: str | None = None, port: int | None = None) -> tuple[bytes, ServerAddress]:
        """The server-key file a device of this layout needs, with ``host`` or the one published address."""
        host, port = _chosen(self.addresses, self.source, host, port, "devices", "5683")
        data = build_server_key_file(self.public_key, host, port, layout)
        parsed = parse_server_key_file(data, layout)
        assert parsed.address is not None
        return data, parsed.address


def _chosen(
    addresses: tuple[ServerAddress, ...], source: str, host: str | None, port: int | None, who: str, default: str
) -> tuple[str, int | None]:
    """``host`` (and ``port``) as given, or else the one address the cloud publishes."""
    if host is not None:
        return host, port
    if len(addresses) != 1:
        known = ", ".join(str(a) for a in addresses) or "none"
        raise RegistryError(
            f"which address should {who} use? {source} publishes: {known}",
            f"give --host (and --port when it is not {default})",
        )
    return addresses[0].host, addresses[0].port if port is None else port


def _read_server_key(path: Path) -> tuple[rsa.RSAPublicKey, tuple[ServerAddress, ...]]:
    data = path.read_bytes()
    if len(data) in _SERVER_FILE_SIZES and not data.lstrip().startswith(b"-----"):
        parsed = parse_server_key_file(data)
        if not isinstance(parsed.public_key, rsa.RSAPublicKey):
            raise KeyFormatError(f"{path} is a server-key file without a usable key: {parsed.key_problem}")
        return parsed.public_key, addresses_of([data])
    key = load_public_key(data)
    check_server_public_key(key)
    return key, ()


def load_server_identity(data_dir: Path | None, server_key: Path | None) -> ServerIdentity | None:
    """This cloud's server key from ``--server-key`` (a public key, or a server-key file with its address), or
    from the data directory (server_public_key.der and the server_key_*.der files `cyan serve` writes);
    None when neither is there."""
    if server_key is not None:
        key, addresses = _read_server_key(server_key)
        return ServerIdentity(key, str(server_key), addresses)
    settings = local_settings(data_dir)
    path = settings.server_public_key_path
    if not path.exists():
        return None
    key, _ = _read_server_key(path)
    published = sorted(settings.data_dir.glob("server_key_*.der"))
    files = []
    for candidate in published:
        data = candidate.read_bytes()
        parsed = parse_server_key_file(data) if len(data) in _SERVER_FILE_SIZES else None
        if parsed is not None and parsed.public_key is not None and fingerprint(parsed.public_key) == fingerprint(key):
            files.append(data)
    return ServerIdentity(key, str(settings.data_dir), addresses_of(files))


@dataclass(frozen=True)
class UdpServerIdentity:
    """This cloud's P-256 server key and the addresses its 320-byte files publish for UDP devices."""

    public_key: ec.EllipticCurvePublicKey
    source: str
    addresses: tuple[ServerAddress, ...] = ()

    def key_file(self, host: str | None = None, port: int | None = None) -> tuple[bytes, ServerAddress]:
        """The 320-byte file a UDP device needs, with ``host`` or the one published address (port 5684 unless
        given or published)."""
        host, port = _chosen(self.addresses, self.source, host, port, "UDP devices", "5684")
        data = build_udp_server_key_file(self.public_key, host, DEFAULT_UDP_PORT if port is None else port)
        parsed = parse_server_key_file(data, Layout.UDP)
        assert parsed.address is not None
        return data, parsed.address


def load_udp_server_key(data_dir: Path | None, server_key: Path | None) -> UdpServerIdentity | None:
    """This cloud's P-256 server key from ``--server-key`` (a public key, or a 320-byte file with its address)
    or from the data directory (udp_server_public_key.der and the udp_server_key_*.der files); None when
    neither has one."""
    if server_key is not None:
        data = server_key.read_bytes()
        if len(data) == Layout.UDP.size and data[:1] == b"\x30":
            parsed = parse_server_key_file(data, Layout.UDP)
            if not isinstance(parsed.public_key, ec.EllipticCurvePublicKey):
                raise KeyFormatError(
                    f"{server_key} is a UDP server-key file without a usable key: {parsed.key_problem}"
                )
            return UdpServerIdentity(parsed.public_key, str(server_key), addresses_of([data]))
        try:
            return UdpServerIdentity(load_ec_public_key(data), str(server_key))
        except KeyFormatError:
            return None
    settings = local_settings(data_dir)
    path = settings.udp_server_public_key_path
    if not path.exists():
        return None
    ours = load_ec_public_key(path.read_bytes())
    files = []
    for candidate in sorted(settings.data_dir.glob("udp_server_key_*.der")):
        data = candidate.read_bytes()
        if len(data) != Layout.UDP.size:
            continue
        parsed = parse_server_key_file(data, Layout.UDP)
        if parsed.public_key is not None and fingerprint(parsed.public_key) == fingerprint(ours):
            files.append(data)
    return UdpServerIdentity(ours, str(settings.data_dir), addresses_of(files))


def load_udp_server_identity(
    data_dir: Path | None, server_key: Path | None
) -> tuple[str, tuple[ServerAddress, ...]] | None:
    """This cloud's P-256 server key (its fingerprint) and the addresses of its 320-byte files
    (`load_udp_server_key`); None when neither ``--server-key`` nor the data directory has one."""
    identity = load_udp_server_key(data_dir, server_key)
    return None if identity is None else (fingerprint(identity.public_key), identity.addresses)
