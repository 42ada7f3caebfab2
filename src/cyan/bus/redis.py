"""The bus of a cloud of several nodes, over one Redis server (redis-py's asyncio client).

Events. Pub/sub on one channel, ``{prefix}events``, rather than streams: an event is worth something only
while it is fresh (a stream would replay what a node missed, and must be trimmed), and pub/sub keeps the
order in which each connection publishes. Each node publishes from one task, in batches, in the order
`publish` was called, so every node sees a node's events in its order. An event also reaches this node's own
subscribers at once, without the round trip (so a node cut off from Redis still serves its own devices); the
copy that comes back from Redis is recognised and skipped. Subscribers read from bounded local queues that
lose their oldest events (`cyan.bus.BusSubscription`), and `publish` never waits: what cannot be sent (Redis
unreachable, too many queued) is counted in `unsent` and lost.

Presence. Each node holds a lease, ``{prefix}node:{node_id}`` = a token drawn when the node starts, with a
TTL of `lease` seconds that a background task renews three times per lease. A device's presence,
``{prefix}presence:{device_id}``, names the node, its token, the session and the time of the claim, and
counts only while that node's lease holds the same token: so a node that stops renewing (it crashed, or lost
Redis) frees all its devices at once within `lease` seconds, and a node restarted under the same id does not
inherit the sessions of its previous run. One lease per node rather than a TTL per device: renewing costs
one command per node whatever the number of devices (design §6 aims at 100,000 per node). `claim`,
`release` and `holder` are Lua scripts, so "the newer session wins" is one atomic step: `claim` replaces
whatever is there and returns it if it was live. ``{prefix}held:{node_id}`` lists the devices a node id
claimed, so that its next run can delete what its previous run left. A presence left by a node id that
never returns is ignored, and removed when another node claims the device.

Requests. A request to a node is pushed to its list, ``{prefix}requests:{node_id}`` (only while its lease
holds; otherwise `NodeUnreachableError` at once), where that node pops it (BLPOP on a connection of its
own) and runs the handler in a task; the reply is published on the requester's own channel,
``{prefix}reply:{node_id}:{token}``, to which it subscribed when it connected. No answer within the
timeout raises `NodeUnreachableError`; a request older than its deadline when popped is not run.

Encoding and trust. Events travel as JSON. Request messages and replies are typed objects of the domain
(`cyan.cloud.routing` messages, models, `CloudError`s), pickled; they are unpickled by an unpickler that
builds nothing but plain data (str, bytes, numbers, containers, datetime values) and the dataclasses, enums
and `CloudError` subclasses of `cyan.cloud`'s modules, so a forged message cannot run code. Redis is part
of the trusted core of the cloud all the same, like PostgreSQL: whoever can write to it can publish events
to every node's subscribers, move presences and call functions on devices. Keep it on a private network,
with a password or an ACL user (``redis://user:password@host``) and TLS (``rediss://``) where the network
is not private.

Failures. A call that needs Redis while it is unreachable raises `BusUnavailableError`. The node keeps
reconnecting in the background (backing off up to a second); once back, it renews its lease and claims
again, from its own sessions, every presence that is missing or whose holder is gone (a restarted Redis
without persistence has lost them all). Events published while Redis was unreachable are lost to the other
nodes, and a reply that was being delivered is lost (its request times out).

All keys and channels start with a configurable prefix, so that several clouds, or the tests, can share one
Redis. One Redis server (or a primary with replicas): the scripts touch keys of other nodes, which Redis
Cluster does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import io
import json
import logging
import pickle
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cyan.cloud.errors import CloudError
from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import BusUnavailableError, EventFilter, NodeUnreachableError, Presence, RequestHandler

from ._local import BusSubscription, LocalFanOut

__all__ = ["RedisBus", "RedisOptions", "RemoteRequestError", "redis_url"]

log = logging.getLogger("cyan.bus.redis")

REDIS_SCHEMES = {"redis", "rediss", "unix"}

#: How long after its deadline a request popped from the list is still run: the nodes' clocks differ a little.
_CLOCK_SKEW = 2.0
#: Events sent to Redis per round trip.
_BATCH = 256


class RemoteRequestError(RuntimeError):
    """The node a request went to failed on it with an error that is not a `CloudError` (a bug there), or its
    message or reply could not be decoded; the message says which node and what."""


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Each may also be given in the URL's query string (``redis://host/0?prefix=cloud1:&lease=5``)."""

    #: Starts every key and channel of this cloud.
    prefix: str = "cyan:"
    #: Seconds a node's presences outlive it when it stops renewing (crash, lost network).
    lease: float = 10.0
    #: Seconds to connect to Redis, and for it to answer a command.
    timeout: float = 5.0
    #: Events queued for a subscriber that does not read before the oldest are dropped (default per bus).
    capacity: int = 1000
    #: Events queued to be sent to Redis before the oldest are dropped.
    outbox: int = 10_000
    #: Requests from other nodes handled at once; more wait in Redis.
    concurrent_requests: int = 256

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError(f"the key prefix must be a non-empty word without spaces, not {self.prefix!r}")
        if self.lease <= 0 or self.timeout <= 0:
            raise ValueError(f"lease and timeout must be more than 0 seconds, not {self.lease} and {self.timeout}")
        if self.capacity < 1 or self.outbox < 1 or self.concurrent_requests < 1:
            raise ValueError("capacity, outbox and concurrent_requests must be 1 or more")


def redis_url(url: str) -> tuple[str, RedisOptions, str]:
    """The URL for redis-py, the bus's options from the query string, and a description without password.

    Raises ValueError for another scheme or a bad option; messages never repeat the password.
    """
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"not a Redis URL: {parts.scheme!r} (use redis://, rediss:// or unix://)")
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    database = parts.path.strip("/") or "0"
    description = f"Redis at {where}" + ("" if parts.scheme == "unix" else f"/{database}")
    options: dict[str, Any] = {}
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("prefix",):
            options[name] = value
        elif name in ("lease", "timeout"):
            try:
                options[name] = float(value)
            except ValueError:
                raise ValueError(f"{description}: option {name} must be a number, not {value!r}") from None
        elif name in ("capacity", "outbox", "concurrent_requests"):
            try:
                options[name] = int(value)
            except ValueError:
                raise ValueError(f"{description}: option {name} must be a whole number, not {value!r}") from None
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), RedisOptions(**options), description


# -- the encodings ----------------------------------------------------------------------------------


def _encode_event(node: str, token: str, event: CloudEvent) -> bytes:
    fields = [
        event.name,
        event.data,
        event.ttl,
        event.published_at.isoformat(),
        event.device_id,
        event.owner,
        event.private,
    ]
    return json.dumps({"n": node, "t": token, "e": fields}, separators=(",", ":")).encode()


def _decode_event(data: bytes) -> tuple[str, CloudEvent]:
    """The token of the publishing node, and the event."""
    envelope = json.loads(data)
    name, text, ttl, published_at, device_id, owner, private = envelope["e"]
    event = CloudEvent(
        str(name),
        None if text is None else str(text),
        int(ttl),
        datetime.fromisoformat(published_at),
        None if device_id is None else str(device_id),
        None if owner is None else str(owner),
        bool(private),
    )
    return str(envelope["t"]), event


#: Where the messages between nodes are defined; only their dataclasses, enums and errors are rebuilt.
MESSAGE_MODULES = frozenset({"cyan.cloud.models", "cyan.cloud.errors", "cyan.cloud.ports", "cyan.cloud.routing"})
_PLAIN = {
    ("builtins", name)
    for name in ("str", "bytes", "bytearray", "int", "float", "complex", "bool", "list", "tuple", "dict", "set")
} | {("builtins", "frozenset"), ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time")}
_PLAIN |= {("datetime", "timedelta"), ("datetime", "timezone")}


class _DomainUnpickler(pickle.Unpickler):
    """Rebuilds plain data and the domain's dataclasses, enums and errors; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "cyan.cloud.errors" and name == "_restore":  # how a CloudError pickles itself
            return super().find_class(module, name)
        if module in MESSAGE_MODULES:
            found = super().find_class(module, name)
            if isinstance(found, type) and (
                dataclasses.is_dataclass(found) or issubclass(found, enum.Enum | CloudError)
            ):
                return found
            if isinstance(found, enum.Enum):  # a member pickled by name
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not a message type of the cloud")


def _dumps(value: object) -> bytes:
    return pickle.dumps(value, protocol=5)


def _loads(data: bytes) -> Any:
    return _DomainUnpickler(io.BytesIO(data)).load()


def _frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    # JSON never contains a NUL byte, so the first one ends the header.
    return json.dumps(header, separators=(",", ":")).encode() + b"\0" + body


def _unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    header, _, body = data.partition(b"\0")
    parsed = json.loads(header)
    if not isinstance(parsed, dict):
        raise ValueError("not a framed message")
    return parsed, body


# -- the scripts ---------------------------------------------------------------------------------------

# A presence is the JSON array [node id, node token, session id, claimed at]; it is live while the node's lease
# ({prefix}node:{id}) holds that token.

_CLAIM = """
local current = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
if not current then return false end
local held = cjson.decode(current)
if held[1] ~= cjson.decode(ARGV[1])[1] then redis.call('SREM', ARGV[2] .. 'held:' .. held[1], ARGV[3]) end
if redis.call('GET', ARGV[2] .. 'node:' .. held[1]) == held[2] then return current end
return false
"""

_HOLDER = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
local held = cjson.decode(current)
if redis.call('GET', ARGV[1] .. 'node:' .. held[1]) == held[2] then return current end
return false
"""

_RELEASE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local held = cjson.decode(current)
if held[1] == ARGV[1] and held[2] == ARGV[2] and held[3] == ARGV[3] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[4])
  return 1
end
return 0
"""

# After a lost connection or lease: this node's session of the device, unless the device has moved to another
# live node meanwhile.
_RECLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local held = cjson.decode(current)
  local mine = cjson.decode(ARGV[1])
  if held[1] == mine[1] and held[2] == mine[2] and held[3] == mine[3] then return 0 end
  if not (held[1] == mine[1] and held[2] == mine[2]) and
     redis.call('GET', ARGV[2] .. 'node:' .. held[1]) == held[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

# At start: what an earlier run of this node id left (presences under another token).
_SWEEP = """
for i = 4, #ARGV do
  local key = ARGV[1] .. 'presence:' .. ARGV[i]
  local current = redis.call('GET', key)
  local keep = false
  if current then
    local held = cjson.decode(current)
    if held[1] == ARGV[2] then
      if held[2] == ARGV[3] then keep = true else redis.call('DEL', key) end
    end
  end
  if not keep then redis.call('SREM', KEYS[1], ARGV[i]) end
end
return 0
"""

# 1: the lease was this run's; 0: it had lapsed; -1: another process holds it under this node id.
_RENEW = """
local current = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if current == ARGV[1] then return 1 end
if current then return -1 end
return 0
"""

# The list of a node that is gone expires once the last request in it is out of date.
_REQUEST = """
if not redis.call('GET', KEYS[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
"""


class RedisBus:
    """`cyan.cloud.ports.Bus` for the nodes of a cloud that share one Redis server (see the module's docstring).

    ``await start()`` joins the cloud: it connects, takes this node's lease and subscribes, and returns once this
    node receives the others' events and answers their requests, or raises `BusUnavailableError` naming the
    Redis that did not answer. A service starts its bus before it takes devices or API requests
    (`cyan.service.Service.start`). Any other call made before `start` starts the bus in the background, but
    until it has joined, a request to another node fails and another node's events are not seen here.
    ``await close()`` leaves the cloud: its presences go at once (``close(release=False)`` leaves them to
    expire with the lease, as a crash does).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        node_id: str,
        options: RedisOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not node_id or any(c.isspace() for c in node_id):
            raise ValueError(f"a node id is a non-empty word without spaces, not {node_id!r}")
        self._url, from_url, self.description = redis_url(url)
        self.options = options or from_url
        self.node_id = node_id
        self._clock = clock
        #: Drawn per run: presences of an earlier run of this node id are not this run's.
        self._token = secrets.token_hex(8)
        self._local = LocalFanOut(self.options.capacity)
        prefix = self.options.prefix
        self._events = f"{prefix}events"
        self._replies = f"{prefix}reply:{node_id}:{self._token}"
        self._lease_key = f"{prefix}node:{node_id}"
        self._held_key = f"{prefix}held:{node_id}"
        self._requests_key = f"{prefix}requests:{node_id}"
        self._state = "new"
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()
        #: This run's lease was taken at least once: there may be a lease and live presences of its own in Redis.
        self._leased = False
        self._last_error = "not connected yet"
        self._outbox: deque[bytes] = deque(maxlen=self.options.outbox)
        self._outbox_ready = asyncio.Event()
        #: This node's sessions: device -> (session, claimed at); what it claims again after losing Redis.
        self._held: dict[str, tuple[str, datetime]] = {}
        self._pending: dict[str, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._handler: RequestHandler | None = None
        self._handling: set[asyncio.Task[None]] = set()
        #: Events that never reached Redis (unreachable, or more queued than `options.outbox`).
        self.unsent = 0

    def __repr__(self) -> str:
        return f"<RedisBus node {self.node_id!r} on {self.description} ({self.options.prefix}*) {self._state}>"

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take this node's lease and subscribe; `BusUnavailableError` if Redis does not answer within
        twice the timeout (the bus keeps trying in the background until it is closed). Once joined, a lost
        connection is not an error here: the bus reconnects by itself."""
        self._launch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self.options.timeout * 2)
        if not self._connected.is_set():
            raise BusUnavailableError(f"cannot join the cloud: {self.description}: {self._last_error}")

    def _launch(self) -> None:
        if self._state == "closed":
            raise BusUnavailableError(f"the bus of node {self.node_id} is closed")
        if self._state == "running":
            return
        loop = asyncio.get_running_loop()
        self._state = "running"
        common: dict[str, Any] = {
            "socket_connect_timeout": self.options.timeout,
            "socket_timeout": self.options.timeout,
            # Failures are handled here (reconnecting, counting what was lost), never retried unseen.
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"{self.options.prefix}{self.node_id}",
        }
        self._client = aioredis.Redis.from_url(self._url, **common)
        self._blocking = aioredis.Redis.from_url(self._url, **common)
        sources = {
            "claim": _CLAIM,
            "holder": _HOLDER,
            "release": _RELEASE,
            "reclaim": _RECLAIM,
            "sweep": _SWEEP,
            "renew": _RENEW,
            "request": _REQUEST,
        }
        self._scripts = {name: self._client.register_script(source) for name, source in sources.items()}
        self._tasks = [
            loop.create_task(self._run(), name=f"cyan-bus-{self.node_id}"),
            loop.create_task(self._send(), name=f"cyan-bus-{self.node_id}-send"),
        ]
        if self._handler is not None:
            self._tasks.append(loop.create_task(self._serve(), name=f"cyan-bus-{self.node_id}-serve"))

    def _launch_soon(self) -> None:
        """From a synchronous call: start in the background if there is a running loop to start on."""
        if self._state == "new":
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop()
                self._launch()

    async def close(self, *, release: bool = True) -> None:
        """Leave the cloud: this node's presences go (unless `release` is False: then they expire with its
        lease, as a crashed node's do), its subscriptions end, it answers no request."""
        if self._state == "closed":
            return
        # A bus that never took its lease has nothing live in Redis to release (a presence counts only under it).
        was_running = self._state == "running" and self._leased
        self._state = "closed"
        self._connected.clear()
        self._local.close_all()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusUnavailableError(f"the bus of node {self.node_id} closed"))
        await _cancel([*self._tasks, *self._handling])
        if was_running and release and self._client is not None:
            try:
                await self._release_all()
            except (RedisError, OSError) as exc:
                log.warning(
                    "node %s left without releasing its presences (they expire with its lease): %s", self.node_id, exc
                )
        for client in (self._client, self._blocking):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def _release_all(self) -> None:
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for device_id, (session_id, _) in self._held.items():
                await self._scripts["release"](
                    keys=[self._presence_key(device_id), self._held_key],
                    args=[self.node_id, self._token, session_id, device_id],
                    client=pipe,
                )
            pipe.delete(self._lease_key)
            await pipe.execute()
        self._held.clear()

    def _require_client(self) -> aioredis.Redis:
        self._launch()
        assert self._client is not None
        return self._client

    def _presence_key(self, device_id: str) -> str:
        return f"{self.options.prefix}presence:{device_id}"

    def _unavailable(self, action: str, exc: BaseException) -> BusUnavailableError:
        return BusUnavailableError(f"cannot {action}: {self.description}: {exc or type(exc).__name__}")

    # -- the connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """Keep the subscription and the lease up; after any failure, reconnect with a growing pause."""
        pause = 0.05
        first = True
        while self._state == "running":
            pubsub: PubSub | None = None
            try:
                pubsub = await self._connect(first)
                first = False
                pause = 0.05
                self._connected.set()
                self._attempted.set()
                await self._listen(pubsub)
            except (RedisError, OSError, ValueError) as exc:
                if self._connected.is_set():
                    log.warning("node %s lost %s, reconnecting: %s", self.node_id, self.description, exc)
                    # Pub/sub keeps nothing for a subscriber that is away: what other nodes publish until this
                    # node is back never arrives, and the streams here say so.
                    self._local.interrupted()
                self._last_error = str(exc) or type(exc).__name__
                self._connected.clear()
                self._attempted.set()
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _connect(self, first: bool) -> PubSub:
        client = self._require_client()
        held = await self._renew(first=first)
        self._leased = True
        if first:
            await self._sweep()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._events, self._replies)
            if not first or held != 1:
                await self._reclaim()
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            raise
        return pubsub

    async def _listen(self, pubsub: PubSub) -> None:
        interval = self.options.lease / 3
        renew_at = time.monotonic() + interval
        in_a_row = 0
        while self._state == "running":
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=max(0.0, renew_at - time.monotonic())
            )
            if message is not None and message.get("type") == "message":
                self._dispatch(message["channel"], message["data"])
                in_a_row += 1
                if in_a_row % 64 == 0:
                    # Buffered messages are read without suspending: let the devices' tasks run during a burst.
                    await asyncio.sleep(0)
            if time.monotonic() >= renew_at:
                if await self._renew() != 1:
                    await self._reclaim()
                renew_at = time.monotonic() + interval

    async def _renew(self, *, first: bool = False) -> int:
        outcome = int(
            await self._scripts["renew"](keys=[self._lease_key], args=[self._token, round(self.options.lease * 1000)])
        )
        if first:
            return outcome  # an earlier run's lease, if any, is this run's to take over
        if outcome == -1:
            log.error(
                "another process runs as node %s on %s: give each node its own id", self.node_id, self.description
            )
        elif outcome == 0 and self._held:
            log.warning("node %s's lease had lapsed: claiming its %d sessions again", self.node_id, len(self._held))
        return outcome

    async def _sweep(self) -> None:
        client = self._require_client()
        members = [member.decode() async for member in client.sscan_iter(self._held_key, count=1000)]
        for start in range(0, len(members), 500):
            chunk = members[start : start + 500]
            await self._scripts["sweep"](
                keys=[self._held_key], args=[self.options.prefix, self.node_id, self._token, *chunk]
            )

    async def _reclaim(self) -> None:
        """Claim again this node's sessions whose presence is missing or whose holder is gone."""
        if not self._held:
            return
        client = self._require_client()
        held = list(self._held.items())
        for start in range(0, len(held), 500):
            async with client.pipeline(transaction=False) as pipe:
                for device_id, (session_id, since) in held[start : start + 500]:
                    await self._scripts["reclaim"](
                        keys=[self._presence_key(device_id), self._held_key],
                        args=[self._presence_value(session_id, since), self.options.prefix, device_id],
                        client=pipe,
                    )
                await pipe.execute()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            if channel == self._replies.encode():
                header, body = _unframe(data)
                future = self._pending.get(str(header.get("id")))
                if future is not None and not future.done():
                    future.set_result((header, body))
                return
            token, event = _decode_event(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "node %s ignored a malformed message on %s: %s", self.node_id, channel.decode(errors="replace"), exc
            )
            return
        if token == self._token:
            return  # this node's own event, delivered when it was published
        try:
            self._local.deliver(event)
        except Exception:
            log.exception("a listener failed on event %r from another node", event.name)

    # -- events ---------------------------------------------------------------------------------

    def publish(self, event: CloudEvent) -> None:
        self._launch_soon()
        if self._state == "running" and self._connected.is_set():
            if len(self._outbox) == self._outbox.maxlen:
                self.unsent += 1  # the oldest goes: a publisher never waits
            self._outbox.append(_encode_event(self.node_id, self._token, event))
            self._outbox_ready.set()
        else:
            self.unsent += 1
        self._local.deliver(event)

    async def _send(self) -> None:
        """Send queued events in batches, one batch at a time: the order of `publish` is kept."""
        while self._state == "running":
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(_BATCH, len(self._outbox)))]
                try:
                    async with self._require_client().pipeline(transaction=False) as pipe:
                        for data in batch:
                            pipe.publish(self._events, data)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    self.unsent += len(batch)
                    log.warning("node %s lost %d events it could not send: %s", self.node_id, len(batch), exc)

    def subscribe(
        self, prefix: str = "", accept: EventFilter | None = None, *, capacity: int | None = None
    ) -> BusSubscription:
        self._launch_soon()
        return self._local.subscribe(prefix, accept, capacity)

    def add_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """A synchronous callback for every event (the fan-out to devices); it must not block."""
        self._launch_soon()
        self._local.listeners.append(listener)

    def close_all(self) -> None:
        self._local.close_all()

    # -- presence -------------------------------------------------------------------------------

    def _presence_value(self, session_id: str, since: datetime) -> str:
        return json.dumps([self.node_id, self._token, session_id, since.isoformat()], separators=(",", ":"))

    def _presence(self, value: bytes | None) -> Presence | None:
        if value is None:
            return None
        node_id, _, session_id, since = json.loads(value)
        return Presence(str(node_id), str(session_id), datetime.fromisoformat(since))

    async def claim(self, device_id: str, session_id: str) -> Presence | None:
        since = self._clock()
        # Kept first: should Redis be unreachable, the session is claimed again once it is back.
        self._held[device_id] = (session_id, since)
        client = self._require_client()
        try:
            replaced = await self._scripts["claim"](
                keys=[self._presence_key(device_id), self._held_key],
                args=[self._presence_value(session_id, since), self.options.prefix, device_id],
                client=client,
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"claim device {device_id}", exc) from exc
        return self._presence(replaced)

    async def release(self, device_id: str, session_id: str) -> None:
        if self._held.get(device_id, (None,))[0] == session_id:
            del self._held[device_id]
        client = self._require_client()
        try:
            await self._scripts["release"](
                keys=[self._presence_key(device_id), self._held_key],
                args=[self.node_id, self._token, session_id, device_id],
                client=client,
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"release device {device_id}", exc) from exc

    async def holder(self, device_id: str) -> Presence | None:
        client = self._require_client()
        try:
            value = await self._scripts["holder"](
                keys=[self._presence_key(device_id)], args=[self.options.prefix], client=client
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"find the node of device {device_id}", exc) from exc
        return self._presence(value)

    # -- requests between nodes -----------------------------------------------------------------

    def serve(self, handler: RequestHandler) -> None:
        first = self._handler is None
        self._handler = handler
        if first and self._state == "running":
            task = asyncio.get_running_loop().create_task(self._serve(), name=f"cyan-bus-{self.node_id}-serve")
            self._tasks.append(task)
        else:
            self._launch_soon()

    async def request(self, node_id: str, message: Any, timeout: float) -> Any:
        if node_id == self.node_id:
            return await self._request_here(message, timeout)
        client = self._require_client()
        if not self._connected.is_set():
            raise BusUnavailableError(
                f"cannot send a request to node {node_id}: {self.description}: {self._last_error}"
            )
        request_id = secrets.token_hex(12)
        header = {"id": request_id, "from": self.node_id, "reply": self._replies, "deadline": time.time() + timeout}
        payload = _frame(header, _dumps(message))
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                sent = await self._scripts["request"](
                    keys=[f"{self.options.prefix}node:{node_id}", f"{self.options.prefix}requests:{node_id}"],
                    args=[payload, round((timeout + _CLOCK_SKEW) * 1000) + 1000],
                    client=client,
                )
            except (RedisError, OSError) as exc:
                raise self._unavailable(f"send a request to node {node_id}", exc) from exc
            if not sent:
                raise NodeUnreachableError(f"node {node_id} is not serving requests: it is not in the cloud")
            try:
                reply, body = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise NodeUnreachableError(f"node {node_id} did not answer within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)
        return _outcome(node_id, reply, body)

    async def _request_here(self, message: Any, timeout: float) -> Any:
        if self._handler is None:
            raise NodeUnreachableError(f"node {self.node_id} is not serving requests")
        try:
            return await asyncio.wait_for(self._handler(message), timeout)
        except TimeoutError:
            raise NodeUnreachableError(f"node {self.node_id} did not answer within {timeout:g} s") from None

    async def _serve(self) -> None:
        """Pop the requests sent to this node and handle each in a task of its own."""
        assert self._blocking is not None
        slots = asyncio.Semaphore(self.options.concurrent_requests)
        pause = 0.05
        await self._connected.wait()  # no list of this node's to read before it has joined (nor warnings)
        while self._state == "running":
            await slots.acquire()
            try:
                popped = await self._blocking.blpop([self._requests_key], timeout=1)
            except (RedisError, OSError) as exc:
                slots.release()
                log.warning("node %s cannot read its requests, retrying: %s", self.node_id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            pause = 0.05
            if popped is None:
                slots.release()
                continue
            data = popped[1]
            task = asyncio.get_running_loop().create_task(
                self._handle(data if isinstance(data, bytes) else data.encode())
            )
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _handle(self, data: bytes) -> None:
        try:
            header, body = _unframe(data)
            reply_to, request_id, deadline = str(header["reply"]), str(header["id"]), float(header["deadline"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("node %s ignored a malformed request: %s", self.node_id, exc)
            return
        if time.time() > deadline + _CLOCK_SKEW:
            return  # its sender has given up on it
        reply: dict[str, Any] = {"id": request_id}
        result = b""
        handler = self._handler
        try:
            if handler is None:
                raise RemoteRequestError(f"node {self.node_id} is not serving requests")
            value = await handler(_loads(body))
            result = _dumps(value)
            reply["outcome"] = "ok"
        except CloudError as exc:
            reply["outcome"] = "error"
            result = _dumps(exc)
        except Exception as exc:
            reply.update(outcome="failed", text=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, pickle.UnpicklingError | RemoteRequestError):
                log.exception("node %s failed on a request from node %s", self.node_id, header.get("from"))
        try:
            await self._require_client().publish(reply_to, _frame(reply, result))
        except (RedisError, OSError) as exc:
            log.warning("node %s could not reply to node %s: %s", self.node_id, header.get("from"), exc)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end. A cancellation that arrives as a read's own timeout expires
    can be taken for that timeout (asyncio.timeout in Python 3.11, under redis-py's reads): so cancel again
    until each has ended, rather than wait forever on one that went on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()


def _outcome(node_id: str, reply: dict[str, Any], body: bytes) -> Any:
    outcome = reply.get("outcome")
    if outcome == "failed":
        raise RemoteRequestError(f"node {node_id} failed on the request: {reply.get('text')}")
    try:
        value = _loads(body)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise RemoteRequestError(f"the reply of node {node_id} could not be decoded: {exc}") from exc
    if outcome == "error":
        if isinstance(value, CloudError):
            raise value
        raise RemoteRequestError(f"node {node_id} answered with an error that is not the cloud's: {value!r}")
    return value
