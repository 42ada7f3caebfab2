"""`cyan devices flash|updates|group`: firmware updates of one device, many, all of yours or a group.

Updates are sent by the running server (the devices are connected to it, not to this command), so
`flash` and `updates` ask its HTTP API with an access token (`--server`, `--token` or CYAN_TOKEN; a
token comes from `cyan tokens create USER`): `flash` uploads the binary (`POST /v1/firmware`, refused
there when no device would take it), starts a rollout (`POST /v1/updates`) and follows its jobs with a
progress bar per device, then prints a summary. `cyan devices group` edits the groups.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from ._http import read_response

__all__ = ["flash", "list_updates"]

_DEFAULT_SERVER = "http://127.0.0.1:8080"
_FINISHED = ("succeeded", "failed")
#: How a job is shown that waits for its offline device: the server sends it at the device's next connection,
#: so following it is not waiting for anything this command can see happen.
_WAITING_FOR_DEVICE = "queued: device offline"
#: Seconds between looks at which devices are online.
_ONLINE_EVERY = 5.0

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="CYAN_SERVER",
        help=f"The Cyan server's API URL (default: {_DEFAULT_SERVER}).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="CYAN_TOKEN", help="An access token (`cyan tokens create USER`).", show_default=False
    ),
]


class ApiError(ValueError):
    """The server refused or could not be reached; the message says why, `hint` what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _Api:
    def __init__(self, server: str | None, token: str | None) -> None:
        if not token:
            raise ApiError("no access token", "pass --token or set CYAN_TOKEN (`cyan tokens create USER`)")
        self.base = (server or _DEFAULT_SERVER).rstrip("/")
        self.client = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                f"cannot reach {self.base}: {exc}", "check --server (the API port, 8080 by default)"
            ) from exc
        body, detail = read_response(response)
        if detail is not None:
            hints = {
                401: "the token is missing, expired or revoked: `cyan tokens create USER`",
                403: "this account may not do that on that server",
                404: "a device is not yours on that server, or not registered there; check the names and the URL",
            }
            hint = hints.get(response.status_code, "nothing was sent to any device")
            raise ApiError(f"{path}: {response.status_code} {detail}", hint)
        return body

    def close(self) -> None:
        self.client.close()


def flash(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="The devices (ids or names), then the binary; with --all or --group, the binary alone.",
            metavar="[DEVICE]... FILE",
        ),
    ],
    all_devices: Annotated[bool, typer.Option("--all", help="Every device of yours.")] = False,
    group_name: Annotated[
        str | None, typer.Option("--group", help="The devices of a group (`cyan devices group`).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Devices updated at once.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto, fast or non_fast (protocol.md §7.1).")] = "auto",
    attempts: Annotated[
        int | None, typer.Option("--attempts", min=1, help="Transfers per device before it fails.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Stop following after this many seconds.")] = 3600.0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the jobs to their end.")] = True,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Update devices over the air: upload the binary to the server, start an update per device, and
    follow them with a progress bar each, until each is done or waits for its offline device. Exits 1 if any
    device fails."""
    if (all_devices or group_name) and len(targets) != 1:
        raise typer.BadParameter("with --all or --group give only the binary", param_hint="TARGETS")
    if not (all_devices or group_name) and len(targets) < 2:
        raise typer.BadParameter("give the device(s), then the binary (or --all / --group)", param_hint="TARGETS")
    if all_devices and group_name:
        raise typer.BadParameter("--all or --group, not both")
    path = Path(targets[-1])
    data = path.read_bytes()
    api = _Api(server, token)
    try:
        firmware = api.call("POST", "/v1/firmware", files={"file": (path.name, data, "application/octet-stream")})
        request: dict[str, Any] = {"firmware": firmware["sha256"], "mode": mode}
        if all_devices:
            request["all"] = True
        elif group_name:
            request["group"] = group_name
        else:
            request["devices"] = targets[:-1]
        if concurrency is not None:
            request["concurrency"] = concurrency
        if attempts is not None:
            request["max_attempts"] = attempts
        started = api.call("POST", "/v1/updates", json=request)
        console = Console(stderr=False)
        product = firmware.get("product_version")
        console.print(
            f"{path.name}: {firmware['size']} bytes, {firmware['platform']}, {firmware['module_function']}"
            f"{f', product version {product}' if product is not None else ''}; sha256 {firmware['sha256'][:16]}"
        )
        jobs: list[dict[str, Any]] = started["jobs"]
        if not wait:
            for job in jobs:
                console.print(f"update {job['id']}: device {job['device_id']} {job['state']}")
            return
        wanted = {job["device_id"] for job in jobs}
        names = {d["id"]: d.get("name") or d["id"] for d in _devices(api, wanted)}
        final = _follow(api, started.get("rollout"), jobs, names, console, timeout)
    finally:
        api.close()
    _summary(final, names, console)
    if any(job["state"] not in ("succeeded", _WAITING_FOR_DEVICE) for job in final):
        raise typer.Exit(1)


def _devices(api: _Api, wanted: set[str]) -> list[dict[str, Any]]:
    """The devices the account sees, with the fleet's when some of `wanted` are not its own: an admin updates
    devices of other owners, which `GET /v1/devices` leaves out (they would look offline)."""
    listed: list[dict[str, Any]] = api.call("GET", "/v1/devices")
    if wanted - {d["id"] for d in listed}:
        with contextlib.suppress(ApiError):  # not an admin: its own devices are all it may update
            listed = api.call("GET", "/v1/devices", params={"all": "true"})
    return listed


def _follow(
    api: _Api,
    rollout: str | None,
    jobs: list[dict[str, Any]],
    names: dict[str, str],
    console: Console,
    timeout: float,
) -> list[dict[str, Any]]:
    """Poll the jobs, a progress bar each, until every one has finished or waits for its offline device (or
    `timeout`): a rollout does not wait an hour on devices that are away."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout
    current = {job["id"]: job for job in jobs}
    wanted = {job["device_id"] for job in jobs}
    online: dict[str, bool] = {}
    looked = float("-inf")
    with Progress(*columns, console=console, transient=False) as progress:
        bars = {
            job["id"]: progress.add_task(
                names.get(job["device_id"], job["device_id"]), total=job["total_bytes"], state=job["state"]
            )
            for job in jobs
        }
        while True:
            if rollout is not None:
                fresh = api.call("GET", "/v1/updates", params={"rollout": rollout, "limit": 10_000})
            else:
                fresh = [api.call("GET", f"/v1/updates/{job_id}") for job_id in current]
            for job in fresh:
                if job["id"] in current:
                    current[job["id"]] = job
                    state = job["state"] if job["attempts"] <= 1 else f"{job['state']} (attempt {job['attempts']})"
                    progress.update(bars[job["id"]], completed=job["bytes_sent"], state=state)
            if time.monotonic() - looked >= _ONLINE_EVERY:
                online = {d["id"]: bool(d.get("connected")) for d in _devices(api, wanted)}
                looked = time.monotonic()
            away = {
                job_id
                for job_id, job in current.items()
                if job["state"] == "queued" and not online.get(job["device_id"], False)
            }
            for job_id in away:
                progress.update(bars[job_id], state=_WAITING_FOR_DEVICE)
            settled = all(job["state"] in _FINISHED or job_id in away for job_id, job in current.items())
            if settled or time.monotonic() > deadline:
                return [
                    {**job, "state": _WAITING_FOR_DEVICE} if job_id in away else job for job_id, job in current.items()
                ]
            time.sleep(0.5)


def _summary(jobs: list[dict[str, Any]], names: dict[str, str], console: Console) -> None:
    table = Table("Device", "State", "Attempts", "Transfer", "Rate", "Verified by / reason", "Detail")
    for job in sorted(jobs, key=lambda j: names.get(j["device_id"], j["device_id"])):
        seconds = job.get("transfer_seconds")
        rate = f"{job['total_bytes'] / seconds / 1024:.1f} KiB/s" if seconds else ""
        table.add_row(
            names.get(job["device_id"], job["device_id"]),
            job["state"],
            str(job["attempts"]),
            f"{seconds:.1f} s" if seconds else "",
            rate,
            job.get("verification") or job.get("reason") or "",
            job.get("detail") or "",
        )
    console.print(table)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    console.print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if _WAITING_FOR_DEVICE in counts:
        console.print(
            f"{counts[_WAITING_FOR_DEVICE]} device(s) offline: their updates start when they connect "
            "(cyan devices updates DEVICE follows them)."
        )


def list_updates(
    device: Annotated[str | None, typer.Argument(help="Only this device's updates.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first.")] = 50,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Update jobs, newest first: state, progress and outcome."""
    api = _Api(server, token)
    try:
        path = f"/v1/devices/{device}/updates" if device else "/v1/updates"
        jobs = api.call("GET", path, params={"limit": limit})
    finally:
        api.close()
    table = Table("Job", "Device", "State", "Progress", "Attempts", "Verified by / reason", "Detail", "Created")
    for job in jobs[:limit]:
        table.add_row(
            str(job["id"]),
            job["device_id"],
            job["state"],
            f"{job['progress'] * 100:.0f}%",
            str(job["attempts"]),
            job.get("verification") or job.get("reason") or "",
            job.get("detail") or "",
            job["created_at"] or "",
        )
    Console(width=200).print(table)
