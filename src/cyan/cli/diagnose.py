"""`cyan diagnose`: why a device does not connect, from its log, its LED, its error codes and the server."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from cyan.diagnose import CATALOG, Diagnosis, LogAnalysis, entry_json, join
from cyan.diagnose import diagnose as run_diagnosis
from cyan.diagnose.render import render_catalog, render_diagnosis
from cyan.diagnose.server_evidence import UnidentifiedGroup, attempt_from_json, parse_time

from ._http import read_response

__all__ = ["ServerError", "api_get", "diagnose", "parse_since"]

#: Records after the log's last line that still belong to it (clocks differ, the device retries).
_AFTER = timedelta(minutes=2)


class ServerError(ValueError):
    """The server could not be asked; the message carries the hint."""


def parse_since(text: str, now: datetime) -> datetime:
    """`24h`, `7d`, `30m`, `90s` before `now`, or an ISO 8601 time."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(value[:-1]) * units[value[-1]])
    try:
        return parse_time(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a period like 24h or 7d nor an ISO 8601 time") from None


def api_get(server: str, path: str, token: str | None, params: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a Cyan API path with a bearer token; errors become a `ServerError` with a hint."""
    if not token:
        raise ServerError("--server needs an access token\nhint: pass --token or set CYAN_TOKEN (`cyan tokens create`)")
    url = server.rstrip("/") + path
    try:
        response = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot reach {url}: {exc}\nhint: check the URL (the API port, 8080 by default)") from exc
    body, detail = read_response(response)
    if detail is not None:
        hints = {
            401: "the token is missing, expired or revoked: `cyan tokens create USER`",
            403: "the device is not yours on that server (or not registered there), or you are not an operator",
            404: "is this a Cyan server? The diagnostics routes are Cyan's, not Particle's",
        }
        hint = hints.get(response.status_code, "run again with --debug")
        raise ServerError(f"{url} answered {response.status_code}: {detail}\nhint: {hint}")
    if not isinstance(body, dict):
        raise ServerError(f"{url} did not answer with a JSON object\nhint: is this a Cyan server's API URL?")
    return body


def _read(logfile: str | None, wanted_stdin: bool) -> tuple[str | None, str | None]:
    if logfile == "-" or (logfile is None and wanted_stdin):
        return sys.stdin.read(), "<stdin>"
    if logfile is None:
        return None, None
    path = Path(logfile)
    return path.read_bytes().decode("utf-8", "replace"), str(path)


def _log_span(analysis: LogAnalysis) -> timedelta:
    """How much time the log covers: the millisecond counter's span in each boot, added up."""
    total = 0
    first: int | None = None
    last: int | None = None
    for record in analysis.records:
        if record.time_ms is None:
            continue
        if last is not None and record.time_ms < last:
            total += last - (first or last)
            first = record.time_ms
        if first is None:
            first = record.time_ms
        last = record.time_ms
    if first is not None and last is not None:
        total += last - first
    return timedelta(milliseconds=total)


def _join_server(
    result: Diagnosis, server: str, token: str | None, device: str | None, at: datetime, window: timedelta
) -> Diagnosis:
    analysis = result.analysis
    device_id = device or (analysis.device_id if analysis else None)
    if not device_id:
        raise typer.BadParameter(
            "the log does not name the device; give its id or name with --device", param_hint="--device"
        )
    span = _log_span(analysis) if analysis else timedelta(0)
    since, until = at - span - window, at + _AFTER
    report = api_get(
        server,
        f"/v1/devices/{device_id}/doctor",
        token,
        {"since": since.isoformat(), "until": until.isoformat()},
    )
    attempts = [attempt_from_json(a) for a in report.get("attempts") or []]
    groups = [UnidentifiedGroup.from_json(g) for g in report.get("unidentified") or []]
    info = report.get("device") or {}
    verdict = join(
        analysis,
        attempts,
        groups,
        device_id=str(info.get("id") or device_id),
        since=since,
        until=until,
        url=server,
        registered=bool(info.get("registered", True)),
    )
    return result.with_server(verdict)


def diagnose(
    logfile: Annotated[
        str | None,
        typer.Argument(help="The device log (any Device OS format); - reads standard input (as does a pipe)."),
    ] = None,
    led: Annotated[
        list[str] | None,
        typer.Option("--led", help='What the status LED does, in words: "fast cyan, 1 red blink". Repeatable.'),
    ] = None,
    code: Annotated[
        list[str] | None,
        typer.Option("--code", help="An error code: -19, 26, code=-220, 'sos 8', 'key/error=5'; repeatable."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="A Cyan server's API URL: join its records of this device and time."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CYAN_TOKEN", help="Access token for --server.", show_default=False)
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="The device id or name, when the log does not name it.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="When the log's last line was written (ISO 8601), for --server (default: now)."),
    ] = None,
    window: Annotated[
        float, typer.Option("--window", min=0, help="Minutes of server records before the log's start, for --server.")
    ] = 15.0,
    catalog: Annotated[bool, typer.Option("--catalog", help="Print the catalog of diagnoses (C1–C17).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (docs/diagnostics.md).")] = False,
) -> None:
    """Explain why a device does not connect: the step where it stopped, the likely causes and the fixes."""
    if catalog:
        if json_output:
            typer.echo(json.dumps([entry_json(e.id) for e in CATALOG], indent=2))
        else:
            render_catalog(CATALOG, Console(), full=True)
        return
    leds, codes = list(led or []), list(code or [])
    wanted_stdin = logfile is None and not leds and not codes and not sys.stdin.isatty()
    text, source = _read(logfile, wanted_stdin)
    if text is None and not leds and not codes:
        raise typer.BadParameter("give a device log (or - for standard input), --led or --code", param_hint="LOGFILE")
    result = run_diagnosis(text, source=source, leds=leds, codes=codes)
    if server is not None:
        try:
            moment = parse_time(at) if at else datetime.now(UTC)
        except ValueError:
            raise typer.BadParameter(f"{at!r} is not an ISO 8601 time", param_hint="--at") from None
        result = _join_server(result, server, token, device, moment, timedelta(minutes=window))
    if json_output:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        render_diagnosis(result, Console())
