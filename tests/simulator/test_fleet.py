"""The simulated fleet's plan (deterministic sites, labels, places) and its building blocks
that need no server; the whole simulator against a real server is tests/integration/test_fleet_e2e.py."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetplane.agent.core import AgentCore
from fleetplane.agent.onboard import SavedIdentity
from fleetplane.core.errors import ApiError
from fleetplane.core.names import validate_dns1123_label, validate_label_key, validate_label_value
from fleetplane.simulator.cities import CITIES, REGIONS
from fleetplane.simulator.fleet import SimulateConfig, make_driver, onboard_site, plan_site, site_facts

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_city_table_is_real_places_in_many_regions() -> None:
    assert len(CITIES) >= 60
    assert len(REGIONS) >= 6
    assert len({c.country for c in CITIES}) >= 30
    for c in CITIES:
        assert -90 <= c.latitude <= 90 and -180 <= c.longitude <= 180
        assert not validate_dns1123_label(c.slug), c
    tokyo = next(c for c in CITIES if c.name == "Tokyo")
    assert (round(tokyo.latitude), round(tokyo.longitude), tokyo.country) == (36, 140, "jp")


def test_plan_is_deterministic_and_labels_are_valid() -> None:
    plans = [plan_site(i, seed=5) for i in range(500)]
    assert plans == [plan_site(i, seed=5) for i in range(500)]
    assert [p.name for p in plans] != [p.name for p in (plan_site(i, seed=6) for i in range(500))]
    assert len({p.name for p in plans}) == 500
    for p in plans:
        assert not validate_dns1123_label(p.name), p.name
        for key, value in p.labels.items():
            assert not validate_label_key(key) and not validate_label_value(value), (key, value)
        assert 2015 <= int(p.labels["model-year"]) <= 2024
        assert p.labels["region"] == p.city.region and p.labels["country"] == p.city.country
        # Jittered around the city, never on top of it for every site.
        assert abs(p.latitude - p.city.latitude) <= 0.16 and abs(p.longitude - p.city.longitude) <= 0.16
    envs = collections.Counter(p.labels["environment"] for p in plans)
    assert set(envs) == {"dev", "test", "prod"} and envs["prod"] > envs["test"] > 0
    assert len({p.labels["region"] for p in plans}) == len(REGIONS)
    assert len({p.labels["model-year"] for p in plans}) == 10
    assert len({(p.latitude, p.longitude) for p in plans}) == 500


def test_regions_prefix_and_extra_labels() -> None:
    plans = [
        plan_site(i, seed=1, regions=("apac-north",), prefix="lab", extra_labels={"tier": "gold"})
        for i in range(50)
    ]
    assert {p.labels["region"] for p in plans} == {"apac-north"}
    assert all(p.name.startswith("lab-") and p.labels["tier"] == "gold" for p in plans)
    with pytest.raises(ValueError, match="known regions"):
        plan_site(0, regions=("atlantis",))


async def test_sim_site_facts_match_its_model() -> None:
    plan = plan_site(3, seed=2)
    driver = make_driver(plan, "default")
    facts = await site_facts(plan, driver)
    obs = await driver.observe()
    assert facts["hostname"] == plan.name
    assert facts["hardware"]["cpuCores"] == sum(n.cpu_millis for n in obs.nodes) // 1000
    assert facts["coordinates"] == {"latitude": plan.latitude, "longitude": plan.longitude}
    assert facts["osVersion"] == obs.os_version


class NoCalls:
    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a site with a saved identity must not register again")

    async def poll(self, name: str, poll_token: str, wait_seconds: int = 30) -> dict[str, Any]:
        raise AssertionError("no poll expected")


async def test_saved_identity_is_reused_without_any_call(tmp_path: Path) -> None:
    config = SimulateConfig(server="https://127.0.0.1:1", data_dir=tmp_path, sites=1, token="t")
    plan = plan_site(0)
    site_dir = tmp_path / "sites" / "00000"
    site_dir.mkdir(parents=True, mode=0o700)
    for f in ("site.crt", "site.key", "ca-bundle.pem", "server-ca.pem"):
        (site_dir / f).write_text("x")
    (site_dir / "identity.json").write_text(
        json.dumps({"tenant": "default", "site": "kept-name", "server": config.server})
    )
    ident = await onboard_site(config, plan, {}, NoCalls())  # type: ignore[arg-type]
    assert (ident.site, ident.data_dir) == ("kept-name", site_dir)


async def test_sim_driver_under_the_core_keeps_the_manifest_offline(tmp_path: Path) -> None:
    """The real SimDriver under the core, the server down: the persisted manifest is applied
    (allocatable drops by the reservation) and the site keeps it while retrying."""
    plan = plan_site(1, seed=4)
    driver = make_driver(plan, "default")
    before = (await driver.observe()).allocatable
    site_dir = tmp_path / "site"
    site_dir.mkdir(mode=0o700)
    manifest = {
        "metadata": {"name": plan.name, "generation": 2},
        "spec": {
            "site": plan.name,
            "hash": "sha256:x",
            "sections": {"reservations": {"cpuMillis": 500, "memoryBytes": 2**30}},
        },
    }
    (site_dir / "manifest.json").write_text(json.dumps(manifest))

    class Down:
        calls = 0

        async def manifest(self, after: int, wait_seconds: float) -> dict[str, Any] | None:
            raise ApiError(0, "ConnectionError", "down")

        async def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
            Down.calls += 1
            raise ApiError(0, "ConnectionError", "down")

        async def renew(self, csr_pem: bytes) -> bytes:
            raise AssertionError

        async def aclose(self) -> None:
            return None

    core = AgentCore(
        SavedIdentity(site_dir, "default", plan.name, "https://127.0.0.1:1"),
        driver,
        client_factory=lambda _: Down(),
        backoff_base=0.01,
        backoff_cap=0.05,
        durable=False,
    )
    task = asyncio.create_task(core.run())
    for _ in range(200):
        if Down.calls >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Down.calls >= 3
    assert core.state == "Applied" and core.generation == 2
    after = (await driver.observe()).allocatable
    assert after.cpu_millis == before.cpu_millis - 500


@pytest.mark.parametrize("follows", [False, True])
def test_a_background_simulator_outlives_the_shell_that_started_it(tmp_path: Path, follows: bool) -> None:
    """``fleetplane simulate ... &`` from a script: the script's shell exits at once. The
    simulator must keep running (and its sites with it); only a demo's simulator, started with
    ``--exit-with-parent``, stops when its parent is gone."""
    from tests.support.onboarding import make_ca, pem

    _, ca = make_ca("background-sim-test")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(pem(ca))
    data_dir = tmp_path / "sites"
    argv = [
        sys.executable, "-m", "fleetplane", "simulate", "--server", "https://127.0.0.1:9",
        "--ca-file", str(ca_file), "--token", "fpt_unused", "--sites", "1",
        "--data-dir", str(data_dir), *(["--exit-with-parent"] if follows else []),
    ]  # fmt: skip
    # The shell starts the simulator in the background, lets it start, and exits: the
    # simulator is reparented.
    shell = subprocess.Popen(
        ["sh", "-c", f"{shlex.join(argv)} >{tmp_path / 'sim.log'} 2>&1 & echo $!; sleep 4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdout is not None
    pid = int(shell.stdout.readline().strip())
    try:
        shell.wait(30)
        time.sleep(4.0)  # the simulator looks for its parent every second
        alive = Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        log = (tmp_path / "sim.log").read_text()
        if follows:
            assert not alive and "parent process gone" in log, log
        else:
            assert alive and "parent process gone" not in log, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_simulator_still_onboarding_stops_on_sigterm(tmp_path: Path) -> None:
    """Against a server that is down, onboarding retries for ever; a stop must not wait for it."""
    from tests.support.onboarding import make_ca, pem

    _, ca = make_ca("stopping-sim-test")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(pem(ca))
    argv = [
        sys.executable, "-m", "fleetplane", "simulate", "--server", "https://127.0.0.1:9",
        "--ca-file", str(ca_file), "--token", "fpt_unused", "--sites", "3",
        "--data-dir", str(tmp_path / "sites"),
    ]  # fmt: skip
    sim = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4.0)
        assert sim.poll() is None  # still trying to onboard
        sim.send_signal(signal.SIGTERM)
        _, err = sim.communicate(timeout=10)
        assert "Traceback" not in err, err
    finally:
        if sim.poll() is None:
            sim.kill()
