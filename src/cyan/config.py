"""Settings of `cyan serve`, from command-line flags and environment variables (CYAN_*)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

__all__ = ["Settings", "all_cores", "default_data_dir", "default_public_address", "default_workers"]


def default_data_dir() -> Path:
    """One place per user whatever the current directory (~/.local/share/cyan on Linux): a `cyan serve` or
    `cyan devices` started from another folder finds the same cloud, not an empty one with a new server key."""
    return platformdirs.user_data_path("cyan", appauthor=False)


def default_public_address() -> str:
    """This host's address as its own name resolves, or loopback. Devices on other hosts need a
    reachable address; `--public-address` sets it."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return address or "127.0.0.1"


def all_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """Key worker threads by default: none on one core, one otherwise (docs/benchmarks.md "--workers").

    One event loop spends more of a handshake's CPU in Python (~0.8 ms) than in the RSA work one worker does
    for it (~0.5 ms), so a second worker only waits for the loop, and on one core a worker only adds the
    hand-off (measured on one core: 1.5 ms of server CPU per handshake with none, 1.8-2.0 ms with one or two)."""
    return 0 if all_cores() == 1 else 1


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CYAN_{name}", default)


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(f"CYAN_{name}", "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"CYAN_{name} must be a whole number, not {text!r}") from None


def _udp_port_env() -> int:
    # "off" reads better than -1 in a service file.
    if os.environ.get("CYAN_DEVICE_UDP_PORT", "").strip().lower() == "off":
        return -1
    return _int_env("DEVICE_UDP_PORT", 5684)


@dataclass(frozen=True, slots=True)
class Settings:
    #: Where the database, the server key and the device key files live. Env: CYAN_DATA_DIR.
    data_dir: Path
    #: Interface the device server listens on. Env: CYAN_DEVICE_HOST.
    device_host: str = "0.0.0.0"
    #: The device port; Gen 2 firmware defaults to 5683 (protocol.md §1). Env: CYAN_DEVICE_PORT.
    device_port: int = 5683
    #: The UDP port of the Electron and Gen 3 devices (DTLS 1.2); Device OS uses 5684 (udp-dtls.md §1.1).
    #: -1 serves no UDP devices. Env: CYAN_DEVICE_UDP_PORT.
    device_udp_port: int = 5684
    #: Interface and port of the HTTP API (Particle Cloud API v1). Env: CYAN_API_HOST, CYAN_API_PORT.
    api_host: str = "0.0.0.0"
    api_port: int = 8080
    #: Where alerts (key changes, handshake loops) are POSTed as JSON; empty: the log only.
    #: Env: CYAN_ALERT_WEBHOOK.
    alert_webhook: str = ""
    #: The address devices use to reach this server: an IPv4 address or a domain, written into the
    #: server-key file devices hold (protocol.md §11). Env: CYAN_PUBLIC_ADDRESS.
    public_address: str = "127.0.0.1"
    #: Threads that run the handshakes' RSA private-key operations beside the event loop, so that a fleet
    #: reconnecting at once uses a second core (design §6); 0 runs them on the event loop. Default: 1, or 0 on
    #: one core (`default_workers`). Env: CYAN_WORKERS.
    workers: int = field(default_factory=default_workers)
    #: Serve the device connections in this many child processes sharing the device port, each holding
    #: as many devices as its open-file limit allows; 0 serves them in this process (the embedded
    #: default). Each child does its own handshakes' RSA work. Env: CYAN_DEVICE_PROCESSES.
    device_processes: int = 0
    #: New connections one address may open at once, then per second, before being closed unserved (a flood
    #: costs no RSA work; a busy NAT's devices get through on their backoff). Env: CYAN_ADDRESS_BURST,
    #: CYAN_ADDRESS_RATE.
    address_burst: int = 200
    address_rate: int = 50
    #: Handshakes a device server runs at once; past them new connections wait in the server's queue, newest
    #: first (admission control for a fleet reconnecting at once, docs/capacity.md).
    #: With --device-processes, each process has this bound. Env: CYAN_MAX_HANDSHAKES.
    max_handshakes: int = 128
    #: Connection-attempt records older than this many days, or beyond this many, are deleted.
    #: Env: CYAN_ATTEMPTS_MAX_AGE_DAYS, CYAN_ATTEMPTS_MAX_COUNT.
    attempts_max_age_days: int = 30
    attempts_max_count: int = 1_000_000
    #: Failed logins let through per account and per source address within the window, before a login is
    #: refused (429) without its password being checked. Env: CYAN_LOGIN_FAILURES_PER_ACCOUNT,
    #: CYAN_LOGIN_FAILURES_PER_ADDRESS, CYAN_LOGIN_WINDOW_MINUTES.
    login_failures_per_account: int = 5
    login_failures_per_address: int = 30
    login_window_minutes: int = 15
    #: The database. Empty: the SQLite file in the data directory (the embedded default). The nodes of a cloud
    #: of several share a PostgreSQL database: ``postgresql://user:password@host/cyan``, with pool options in
    #: the query string (docs/scale-out.md). Env: CYAN_DATABASE_URL.
    database_url: str = ""
    #: The bus between the nodes of a cloud. Empty: this process is the whole cloud (in-process bus). The nodes
    #: of a cloud of several share a Redis: ``redis://[:password@]host:6379/0``. Env: CYAN_BUS_URL.
    bus_url: str = ""
    #: This node's name among the nodes of the cloud (presences, requests between nodes); unique per node.
    #: Empty: the host name and the API port, ``host:8080``. Env: CYAN_NODE_ID.
    node_id: str = ""
    #: Networks webhooks may reach besides public addresses, comma-separated (10.0.0.0/8, 127.0.0.1, ::1):
    #: by default a hook's URL may not lead to loopback, private or link-local addresses (docs/security.md).
    #: Env: CYAN_HOOK_ALLOWED_NETWORKS.
    hook_allowed_networks: str = ""
    #: Where uploaded firmware binaries are kept. Empty: ``firmware`` in the data directory. The nodes of a cloud
    #: of several share one (a shared volume), so that an update stored by one node can be sent by another.
    #: Env: CYAN_FIRMWARE_DIR.
    firmware_directory: str = ""

    def __post_init__(self) -> None:
        if not -1 <= self.device_udp_port <= 65535:
            raise ValueError(f"device_udp_port is a port, 0 for any, or -1 for none; not {self.device_udp_port}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, not {self.workers}")
        if self.device_processes < 0:
            raise ValueError(f"device processes must be 0 or more, not {self.device_processes}")
        for name in (
            "address_burst",
            "address_rate",
            "max_handshakes",
            "attempts_max_age_days",
            "attempts_max_count",
            "login_failures_per_account",
            "login_failures_per_address",
            "login_window_minutes",
        ):
            value = getattr(self, name)
            if not 1 <= value <= 10**9:
                raise ValueError(f"{name} must be from 1 to 1000000000, not {value}")
        if not self.node_id.strip():
            # Frozen: the default depends on another field, so it is filled in here.
            object.__setattr__(self, "node_id", f"{socket.gethostname()}:{self.api_port}")
        if any(c.isspace() for c in self.node_id):
            raise ValueError(f"the node id must have no spaces, not {self.node_id!r}")
        for entry in self.hook_allowed_networks.split(","):
            try:
                if entry.strip():
                    ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"hook_allowed_networks: {entry.strip()!r} is not a network (like 10.0.0.0/8) nor an address"
                ) from None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": Path(os.environ.get("CYAN_DATA_DIR") or default_data_dir()),
            "device_host": _env("DEVICE_HOST", "0.0.0.0"),
            "device_port": _int_env("DEVICE_PORT", 5683),
            "device_udp_port": _udp_port_env(),
            "api_host": _env("API_HOST", "0.0.0.0"),
            "api_port": _int_env("API_PORT", 8080),
            "alert_webhook": _env("ALERT_WEBHOOK", ""),
            "public_address": os.environ.get("CYAN_PUBLIC_ADDRESS") or default_public_address(),
            "workers": _int_env("WORKERS", default_workers()),
            "device_processes": _int_env("DEVICE_PROCESSES", 0),
            "address_burst": _int_env("ADDRESS_BURST", 200),
            "address_rate": _int_env("ADDRESS_RATE", 50),
            "max_handshakes": _int_env("MAX_HANDSHAKES", 128),
            "attempts_max_age_days": _int_env("ATTEMPTS_MAX_AGE_DAYS", 30),
            "attempts_max_count": _int_env("ATTEMPTS_MAX_COUNT", 1_000_000),
            "login_failures_per_account": _int_env("LOGIN_FAILURES_PER_ACCOUNT", 5),
            "login_failures_per_address": _int_env("LOGIN_FAILURES_PER_ADDRESS", 30),
            "login_window_minutes": _int_env("LOGIN_WINDOW_MINUTES", 15),
            "database_url": _env("DATABASE_URL", ""),
            "bus_url": _env("BUS_URL", ""),
            "node_id": _env("NODE_ID", ""),
            "hook_allowed_networks": _env("HOOK_ALLOWED_NETWORKS", ""),
            "firmware_directory": _env("FIRMWARE_DIR", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def database_path(self) -> Path:
        """The embedded database, used when no `database_url` is set."""
        return self.data_dir / "cyan.db"

    @property
    def database_location(self) -> str | Path:
        """The database this process uses: `database_url`, or else the SQLite file in the data directory."""
        return self.database_url.strip() or self.database_path

    @property
    def firmware_dir(self) -> Path:
        """Uploaded firmware binaries, named by their SHA-256."""
        return Path(self.firmware_directory) if self.firmware_directory.strip() else self.data_dir / "firmware"

    @property
    def server_key_path(self) -> Path:
        return self.data_dir / "server_key.pem"

    @property
    def server_public_key_path(self) -> Path:
        """The 294-byte public key DER, the input `particle keys server` takes."""
        return self.data_dir / "server_public_key.der"

    @property
    def udp_server_key_path(self) -> Path:
        """The EC P-256 server key of the UDP devices (DTLS), beside the RSA one."""
        return self.data_dir / "udp_server_key.pem"

    @property
    def udp_server_public_key_path(self) -> Path:
        """Its 91-byte SubjectPublicKeyInfo DER, the input `particle keys server` takes for UDP devices."""
        return self.data_dir / "udp_server_public_key.der"

    def udp_server_key_file_path(self, port: int) -> Path:
        """The 320-byte key file with this server's address, ready for DCT offset 3298 (udp-dtls.md §1.2)."""
        safe = self.public_address.replace(":", "_")
        return self.data_dir / f"udp_server_key_{safe}_{port}.der"

    def server_key_file_path(self, port: int) -> Path:
        """The 512-byte key file with this server's address, ready for DCT offset 2082 (protocol.md §11)."""
        safe = self.public_address.replace(":", "_")
        return self.data_dir / f"server_key_{safe}_{port}.der"
