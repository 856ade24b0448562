"""The console in a real browser (Debian's chromium, headless, driven by Playwright) against
the real server process: log in, the map's dots in their health colours, the sites table
filtered by a selector, a registration accepted and the site appearing without a reload, a
rollout's progress bar advancing live. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.server.console.conftest import (
    API,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    FILL,
    now,
    put_site,
    report_status,
    wait_for,
)
from tests.support.onboarding import Agent, new_token
from tests.support.server import ServerProcess

# name -> (labels, (latitude, longitude) or None, expected health colour or None: no report)
FLEET: dict[str, tuple[dict[str, str], tuple[float, float] | None, str | None]] = {
    "paris-1": ({"region": "eu", "tier": "gold"}, (48.85, 2.35), "green"),
    "madrid-1": ({"region": "eu", "tier": "silver"}, (40.42, -3.70), "orange"),
    "newyork-1": ({"region": "us", "tier": "gold"}, (40.71, -74.0), "red"),
    "tokyo-1": ({"region": "jp", "tier": "gold"}, (35.68, 139.69), "green"),
    "sydney-1": ({"region": "au"}, (-33.87, 151.21), None),
    "ro-a": ({"region": "eu", "pool": "ro"}, (52.52, 13.40), "green"),
    "ro-b": ({"region": "eu", "pool": "ro"}, (59.33, 18.07), "green"),
    "ro-c": ({"region": "eu", "pool": "ro"}, (45.46, 9.19), "green"),
}
ROLLOUT_SITES = ("ro-a", "ro-b", "ro-c")


@pytest.fixture(scope="module")
def fleet(server: ServerProcess, admin: httpx.Client) -> dict[str, str]:
    """The sites above, with the colour each must be painted (grey: no health yet)."""
    for name, (labels, where, health) in FLEET.items():
        put_site(admin, name, labels=labels, where=where, health=health)
    expected = {name: health or "grey" for name, (_, _, health) in FLEET.items()}

    def painted() -> bool:
        rows = admin.get("/console/api/map").json()["sites"]
        return {row[0]: row[3] for row in rows} == expected

    wait_for("the health of every site", painted)
    return expected


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser: Browser, server: ServerProcess, fleet: dict[str, str]) -> Iterator[Page]:
    """One logged-in tab for the module (the login itself is the first test's subject)."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_login_shows_the_map_with_dots_in_their_health_colours(
    page: Page, server: ServerProcess, fleet: dict[str, str]
) -> None:
    page.goto(server.url + "/console/")
    assert page.url.endswith("/console/login")
    page.fill("#key", "fpk_default_nobody_0000")
    page.click("button[type=submit]")
    assert "not accepted" in page.inner_text("#login-error")
    page.fill("#key", server.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/")
    page.wait_for_selector("svg.world circle.dot")
    fills = page.eval_on_selector_all(
        "svg.world circle.dot",
        "dots => Object.fromEntries(dots.map(d => [d.dataset.site, d.getAttribute('fill')]))",
    )
    assert fills == {name: FILL[colour] for name, colour in fleet.items()}
    legend = page.inner_text("[data-legend=green]")
    assert legend.endswith(": 5")  # paris, tokyo and the three rollout sites
    shot(page, "map")
    page.click('circle.dot[data-site="madrid-1"]')
    page.wait_for_selector("#site-phase")
    assert "madrid-1" in page.inner_text("h1")
    assert page.inner_text("h1 .badge") == "75"  # orange: the top of the orange band
    assert "memory pressure" in page.inner_text("ul.reasons")
    shot(page, "site")


def test_sites_table_filters_by_label_selector(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/console/#/sites")
    page.wait_for_selector("#sites-table")

    def names() -> list[str]:
        rows: list[str] = page.eval_on_selector_all(
            "#sites-table tbody tr", "rows => rows.map(r => r.dataset.site)"
        )
        return rows

    assert len(names()) == len(FLEET)
    page.fill("#selector", "region=eu,tier in (gold,silver)")
    page.click("#apply-selector")
    wait_for("the filtered table", lambda: names() == ["madrid-1", "paris-1"], timeout=10)
    assert page.inner_text("#sites-count") == "1\u20132 of 2 sites"
    shot(page, "sites")
    page.fill("#selector", "region in (eu")
    page.click("#apply-selector")
    assert "unable to parse" in page.inner_text("#selector-error")


def test_accepting_a_registration_shows_the_new_site_without_a_reload(
    page: Page, server: ServerProcess, admin: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page.goto(server.url + "/console/#/registrations")
    page.wait_for_selector("#registrations")
    page.evaluate("window.__sameDocument = true")
    agent = Agent(server, tmp_path_factory.mktemp("agent"), "osaka-store")
    facts = {
        "hostname": "osaka-store.local",
        "hardware": {"model": "Fleetbox FB-2024", "cpuCores": 8, "memoryMiB": 16384, "serial": "SN-1"},
        "coordinates": {"latitude": 34.69, "longitude": 135.5},
    }
    r = agent.register(token=new_token(admin, "browser"), facts=facts)
    assert r.status_code in (200, 201, 202), r.text
    row = f'tr[data-registration="{r.json()["name"]}"]'
    page.wait_for_selector(row + '[data-phase="Pending"]')  # arrived live, over the event stream
    # What the operator decides on: the box and where it is (SCENARIOS step 4).
    assert page.inner_text(row + " td.hardware") == "Fleetbox FB-2024, 8 cores, 16 GiB"
    assert page.inner_text(row + " td.location") == "34.69, 135.50"
    shot(page, "registrations")
    page.click(row + " button.accept")
    page.wait_for_selector(row + '[data-phase="Accepted"]')
    page.click("nav a[data-nav=sites]")
    page.wait_for_selector('#sites-table tr[data-site="osaka-store"]')
    page.click("nav a[data-nav=map]")
    dot = page.wait_for_selector('circle.dot[data-site="osaka-store"]')
    assert dot is not None and dot.get_attribute("fill") == FILL["grey"]  # accepted, not reported yet
    assert page.evaluate("window.__sameDocument") is True  # no page load happened


def _report_applied(admin: httpx.Client, site: str) -> bool:
    """Act as the site's agent: report its current manifest applied; False if none yet."""
    man = admin.get(f"{API}/sitemanifests/{site}")
    if man.status_code != 200 or "reservations" not in man.json()["spec"]["sections"]:
        return False
    body: dict[str, Any] = man.json()
    report_status(
        admin,
        site,
        {
            "lastSeen": now(),
            "manifest": {
                "generation": body["metadata"]["generation"],
                "hash": body["spec"]["hash"],
                "state": "Applied",
                "items": [{"section": "reservations", "name": "reservations", "state": "Applied"}],
            },
        },
    )
    return True


def test_rollout_progress_bar_advances_live(page: Page, server: ServerProcess, admin: httpx.Client) -> None:
    ns = "ops"
    r = admin.post(
        f"{API}/namespaces/{ns}/virtualsites",
        json={"metadata": {"name": "pool"}, "spec": {"selector": "pool=ro"}},
    )
    assert r.status_code == 201, r.text
    page.goto(server.url + "/console/#/rollouts")
    page.wait_for_selector("main[data-page=rollouts] h1")
    r = admin.post(
        f"{API}/namespaces/{ns}/resourcereservations",
        json={
            "metadata": {"name": "squeeze"},
            "spec": {
                "virtualSites": ["pool"],
                "cpu": "10m",
                "memory": "16Mi",
                "strategy": {"type": "rolling", "batchSize": 1},
            },
        },
    )
    assert r.status_code == 201, r.text
    bar = f'[data-rollout="{ns}/resourcereservation-squeeze-1"] [role=progressbar]'
    page.wait_for_selector(bar)
    seen = [page.get_attribute(bar, "aria-valuenow")]
    done: set[str] = set()

    def one_reported() -> bool:
        """One site per wave: report whichever site has been handed the intent."""
        for site in ROLLOUT_SITES:
            if site not in done and _report_applied(admin, site):
                done.add(site)
                return True
        return False

    for _ in ROLLOUT_SITES:
        wait_for("a site handed the reservation", one_reported)
        want = str(round(100 * len(done) / len(ROLLOUT_SITES)))
        page.wait_for_selector(f'{bar}[aria-valuenow="{want}"]')  # moved without a reload
        seen.append(want)
    assert seen == ["0", "33", "67", "100"]
    page.wait_for_selector(f'[data-rollout="{ns}/resourcereservation-squeeze-1"] .phase.Completed')
    shot(page, "rollouts")


def test_a_site_without_a_display_name_shows_none(
    page: Page, server: ServerProcess, admin: httpx.Client
) -> None:
    r = admin.post(f"{API}/sites", json={"metadata": {"name": "plain-1", "labels": {"tier": "bronze"}}})
    assert r.status_code == 201, r.text
    wait_for("the console to know it", lambda: admin.get("/console/api/sites/plain-1").status_code == 200)
    page.goto(server.url + "/console/#/site/plain-1")
    page.wait_for_selector("#site-phase")
    assert page.inner_text("h1").startswith("plain-1")
    assert "null" not in page.inner_text("main").split()  # root.append(null) printed it


def test_other_pages_render(page: Page, server: ServerProcess) -> None:
    for name, marker in (
        ("virtualsites", '[data-virtualsite="ops/pool"]'),
        ("resources", "figure.chart figcaption"),
        ("alerts", "main[data-page=alerts] h1"),
    ):
        page.goto(f"{server.url}/console/#/{name}")
        page.wait_for_selector(marker)
        shot(page, name)
    page.goto(f"{server.url}/console/#/map")
    page.wait_for_selector("svg.world")
    page.goto(f"{server.url}/console/#/resources")
    page.wait_for_selector("figure.chart figcaption")
    counts = page.eval_on_selector_all("figure.chart rect", "rs => rs.map(r => +r.dataset.count)")
    assert sum(counts[:10]) == 7 and sum(counts[10:]) == 7  # CPU and memory of the 7 reporting sites
    assert counts[10 + 9] == 1  # madrid: memory at 96 %, in the 90-100 % bucket


def test_workloads_page_follows_a_vk8s_deployment(
    page: Page, server: ServerProcess, admin: httpx.Client
) -> None:
    page.goto(f"{server.url}/console/#/workloads")
    page.wait_for_selector("main[data-page=workloads] h1")
    r = admin.post(
        f"{API}/namespaces/ops/vk8s", json={"metadata": {"name": "edge"}, "spec": {"virtualSite": "pool"}}
    )
    assert r.status_code == 201, r.text
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    }
    r = admin.post("/api/vK8s/namespaces/ops/edge/apis/apps/v1/namespaces/ops/deployments", json=deployment)
    assert r.status_code == 201, r.text
    # The workload status controller places it on the pool's 3 sites; the page follows live.
    page.wait_for_selector('[data-workload="ops/Deployment/web"] >> text=on 3 site(s)')
    shot(page, "workloads")
