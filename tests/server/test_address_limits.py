"""The limit on new connections from one address: a flood costs no RSA work and a bounded number of records,
while devices behind one busy NAT all get through on the firmware's own backoff."""

from __future__ import annotations

import asyncio
import heapq

from cyan.cloud.watch import SERVER_LIMIT_REASONS
from cyan.cloud.writer import RecordLimits
from cyan.server.device_server import OVERLOADED, RATE_LIMITED, AddressLimits, _AddressGate
from cyan.sim import backoff_delay
from device_server_support import served_server


def test_the_bucket_admits_a_burst_then_its_rate() -> None:
    gate = _AddressGate(AddressLimits(burst=3, per_second=2.0))
    assert [gate.admit("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert gate.admit("b", 0.0)  # another address has its own
    assert not gate.admit("a", 0.2)
    assert gate.admit("a", 0.5)  # one token back after half a second
    assert not gate.admit("a", 0.5)
    assert [gate.admit("a", 100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst


def test_the_gate_forgets_quiet_addresses_first() -> None:
    gate = _AddressGate(AddressLimits(burst=2, per_second=1.0), max_tracked=3)
    gate.admit("busy", 0.0)
    gate.admit("busy", 0.0)
    gate.admit("quiet-1", 0.0)
    gate.admit("quiet-2", 0.0)
    # At 10 s the quiet ones are full again and go; the busy one, refilled too, goes as well, but a new
    # address still gets in and the table stays bounded.
    assert gate.admit("new", 10.0)
    assert len(gate._buckets) <= 3


def test_devices_behind_one_nat_all_get_through_on_their_backoff() -> None:
    """2000 devices behind one address reconnect at once (the server restarted): with the default limits and
    the firmware's backoff (§8.3: 1 s after each of the first five failures, 2 s after the next five...),
    every one is admitted within a minute, and the refused connections stay a small multiple of the fleet.
    The devices here retry in lockstep, the worst case; docs/security.md has the figures for larger sites."""
    limits = AddressLimits()
    gate = _AddressGate(limits)
    devices = 2000
    queue = [(0.0, n, 0) for n in range(devices)]  # (when, device, failures so far)
    heapq.heapify(queue)
    admitted_at: dict[int, float] = {}
    refused = 0
    while queue:
        when, device, failures = heapq.heappop(queue)
        if gate.admit("198.51.100.1", when):
            admitted_at[device] = when
        else:
            refused += 1
            heapq.heappush(queue, (when + backoff_delay(failures + 1), device, failures + 1))
    assert len(admitted_at) == devices
    # The ideal is (2000 - 200) / 50 = 36 s; the herd's backoff steps waste a few seconds of tokens (43 s).
    assert max(admitted_at.values()) <= 60
    assert refused <= 10 * devices


def test_a_flood_from_one_address_is_refused_before_the_handshake_and_recorded_in_bounded_rows() -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(
            address_limits=AddressLimits(burst=3, per_second=0.001),
            records=RecordLimits(identical=5),
            max_handshakes=128,
        )
        assert app.gateway is not None
        store = app.store
        served = refused = 0
        try:
            for _ in range(40):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                # An admitted connection gets the server's 40-byte nonce; a refused one only the close.
                data = await asyncio.wait_for(reader.read(40), 10)
                if data:
                    assert len(data) == 40
                    served += 1
                else:
                    refused += 1
                writer.close()
                await writer.wait_closed()
            assert (served, refused) == (3, 37)
        finally:
            await server.stop()
            await app.gateway.drain()
            await cloud.stop()  # sums up what was only counted
        limited = [a for a in await store.attempts.recent() if a.reason == RATE_LIMITED]
        # Five single records and one summary for the other 32, not 37 rows.
        assert len(limited) == 6
        assert limited[0].detail is not None
        assert limited[0].detail.startswith("32 more attempt(s)")
        assert "127.0.0.1" in (limited[-1].detail or "")
        await store.close()

    asyncio.run(scenario())


def test_the_cloud_knows_the_reasons_of_the_servers_own_refusals() -> None:
    # They raise no handshake-loop alert (cyan.cloud.watch): nothing a device did.
    assert {OVERLOADED, RATE_LIMITED} == SERVER_LIMIT_REASONS
