"""``SiteFastPath`` answers the sites' hot calls in front of FastAPI (``server/app.py``), so it
also answers their errors itself: a refusal as its ``Status``, and a handler's bug as the
application's own handler would (500, logged, no traceback to the site)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import Response

from fleetplane.core.errors import bad_request
from fleetplane.server.site_api import PREFIX, SiteFastPath


def _router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.put("/sync")
    async def broken(request: Request) -> Response:
        raise KeyError("status")

    @router.get("/manifest")
    async def refused(request: Request) -> Response:
        raise bad_request("after must be an integer")

    return router


def _call(fast: SiteFastPath, method: str, path: str) -> tuple[int, dict[str, Any]]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [],
        "query_string": b"",
    }
    route = fast.route_for(scope)
    assert route is not None, f"{method} {path} is not a site call"
    scope["route"] = route
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(fast(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(sent[0]["status"]), orjson.loads(body)


def test_a_handler_bug_is_a_logged_500_status_and_a_refusal_its_own(caplog: pytest.LogCaptureFixture) -> None:
    fast = SiteFastPath(routers=(_router(),))
    assert fast.route_for({"type": "http", "method": "GET", "path": f"{PREFIX}/site"}) is None
    with caplog.at_level(logging.ERROR, logger="fleetplane.server"):
        code, body = _call(fast, "PUT", f"{PREFIX}/sync")
    assert code == 500 and body["kind"] == "Status" and body["reason"] == "InternalError"
    assert "KeyError" not in str(body)  # the site learns nothing of the server's insides
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
    code, body = _call(fast, "GET", f"{PREFIX}/manifest")
    assert code == 400 and body["reason"] == "BadRequest" and "after" in body["message"]
