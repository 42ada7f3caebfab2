"""The API as its OpenAPI document describes it: what fuzzing the API against the document found, each fixed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from cyan.api import ApiContext, create_app
from cyan.app import Actor, Application
from cyan.service import Service
from cyan.store import MemoryStore
from serve_support import run_with_service


def _app() -> Any:
    return create_app(ApiContext(Application(MemoryStore())))


def test_a_method_a_route_does_not_take_is_answered_405_with_allow() -> None:
    """A 405 had no Allow header, which RFC 9110 requires (found by schemathesis's unsupported_method check:
    TRACE on every route); Starlette's names the methods of the first route of the path only."""

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://cyan") as client:
            for method, path, allowed in (
                ("TRACE", "/v1/user", {"GET"}),
                ("PATCH", "/v1/devices", {"GET", "POST"}),
                ("DELETE", "/v1/devices/events/temp", {"GET", "POST"}),
                ("DELETE", "/openapi.json", {"GET", "HEAD"}),
                ("PUT", "/oauth/token", {"POST"}),
            ):
                response = await client.request(method, path)
                assert response.status_code == 405, (method, path)
                assert {m.strip() for m in response.headers["allow"].split(",")} == allowed, (method, path)
                assert response.json() == {
                    "ok": False,
                    "error": "Method Not Allowed",
                    "error_description": "Method Not Allowed",
                }

    asyncio.run(scenario())


def test_a_route_of_a_device_takes_no_product_from_the_query(tmp_path: Path) -> None:
    """Routes shared one function with their product variant, so `?product=` on the device's own path was read
    as the product, and an empty or unknown one answered a 404 the document did not list (found by schemathesis:
    POST /v1/devices/events?product= answered 404)."""
    document = _app().openapi()
    for path, item in document["paths"].items():
        if "{product}" not in path:
            for method, operation in item.items():
                names = [parameter["name"] for parameter in operation.get("parameters", [])]
                assert "product" not in names, f"{method.upper()} {path}"

    async def scenario(service: Service) -> None:
        operator = Actor.operator()
        await service.app.accounts.create_user(operator, "alice@example.com", "a good password")
        token = (await service.app.accounts.create_token(operator, "alice@example.com", None)).token
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=10) as client:
            auth = {"Authorization": f"Bearer {token}"}
            for product in ("", "x", "7"):
                published = await client.post(
                    "/v1/devices/events", params={"product": product}, json={"name": "temp"}, headers=auth
                )
                assert (published.status_code, published.json()) == (200, {"ok": True}), product
            refused = await client.post("/v1/products/x/events", json={"name": "temp"}, headers=auth)
            assert (refused.status_code, refused.json()["error"]) == (404, "Not Found")

    run_with_service(tmp_path / "data", scenario)
