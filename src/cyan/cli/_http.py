"""What the commands that talk to a Cyan server's API share."""

from __future__ import annotations

from typing import Any

import httpx


def read_response(response: httpx.Response) -> tuple[Any, str | None]:
    """The JSON body (None when there is none), and for an error status the detail to show: the API's
    `error_description` or `error`, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400:
        return body, None
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("error_description") or body.get("error") or "")
    return body, detail or response.text[:200]
