"""The OpenAPI document says what every route answers (its 200 and its errors, in Particle's error shape) and
what it reads; and what fuzzing the API against it found, each fixed (tests/api/test_api_schema.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from fastapi.routing import APIRoute, iter_route_contexts

from cyan.api import ApiContext, create_app
from cyan.api._requests import require_actor
from cyan.app import Actor, Application
from cyan.service import Service
from cyan.store import MemoryStore
from serve_support import run_with_service

ERROR = {"$ref": "#/components/schemas/Error"}
#: The routes that take no token: logging in, and revoking a token by knowing it.
OPEN = {("POST", "/oauth/token"), ("DELETE", "/v1/access_tokens/{token}")}


def _app() -> Any:
    return create_app(ApiContext(Application(MemoryStore())))


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [ref for key, item in value.items() for ref in ([item] if key == "$ref" else _refs(item))]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


def test_the_document_describes_every_route() -> None:
    app = _app()
    document = app.openapi()
    # Included routers are walked as FastAPI walks them to write the document.
    # The console's pages are not part of the API (include_in_schema=False).
    routes = [
        route
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.original_route.include_in_schema
    ]
    assert len(routes) >= 50
    for route in routes:
        takes_token = any(dependency.call is require_actor for dependency in route.dependant.dependencies)
        for method in route.methods or ():
            where = f"{method} {route.path_format}"
            operation = document["paths"][route.path_format][method.lower()]
            responses = operation["responses"]
            answer = responses.get("200") or responses.get("201")
            assert answer is not None, where
            assert answer["content"], where
            for media in answer["content"].values():
                assert media["schema"] not in ({}, None), where
            errors = {status for status in responses if status[0] in "45"}
            assert "422" not in responses, f"{where}: invalid parameters are answered 400, not 422"
            assert "503" in errors, where
            assert ("401" in errors) == takes_token == ((method, route.path_format) not in OPEN), where
            if (method in ("POST", "PUT", "DELETE") and takes_token) or "requestBody" in operation:
                # The body is read for the token when the header has none: it may be unreadable or too large.
                assert {"400", "413", "415"} <= errors, where
            if method in ("POST", "PUT"):
                assert operation["requestBody"]["content"], f"{where}: the body it reads is documented"
            for status in errors:
                assert responses[status]["content"] == {"application/json": {"schema": ERROR}}, (where, status)
    assert "Retry-After" in document["paths"]["/oauth/token"]["post"]["responses"]["429"]["headers"]
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_the_error_shape_is_particles() -> None:
    error = _app().openapi()["components"]["schemas"]["Error"]
    assert error["required"] == ["ok", "error", "error_description"]
    assert error["properties"]["ok"]["const"] is False
    # The others are there or not, never null.
    assert {name: prop.get("type") for name, prop in error["properties"].items() if name not in error["required"]} == {
        "field": "string",
        "info": "string",
        "reason": "string",
        "fingerprint": "string",
        "pending_fingerprints": "array",
    }


def test_a_method_a_route_does_not_take_is_answered_405_with_allow() -> None:
    """A 405 had no Allow header, which RFC 9110 requires (found by schemathesis's unsupported_method check:
    TRACE on every route); Starlette's names the methods of the first route of the path only."""

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://cyan") as client:
            for method, path, allowed in (
                ("TRACE", "/v1/user", {"GET", "PUT", "DELETE"}),
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
