"""The CPU the record writer spends on each handshake's records, with and without letting a batch gather.

    .venv/bin/python bench/records.py [--rate 300] [--seconds 4] [--gather 0.05]

Every session start leaves one attempt record and the device's state to be written behind it
(cyan.cloud.writer.RecordWriter, on SQLite as `cyan serve` runs it). Here handshakes are stood in for by
queueing those two records at `--rate` per second, for `--seconds`, into a writer on a fresh database: first
one that writes as soon as something is queued (what the writer did before), then one that lets records
gather for `--gather` seconds before each batch, in the same run. The figure is the process's CPU time (all
its threads: the event loop's SQLAlchemy work and the driver's thread) per handshake's records, less what
the same load costs with a writer that never writes, and the handshakes each batch held. No device server
runs: this is the writer's share of the server's CPU per handshake alone. Under a heavier load the writer's
batches grow by themselves (each waits for the previous write), so the difference shrinks with the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import keys, table

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord
from cyan.cloud.writer import RecordWriter
from cyan.keys import fingerprint, public_key_der
from cyan.store import SqliteStore

DEVICES = 200


async def run(rate: float, seconds: float, gather: float | None) -> tuple[float, float]:
    """CPU seconds per handshake's records, and records per batch; `gather` None: the load alone, with a
    writer that is never started (what queueing the records costs, subtracted from the others)."""
    with tempfile.TemporaryDirectory(prefix="cyan-bench-records-") as tmp:
        async with SqliteStore(Path(tmp) / "cyan.db") as store:
            der = public_key_der(keys(1)[0].public_key())
            devices = [
                DeviceRecord(
                    id=f"{0xBE4C000000 + n:024x}",
                    owner=None,
                    public_key_der=der,
                    key_fingerprint=fingerprint(der),
                    created_at=datetime.now(UTC),
                )
                for n in range(DEVICES)
            ]
            await store.devices.add_many(devices)
            writer = RecordWriter(store, gather=gather or 0.0)
            batches = 0
            write_once = writer._write_once

            async def counted() -> None:
                nonlocal batches
                batches += 1
                await write_once()

            writer._write_once = counted  # type: ignore[method-assign]
            if gather is not None:
                writer.start()
            count = int(rate * seconds)
            cpu = os.times()
            started = time.monotonic()
            for n in range(count):
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                device = devices[n % DEVICES]
                writer.state(device)
                writer.attempt(
                    ConnectionAttempt(
                        datetime.now(UTC),
                        "127.0.0.1:40000",
                        AttemptOutcome.CONNECTED,
                        "session",
                        device_id=device.id,
                        presented_fingerprint=device.key_fingerprint,
                        stored_fingerprint=device.key_fingerprint,
                        duration=0.01,
                        proven=True,
                    )
                )
            if gather is not None:
                await writer.stop()
            after = os.times()
    used = (after.user - cpu.user) + (after.system - cpu.system)
    return used / count, count / max(batches, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="handshakes per second")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--gather", type=float, default=0.05, help="seconds a batch gathers (the writer's default)")
    args = parser.parse_args()
    asyncio.run(run(args.rate, 0.5, 0.0))  # warm up (imports, SQLite)
    load, _ = asyncio.run(run(args.rate, args.seconds, None))
    immediate, immediate_batch = asyncio.run(run(args.rate, args.seconds, 0.0))
    gathered, gathered_batch = asyncio.run(run(args.rate, args.seconds, args.gather))
    immediate, gathered = max(immediate - load, 0.0), max(gathered - load, 0.0)
    print(
        table(
            f"Record writer, SQLite, {args.rate:g} handshakes/s for {args.seconds:g} s",
            [
                (
                    "CPU per handshake's records, written at once",
                    f"{immediate * 1000:.3f} ms",
                    f"{immediate_batch:.1f} handshakes a batch",
                ),
                (
                    f"CPU per handshake's records, gathered {args.gather:g} s",
                    f"{gathered * 1000:.3f} ms",
                    f"{gathered_batch:.1f} handshakes a batch",
                ),
                ("gathered / at once", f"{gathered / immediate:.2f}x", "same run"),
                ("the load alone (queueing, not writing)", f"{load * 1000:.3f} ms", "subtracted from the two above"),
            ],
        )
    )


if __name__ == "__main__":
    main()
