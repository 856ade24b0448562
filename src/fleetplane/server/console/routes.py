"""Console pages: login and logout, the app shell, static assets and the world map path.

The shell is one server-rendered HTML page (with the session's CSRF token in a meta tag)
that loads the vanilla JS app under ``/console/static/``; the app renders each page from
the ``/console/api`` endpoints and follows ``/console/api/events`` for live updates.
"""

from __future__ import annotations

import asyncio
import html
import mimetypes
import urllib.parse
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

import fleetplane
from fleetplane.core.errors import ApiError
from fleetplane.server.console import geo
from fleetplane.server.console.session import COOKIE, LIFETIME_S, csrf_token, login, session
from fleetplane.server.context import ServerContext
from fleetplane.server.requests import JsonResponse

router = APIRouter()
STATIC = resources.files("fleetplane.server.console").joinpath("static")
ASSETS = ("console.css", "app.js", "pages.js", "views.js", "map.js")
SECURITY_HEADERS = {
    # Everything the console loads comes from this server; no inline scripts.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · fleetplane</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/console/static/console.css">'
        f"{body}</html>"
    )
    return HTMLResponse(doc, status_code=status, headers=SECURITY_HEADERS)


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    shown = f'<p class="error" role="alert" id="login-error">{html.escape(error)}</p>' if error else ""
    return _page(
        "Log in",
        '</head><body class="login"><form class="login-box" method="post" action="/console/login">'
        "<h1>fleetplane</h1><p>Paste an access key (the administrator key is in the server's "
        "data directory, <code>admin.key</code>).</p>"
        f'{shown}<label for="key">Access key</label>'
        '<input id="key" name="key" type="password" autocomplete="off" required autofocus>'
        '<button type="submit">Log in</button></form></body>',
        status,
    )


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


@router.get("/console", include_in_schema=False)
async def console_bare() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


@router.get("/console/login", include_in_schema=False)
async def login_form() -> HTMLResponse:
    return _login_page()


@router.post("/console/login", include_in_schema=False)
async def login_submit(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    form = urllib.parse.parse_qs((await request.body()).decode(errors="replace"))
    key = (form.get("key") or [""])[0].strip()
    if not key:
        return _login_page("Paste an access key to log in.", 400)
    try:
        _, cookie = await asyncio.to_thread(login, ctx, key)
    except ApiError as exc:
        if exc.code != 401:
            raise
        return _login_page(f"That key was not accepted: {exc.message.removeprefix('Unauthorized: ')}.", 401)
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        COOKIE, cookie, max_age=LIFETIME_S, path="/", secure=True, httponly=True, samesite="strict"
    )
    return response


@router.post("/console/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    form = urllib.parse.parse_qs((await request.body()).decode(errors="replace"))
    found = await session(request)  # 401 without a session: nothing to log out of
    if found.session_id and (form.get("csrf") or [""])[0] != csrf_token(ctx, found.session_id):
        raise ApiError(403, "Forbidden", "Forbidden: logout needs the session's CSRF token")
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/console/", include_in_schema=False)
async def shell(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    try:
        found = await session(request)
    except ApiError as exc:
        if exc.code == 401:
            return RedirectResponse("/console/login", status_code=303)
        raise
    who = found.principal
    token = html.escape(csrf_token(ctx, found.session_id)) if found.session_id else ""
    scripts = "".join(
        f'<script src="/console/static/{a}" defer></script>' for a in ASSETS if a.endswith(".js")
    )
    nav = "".join(
        f'<a href="#/{slug}" data-nav="{slug}">{label}</a>'
        for slug, label in (
            ("map", "Map"),
            ("sites", "Sites"),
            ("virtualsites", "Virtual sites"),
            ("registrations", "Registrations"),
            ("rollouts", "Rollouts"),
            ("alerts", "Alerts"),
            ("resources", "Resources"),
            ("workloads", "Workloads"),
        )
    )
    return _page(
        "Console",
        f'<meta name="csrf-token" content="{token}">{scripts}</head><body>'
        f'<header><span class="brand">fleetplane</span><nav>{nav}</nav>'
        f'<span class="who" title="{html.escape(who.describe())}">{html.escape(who.key_name)} '
        f"({html.escape(who.role)})</span>"
        '<form method="post" action="/console/logout" class="logout">'
        f'<input type="hidden" name="csrf" value="{token}"><button type="submit">Log out</button></form>'
        '<span id="live" class="live" title="live updates">●</span></header>'
        f'<main id="app"><p class="muted">Loading…</p></main>'
        f"<footer>fleetplane {html.escape(fleetplane.__version__)}</footer></body>",
    )


@router.get("/console/land.json", include_in_schema=False)
async def land() -> JsonResponse:
    """The world's land as one SVG path (public Natural Earth data: no auth needed)."""
    path = await asyncio.to_thread(geo.land_path)
    return JsonResponse(
        {"width": geo.WIDTH, "height": geo.HEIGHT, "path": path}, headers={"Cache-Control": "max-age=86400"}
    )


@router.get("/console/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    body = STATIC.joinpath(name).read_bytes()
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(body, media_type=ctype, headers={"Cache-Control": "no-cache"})
