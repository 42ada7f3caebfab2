"""The routers' shortcut (api/_routing.py): a router skipped by its union of patterns answers as if each of its
routes had been tried: the same route takes each request, a wrong method is still 405, no route still 404."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from cyan.api._routing import IndexedRouter


def _answers(app: FastAPI, *requests: tuple[str, str]) -> list[tuple[int, object]]:
    async def run() -> list[tuple[int, object]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cyan") as client:
            answers = []
            for method, path in requests:
                response = await client.request(method, path)
                answers.append((response.status_code, response.json() if response.status_code == 200 else None))
            return answers

    return asyncio.run(run())


def _app() -> FastAPI:
    first, second = IndexedRouter(), IndexedRouter()

    @first.get("/v1/devices/events")
    def stream() -> str:
        return "stream"

    @first.get("/v1/things/{rest:path}")
    def things(rest: str) -> str:
        return f"things {rest}"

    @second.get("/v1/devices/{device}")
    def device(device: str) -> str:
        return f"device {device}"

    @second.post("/v1/devices/{device}/{function}")
    def call(device: str, function: str) -> str:
        return f"call {device} {function}"

    app = FastAPI()
    app.include_router(first)
    app.include_router(second)
    return app


def test_the_first_router_that_can_match_takes_the_request() -> None:
    assert _answers(
        _app(),
        ("GET", "/v1/devices/events"),  # not a device named "events"
        ("GET", "/v1/devices/kitchen"),
        ("POST", "/v1/devices/kitchen/setArg"),
        ("GET", "/v1/things/a/b/c"),
    ) == [(200, "stream"), (200, "device kitchen"), (200, "call kitchen setArg"), (200, "things a/b/c")]


def test_a_wrong_method_or_no_route_answers_as_before() -> None:
    answers = _answers(
        _app(), ("GET", "/v1/devices/kitchen/setArg"), ("POST", "/v1/devices/events"), ("GET", "/v1/nothing")
    )
    assert [status for status, _ in answers] == [405, 405, 404]


def test_a_route_added_later_is_matched() -> None:
    router = IndexedRouter()

    @router.get("/a")
    def a() -> str:
        return "a"

    app = FastAPI()
    app.include_router(router)
    assert _answers(app, ("GET", "/b")) == [(404, None)]

    @router.get("/b")
    def b() -> str:
        return "b"

    assert _answers(app, ("GET", "/b")) == [(200, "b")]
