"""Console authentication over real HTTP: the login page, the session cookie and its flags,
what happens without it, CSRF on writes, and that a viewer cannot accept registrations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from tests.server.console.conftest import API, csrf_of, put_site, wait_for
from tests.support.onboarding import Agent, new_token
from tests.support.server import ServerProcess


def browser(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=server.tls, follow_redirects=False, timeout=30)


@contextlib.contextmanager
def logged_in(server: ServerProcess, key: str) -> Iterator[tuple[httpx.Client, str]]:
    """A cookie-holding client (as a browser is) and the session's CSRF token."""
    with browser(server) as http:
        r = http.post("/console/login", data={"key": key})
        assert r.status_code == 303 and r.headers["location"] == "/console/", r.text
        shell = http.get("/console/")
        assert shell.status_code == 200
        yield http, csrf_of(shell.text)


@pytest.fixture(scope="module")
def viewer_key(admin: httpx.Client) -> str:
    r = admin.post(f"{API}/accesskeys", json={"metadata": {"name": "watcher"}, "spec": {"role": "viewer"}})
    assert r.status_code == 201, r.text
    key: str = r.json()["status"]["accessKey"]
    return key


@pytest.fixture(scope="module")
def pending(
    server: ServerProcess, admin: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One pending registration, made through the real onboarding path."""
    token = new_token(admin, "console-auth")
    agent = Agent(server, tmp_path_factory.mktemp("agent"), "waiting-box")
    r = agent.register(token=token)
    assert r.status_code in (200, 201, 202), r.text
    yield r.json()["name"]


def test_root_and_pages_redirect_to_login_without_a_session(server: ServerProcess) -> None:
    with browser(server) as http:
        assert http.get("/").headers["location"] == "/console/"
        r = http.get("/console/")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        login = http.get("/console/login")
        assert login.status_code == 200 and 'name="key"' in login.text


def test_data_endpoints_answer_401_status_without_a_session(server: ServerProcess) -> None:
    with browser(server) as http:
        for path in ("/console/api/map", "/console/api/sites", "/console/api/events"):
            r = http.get(path)
            assert r.status_code == 401, path
            assert r.json()["kind"] == "Status" and r.json()["reason"] == "Unauthorized"
        http.cookies.set("fp_session", "eyJ0IjoiZGVmYXVsdCJ9.bm90LXNpZ25lZA")
        assert http.get("/console/api/map").status_code == 401


def test_a_bad_key_gets_a_clear_error_and_no_cookie(server: ServerProcess) -> None:
    with browser(server) as http:
        r = http.post("/console/login", data={"key": "fpk_default_nobody_0000"})
        assert r.status_code == 401
        assert "not accepted" in r.text and "unknown or revoked access key" in r.text
        assert "fp_session" not in r.headers.get("set-cookie", "")
        empty = http.post("/console/login", data={"key": ""})
        assert empty.status_code == 400 and "Paste an access key" in empty.text


def test_login_sets_a_strict_http_only_secure_cookie_and_logout_clears_it(server: ServerProcess) -> None:
    with browser(server) as http:
        r = http.post("/console/login", data={"key": server.admin_key})
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        assert server.admin_key.split("_")[-1] not in r.headers["set-cookie"]  # the key is not in it
        shell = http.get("/console/")
        assert shell.status_code == 200 and "system-admin" in shell.text
        assert http.get("/console/api/map").status_code == 200
        token = csrf_of(shell.text)
        assert http.post("/console/logout", data={"csrf": "wrong"}).status_code == 403
        out = http.post("/console/logout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert (
            'fp_session=""' in out.headers["set-cookie"] or "max-age=0" in out.headers["set-cookie"].lower()
        )
        http.cookies.clear()
        assert http.get("/console/api/map").status_code == 401


def test_a_bearer_key_works_without_a_cookie(server: ServerProcess, admin: httpx.Client) -> None:
    put_site(admin, "bearer-site", labels={"k": "v"}, where=(1.0, 2.0), health=None)

    # The console's view follows the store's watch: the new site shows within moments.
    def listed() -> list[str]:
        r = admin.get("/console/api/sites", params={"labelSelector": "k=v"})
        assert r.status_code == 200
        return [s["name"] for s in r.json()["items"]]

    assert wait_for("the site in the table", listed) == ["bearer-site"]


def test_a_bad_selector_is_a_400_naming_the_field(server: ServerProcess) -> None:
    with logged_in(server, server.admin_key) as (http, _):
        r = http.get("/console/api/sites", params={"labelSelector": "region in (eu"})
        assert r.status_code == 400
        assert r.json()["details"]["causes"][0]["field"] == "labelSelector"
        assert http.get("/console/api/sites", params={"limit": "x"}).status_code == 400


def test_writes_need_the_csrf_token(server: ServerProcess, pending: str) -> None:
    with logged_in(server, server.admin_key) as (http, token):
        r = http.post(f"/console/api/registrations/{pending}/reject", json={"reason": "no"})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["message"]
        r = http.post(
            f"/console/api/registrations/{pending}/reject", json={}, headers={"X-CSRF-Token": token}
        )
        assert r.status_code == 400 and r.json()["details"]["causes"][0]["field"] == "reason"


def test_a_viewer_can_look_but_cannot_accept_a_registration(
    server: ServerProcess, admin: httpx.Client, viewer_key: str, pending: str
) -> None:
    with logged_in(server, viewer_key) as (http, token):
        assert http.get("/console/api/registrations").status_code == 200
        r = http.post(f"/console/api/registrations/{pending}/accept", headers={"X-CSRF-Token": token})
        assert r.status_code == 403 and r.json()["reason"] == "Forbidden"
    reg = admin.get(f"{API}/registrations/{pending}").json()
    assert reg["status"]["phase"] == "Pending"


def test_deleting_the_key_ends_its_console_sessions(server: ServerProcess, admin: httpx.Client) -> None:
    r = admin.post(
        f"{API}/accesskeys", json={"metadata": {"name": "short-lived"}, "spec": {"role": "viewer"}}
    )
    with logged_in(server, r.json()["status"]["accessKey"]) as (http, _):
        assert http.get("/console/api/map").status_code == 200
        assert admin.delete(f"{API}/accesskeys/short-lived").status_code == 200
        assert http.get("/console/api/map").status_code == 401
