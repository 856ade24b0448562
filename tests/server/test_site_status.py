"""Site status reports are written in batches (group commit), and each report is still
admitted only for the site's current certificate, inside the batch's transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.store import Store, open_store
from fleetplane.core.watch import WatchHub
from fleetplane.kinds import REGISTRY, SITE, SITE_MANIFEST
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.site_status import StatusWriter, Written, validated_status


@pytest.fixture
def ctx(store_url: str, tmp_path: Path) -> Iterator[ServerContext]:
    store: Store = open_store(store_url)
    yield ServerContext(ServerSettings(data_dir=tmp_path), store, REGISTRY, WatchHub(store))
    store.close()


def add_site(ctx: ServerContext, name: str, serial: str, phase: str = "Online") -> None:
    created = ctx.store.create("acme", SITE.normalize({"metadata": {"name": name}, "spec": {}}))
    created["status"] = {"phase": phase, "identity": {"serial": serial}}
    ctx.store.update("acme", created, part="status")


def report(software: str) -> dict[str, object]:
    return validated_status("x", {"softwareVersion": software, "phase": "Offline"})


def test_concurrent_reports_share_one_commit_and_each_lands(ctx: ServerContext) -> None:
    for i in range(50):
        add_site(ctx, f"s{i}", f"a{i}")
    writer = StatusWriter(ctx)
    before = ctx.store.revision()

    async def all_reports() -> list[dict[str, Any]]:
        written = await asyncio.gather(
            *(writer.submit("acme", f"s{i}", f"a{i}", report(f"v{i}")) for i in range(50))
        )
        return [w.site for w in written]

    results = asyncio.run(all_reports())
    assert writer.batches == 1  # 50 reports, one transaction
    assert ctx.store.revision() == before + 50  # one revision per report, in order
    for i, site in enumerate(results):
        stored = ctx.store.get("acme", "Site", "", f"s{i}")
        assert stored["status"]["softwareVersion"] == f"v{i}" == site["status"]["softwareVersion"]
        # the server's to say: Online (not the Offline the site claimed), its own clock,
        # and the certificate record kept
        assert stored["status"]["phase"] == "Online" and stored["status"]["lastSeen"]
        assert stored["status"]["identity"] == {"serial": f"a{i}"}


def test_a_refused_report_does_not_sink_its_batch(ctx: ServerContext) -> None:
    add_site(ctx, "good", "g1")
    add_site(ctx, "renewed", "r2")
    add_site(ctx, "retired", "t1", phase="Decommissioned")
    writer = StatusWriter(ctx)

    async def reports() -> list[object]:
        return list(
            await asyncio.gather(
                writer.submit("acme", "good", "g1", report("ok")),
                writer.submit("acme", "renewed", "r1", report("stale")),  # superseded certificate
                writer.submit("acme", "retired", "t1", report("late")),
                writer.submit("acme", "gone", "x1", report("ghost")),
                return_exceptions=True,
            )
        )

    good, renewed, retired, gone = asyncio.run(reports())
    assert isinstance(good, Written) and good.site["status"]["softwareVersion"] == "ok"
    for refused, why in (
        (renewed, "not the current certificate"),
        (retired, "decommissioned"),
        (gone, "no longer exists"),
    ):
        assert isinstance(refused, ApiError) and refused.code == 401 and why in refused.message
    assert "softwareVersion" not in (ctx.store.get("acme", "Site", "", "renewed")["status"])
    assert ctx.store.get("acme", "Site", "", "retired")["status"]["phase"] == "Decommissioned"
    assert ctx.store.get_or_none("acme", "Site", "", "gone") is None


def test_a_site_cannot_decommission_itself_or_send_a_bad_field() -> None:
    with pytest.raises(ApiError) as refused:
        validated_status("s1", {"phase": "Decommissioned"})
    assert refused.value.code == 403 and "decommission" in refused.value.message
    with pytest.raises(ApiError) as bad:
        validated_status("s1", {"nodeCount": "many"})
    assert bad.value.code == 422 and "status.nodeCount" in bad.value.message


def test_a_report_carries_its_health_score_so_the_flush_writes_nothing(ctx: ServerContext) -> None:
    from fleetplane.controllers.health_controller import HealthController

    add_site(ctx, "s1", "a1")
    health = HealthController(ctx.store, ctx.hub)
    ctx.extras["health"] = health
    writer = StatusWriter(ctx)

    async def run() -> tuple[dict[str, object], int]:
        await ctx.hub.start()
        task = asyncio.create_task(health.run())
        try:
            await asyncio.wait_for(health.synced.wait(), 10)
            site = (await writer.submit("acme", "s1", "a1", report("v1"))).site
            again = (await writer.submit("acme", "s1", "a1", report("v1"))).site
            await asyncio.sleep(0.1)
            await health.flush()
            assert again["status"]["health"] == site["status"]["health"]  # unchanged: kept
            return site, health.writes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await ctx.hub.stop()

    site, flushed = asyncio.run(run())
    stored = ctx.store.get("acme", "Site", "", "s1")["status"]["health"]
    assert stored == site["status"]["health"]  # type: ignore[index]
    assert stored["score"] > 0 and stored["colour"] and stored["observedAt"]
    assert flushed == 0  # the report's own write carried the score


def test_no_health_from_a_replica_that_does_not_write_it(ctx: ServerContext) -> None:
    from fleetplane.controllers.health_controller import HealthController

    add_site(ctx, "s1", "a1")
    ctx.extras["health"] = HealthController(ctx.store, ctx.hub, write=False)
    site = asyncio.run(StatusWriter(ctx).submit("acme", "s1", "a1", report("v1"))).site
    assert "health" not in site["status"]


def test_a_report_can_bring_back_the_sites_manifest_from_the_same_transaction(ctx: ServerContext) -> None:
    """``PUT /site-api/v1/sync`` asks for the manifest with the report: no second read."""
    add_site(ctx, "with", "w1")
    add_site(ctx, "without", "o1")
    ctx.store.create(
        "acme",
        SITE_MANIFEST.normalize(
            {
                "metadata": {"name": "with"},
                "spec": {"site": "with", "hash": "sha256:" + "1" * 64, "sections": {}},
            }
        ),
    )
    writer = StatusWriter(ctx)

    async def reports() -> list[Written | BaseException]:
        return list(
            await asyncio.gather(
                writer.submit("acme", "with", "w1", report("a"), with_manifest=True),
                writer.submit("acme", "without", "o1", report("b"), with_manifest=True),
                writer.submit("acme", "with", "w1", report("c")),
                writer.submit("acme", "without", "stale", report("d"), with_manifest=True),
                return_exceptions=True,
            )
        )

    with_manifest, without, plain, refused = asyncio.run(reports())
    assert isinstance(with_manifest, Written) and with_manifest.manifest is not None
    assert with_manifest.manifest["spec"]["hash"] == "sha256:" + "1" * 64
    assert isinstance(without, Written) and without.manifest is None
    assert without.site["status"]["softwareVersion"] == "b"
    assert isinstance(plain, Written) and plain.manifest is None  # not asked for
    assert isinstance(refused, ApiError) and refused.code == 401
    assert ctx.store.get("acme", "Site", "", "without")["status"]["softwareVersion"] == "b"
