"""What logins cost everyone else: the API's and a function call's latency while clients hammer `/oauth/token`.

    .venv/bin/python bench/login_load.py [--requests 400] [--login-clients 4]

One `cyan serve`, one simulated device, one user. The same sequence of requests (`GET /v1/devices`, then a
function call through the API to the device, in turn) is timed three times in the same run: with no other
traffic, while `--login-clients` clients log in with the right password as fast as they are answered (each
login is a deliberately slow scrypt check), and while as many clients try wrong passwords (refused with 429
once the account's and the address's failures reach their limits, docs/security.md), and, as the reference for
that last one, while as many clients send requests with a bad token (any cheap request answered at once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
from _common import CYAN, RawHttp, Server, cyan_serve, register, table

from cyan.sim import AppSpec, Fleet, SimConfig

USER, PASSWORD = "bench@example.com", "bench password"
#: Instead of a password: the clients send any cheap request (a bad token) as fast as it is answered.
BAD_TOKEN = "\x00bad token"


async def _timed_requests(server: Server, token: str, device: str, count: int) -> tuple[list[float], list[float]]:
    """Latencies of `GET /v1/devices` and of a function call, alternating."""
    raw = await RawHttp.connect("127.0.0.1", server.api_port)
    listing: list[float] = []
    calls: list[float] = []
    try:
        for n in range(count):
            started = time.perf_counter()
            if n % 2:
                status, answer = await raw.request("POST", f"/v1/devices/{device}/setArg", token, b'{"args":"x"}')
                calls.append(time.perf_counter() - started)
            else:
                status, answer = await raw.request("GET", "/v1/devices", token)
                listing.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"request failed: {status} {answer!r}")
    finally:
        await raw.close()
    return listing, calls


async def _hammer(server: Server, password: str, stop: asyncio.Event, answers: dict[int, int]) -> None:
    """Log in over and over until `stop` (or, with the password BAD_TOKEN, list devices with a token that
    is not one); counts the answers by status."""
    form = {"grant_type": "password", "username": USER, "password": password}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}", timeout=60) as client:
        while not stop.is_set():
            if password == BAD_TOKEN:
                response = await client.get("/v1/devices", headers={"Authorization": "Bearer not-a-token"})
            else:
                response = await client.post("/oauth/token", data=form, auth=("particle", "particle"))
            answers[response.status_code] = answers.get(response.status_code, 0) + 1


async def _phase(
    server: Server, token: str, device: str, count: int, *, clients: int, password: str | None
) -> tuple[list[float], list[float], dict[int, int], float]:
    stop = asyncio.Event()
    answers: dict[int, int] = {}
    hammers = (
        [asyncio.create_task(_hammer(server, password, stop, answers)) for _ in range(clients)] if password else []
    )
    await asyncio.sleep(1.0 if hammers else 0.0)  # the logins are under way before the timing starts
    started = time.perf_counter()
    try:
        listing, calls = await _timed_requests(server, token, device, count)
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*hammers)
    return listing, calls, answers, elapsed


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


async def measure(server: Server, fleet: Fleet, count: int, clients: int) -> list[tuple[str, str, str]]:
    (device,) = fleet.devices
    device.start("127.0.0.1", server.device_port)
    if not await fleet.wait_connected(timeout=60):
        raise RuntimeError(f"the device did not connect: {fleet.stats()}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}", timeout=30) as client:
        login = await client.post(
            "/oauth/token", data={"grant_type": "password", "username": USER, "password": PASSWORD}
        )
        token = login.json()["access_token"]
    quiet_list, quiet_call, _, _ = await _phase(server, token, device.device_id, count, clients=0, password=None)
    busy_list, busy_call, busy_answers, busy_seconds = await _phase(
        server, token, device.device_id, count, clients=clients, password=PASSWORD
    )
    wrong_list, wrong_call, wrong_answers, _ = await _phase(
        server, token, device.device_id, count, clients=clients, password="not the password"
    )
    flood_list, flood_call, flood_answers, flood_seconds = await _phase(
        server, token, device.device_id, count, clients=clients, password=BAD_TOKEN
    )
    await fleet.stop()

    rows: list[tuple[str, str, str]] = []
    for label, quiet, busy, wrong, flood in (
        ("GET /v1/devices", quiet_list, busy_list, wrong_list, flood_list),
        ("function call", quiet_call, busy_call, wrong_call, flood_call),
    ):
        q50, q99 = _p50_p99(quiet)
        b50, b99 = _p50_p99(busy)
        w50, w99 = _p50_p99(wrong)
        f50, f99 = _p50_p99(flood)
        rows.append(
            (
                f"{label} p50 / p99, {clients} clients logging in",
                f"{b50:.2f} / {b99:.2f} ms ({b50 / q50:.2f}x)",
                f"{q50:.2f} / {q99:.2f} ms without them; goal p50 within 2x",
            )
        )
        rows.append(
            (
                f"{label} p50 / p99, {clients} clients guessing passwords",
                f"{w50:.2f} / {w99:.2f} ms ({w50 / q50:.2f}x)",
                f"{q50:.2f} / {q99:.2f} ms without them; {f50:.2f} / {f99:.2f} ms ({f50 / q50:.2f}x) with as many "
                "clients sending requests with a bad token",
            )
        )
    logins = busy_answers.get(200, 0)
    rows.append(("logins answered meanwhile", f"{logins / busy_seconds:.1f}/s", "each a deliberate scrypt check"))
    refused = wrong_answers.get(429, 0)
    total = sum(wrong_answers.values())
    rows.append(
        (
            "wrong passwords refused with 429",
            f"{refused} of {total}",
            f"the rest checked and audited; {sum(flood_answers.values()) / flood_seconds:.0f} bad-token requests/s",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--login-clients", type=int, default=4)
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench-login"))
    args = parser.parse_args()
    with cyan_serve() as server:
        subprocess.run(
            [str(CYAN), "users", "add", USER, "--password", PASSWORD, "--data-dir", str(server.data_dir)],
            check=True,
            capture_output=True,
        )
        fleet = Fleet.load_or_create(
            args.keys_dir,
            1,
            server.public_key,
            app=replace(AppSpec(), periodic=(), call_event=None),
            config=SimConfig(goodbye_on_stop=False),
        )
        (spec,) = [device.spec for device in fleet.devices]
        register(server.data_dir, [spec.private_key], owner=USER, ids=[spec.device_id])
        rows = asyncio.run(measure(server, fleet, args.requests, args.login_clients))
    print(table("API latency while clients log in, one cyan serve process", rows))


if __name__ == "__main__":
    main()
