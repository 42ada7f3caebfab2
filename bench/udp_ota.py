"""Updates over UDP: OTA protocol v3 (Gen 3 from Device OS 3.0) against the legacy chunked OTA, in one run.

    .venv/bin/python bench/udp_ota.py [--devices 10] [--size 262144] [--loss 0.0] [--rounds 2]

One `cyan serve` subprocess; in this process, 2 x --devices simulated Argons on Device OS 4.0.2
(`cyan.sim.UdpVirtualDevice`): half say OTA v3 in their Hello as a real Argon does, half are the same Argon
with the legacy update (as the stock Linux virtual device and the Electron take it). Each device's datagrams
are lost with probability --loss (and doubled as often), both ways. Each round uploads a new user part of
--size bytes (`POST /v1/firmware`) and updates one group (`POST /v1/updates`, every device of the group at
once), then the other, the order alternating between rounds. Each job ends when the device came back running
the image (its Describe's hash).

Reported per protocol: the median transfer time per device (the job's `transfer_seconds`), the time from the
request to the group's last job's end, and the server's CPU time per MB sent; and v3 over legacy as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from dataclasses import replace

import httpx
from _common import cyan_serve, free_udp_port, register, server_cpu_seconds, table, user_with_token
from cryptography.hazmat.primitives.asymmetric import ec

from cyan.keys import load_ec_public_key
from cyan.protocol.binary import build_module
from cyan.protocol.datagram import ARGON_4_0_2
from cyan.sim import ARGON_4, UdpFaults, UdpPersonality, UdpVirtualDevice

USER, PASSWORD = "bench@example.com", "bench password"
#: The same Argon, updated the legacy way (as if its Hello did not say 0x80).
LEGACY_ARGON = UdpPersonality(
    replace(ARGON_4_0_2, ota_protocol_v3=False), connection_id=ARGON_4.connection_id, move=ARGON_4.move
)


def image_of(size: int, version: int) -> bytes:
    """An Argon user part of about `size` bytes, module version `version` (a new hash each round)."""
    body_size = size - 24 - 40 - 4
    seed = hashlib.sha256(b"bench image %d" % version).digest()
    return build_module((seed * (body_size // 32 + 1))[:body_size], platform_id=12, module_version=version)


async def update(
    api: httpx.AsyncClient, pid: int, ids: list[str], image: bytes
) -> tuple[list[float | None], float, float, int]:
    """One group updated at once: each device's transfer seconds (None: its end was not seen), the wall time,
    the server's CPU time, and the transfers sent again."""
    uploaded = await api.post("/v1/firmware", files={"file": ("bench.bin", image)})
    uploaded.raise_for_status()
    cpu_before = server_cpu_seconds(pid)
    started = time.monotonic()
    response = await api.post("/v1/updates", json={"firmware": uploaded.json()["sha256"], "devices": ids})
    response.raise_for_status()
    rollout = response.json()["rollout"]
    ids = [job["id"] for job in response.json()["jobs"]]
    while True:
        # One request a poll, twice a second: the polling is part of the server's CPU time measured.
        if rollout is not None:
            jobs = (await api.get("/v1/updates", params={"rollout": rollout, "limit": len(ids)})).json()
        else:
            jobs = [(await api.get(f"/v1/updates/{job_id}")).json() for job_id in ids]
        if all(job["state"] in ("succeeded", "failed") for job in jobs):
            break
        await asyncio.sleep(0.5)
    wall = time.monotonic() - started
    cpu = server_cpu_seconds(pid) - cpu_before
    failed = [(job["device_id"], job["reason"], job["detail"]) for job in jobs if job["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"updates failed: {failed}")
    # A transfer whose last answer was lost ends with the device's return (its reset): it has no transfer time.
    return [job["transfer_seconds"] for job in jobs], wall, cpu, sum(job["attempts"] - 1 for job in jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10, help="devices per protocol")
    parser.add_argument("--size", type=int, default=262144, help="image bytes (a Gen 3 user part is at most 256 KiB)")
    parser.add_argument("--loss", type=float, default=0.0, help="chance a datagram is lost (and doubled), each way")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2 * args.devices)]
    ids = [f"{0xB3C0000000 + n:024x}" for n in range(2 * args.devices)]
    groups = {"v3": ids[: args.devices], "legacy": ids[args.devices :]}
    port = free_udp_port()
    results: dict[str, tuple[list[float | None], list[float], list[float], list[int]]] = {
        "v3": ([], [], [], []),
        "legacy": ([], [], [], []),
    }
    with cyan_serve("--device-udp-port", str(port)) as server:
        token = user_with_token(server.data_dir, USER, PASSWORD)
        register(server.data_dir, keys, owner=USER, ids=ids)
        public = load_ec_public_key((server.data_dir / "udp_server_public_key.der").read_bytes())

        async def run() -> None:
            devices = [
                UdpVirtualDevice(
                    bytes.fromhex(device_id),
                    key,
                    public,
                    personality=ARGON_4 if device_id in groups["v3"] else LEGACY_ARGON,
                    faults=UdpFaults(loss=args.loss, duplicate=args.loss, seed=n) if args.loss else None,
                )
                for n, (device_id, key) in enumerate(zip(ids, keys, strict=True))
            ]
            for device in devices:
                await device.start("127.0.0.1", port)
            try:
                await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
                await asyncio.sleep(2.0)  # the start-up messages are over
                headers = {"Authorization": f"Bearer {token}"}
                base = f"http://127.0.0.1:{server.api_port}"
                async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as api:
                    version = 10
                    for round_ in range(args.rounds):
                        order = ["v3", "legacy"] if round_ % 2 == 0 else ["legacy", "v3"]
                        for kind in order:
                            version += 1
                            transfers, wall, cpu, again = await update(
                                api, server.pid, groups[kind], image_of(args.size, version)
                            )
                            results[kind][0].extend(transfers)
                            results[kind][1].append(wall)
                            results[kind][2].append(cpu)
                            results[kind][3].append(again)
                            await asyncio.sleep(2.0)  # every device back and settled
            finally:
                for device in devices:
                    await device.stop()

        asyncio.run(run())
    size = len(image_of(args.size, 0))
    mb = size * args.devices / 1e6
    rows = []
    summary = {}
    for kind in ("v3", "legacy"):
        all_transfers, walls, cpus, again = results[kind]
        transfers = [t for t in all_transfers if t is not None]
        transfer = statistics.median(transfers)
        wall = statistics.median(walls)
        cpu_per_mb = statistics.median(cpus) / mb
        summary[kind] = (transfer, wall, cpu_per_mb)
        rows += [
            (f"{kind}: transfer per device, median", f"{transfer:.2f} s", f"{size / transfer / 1e3:.0f} kB/s"),
            (f"{kind}: request to the group's last job's end, median", f"{wall:.2f} s", f"{len(walls)} rollouts"),
            (f"{kind}: server CPU per MB sent, median", f"{cpu_per_mb:.3f} s", ""),
            (
                f"{kind}: transfers sent again / ended by the device's return",
                f"{sum(again)} / {len(all_transfers) - len(transfers)}",
                f"of {len(all_transfers)} updates",
            ),
        ]
    v3, legacy = summary["v3"], summary["legacy"]
    rows += [
        ("v3 / legacy: transfer time", f"{v3[0] / legacy[0]:.3g}x", "lower is faster"),
        ("v3 / legacy: rollout time", f"{v3[1] / legacy[1]:.3g}x", ""),
        ("v3 / legacy: server CPU per MB", f"{v3[2] / legacy[2]:.3g}x", ""),
    ]
    print(
        table(
            f"Updates over UDP: {args.devices} Argons per protocol, {size:,}-byte image, loss {args.loss:g}, "
            f"{args.rounds} rounds",
            rows,
        )
    )


if __name__ == "__main__":
    main()
