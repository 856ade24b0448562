"""Site status reports, written in batches.

Every connected site reports on change and as a heartbeat; written one transaction each,
a fan-out to N sites costs N durable commits in a row. The writer instead takes every
report that arrived while the previous batch was being written and writes them in ONE
transaction (group commit): no added delay when reports are rare, one commit for many
when they arrive together. Each report still answers only after its batch committed.

The checks that admit a report (the site exists, is not decommissioned, and the
certificate's serial is its current one) run again inside the batch's transaction, so
a revocation committed just before is never overwritten by a late report.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fleetplane.controllers.health_controller import HealthController, Prescored
from fleetplane.core.errors import ApiError, Cause, conflict, forbidden, invalid, unauthorized
from fleetplane.core.objects import Obj, now_rfc3339
from fleetplane.core.registry import causes_from_pydantic
from fleetplane.core.store import StoreBatch
from fleetplane.kinds import SITE, SITE_MANIFEST
from fleetplane.server.context import ServerContext

MAX_BATCH = 256  # reports per transaction: bounds the write lock's hold and lets batches pipeline
# Fields of Site.status that are the server's to say, never kept from an earlier report.
SERVER_FIELDS = frozenset({"phase", "lastSeen", "identity", "health"})


@dataclass(slots=True)
class _Report:
    tenant: str
    site: str
    serial: str
    status: dict[str, Any]
    done: asyncio.Future[Written]
    with_manifest: bool = False
    keep: tuple[str, ...] = ()  # fields of the stored status to keep (a delta report) ...
    base: str | None = None  # ... if the Site is still at this resourceVersion


@dataclass(frozen=True, slots=True)
class Written:
    """A report once its batch committed: the updated Site, and (when asked for) the site's
    SiteManifest as the same transaction read it (``None``: the site has none)."""

    site: Obj
    manifest: Obj | None = None


def validated_status(site: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The reported status checked against the Site schema (422 naming the field), with
    what is the server's to say: a site that reports is Online (it cannot call itself
    Offline or decommission itself), and ``lastSeen`` is the server's clock, not the site's."""
    if wanted.get("phase") == "Decommissioned":
        raise forbidden("Forbidden: a site cannot decommission itself; the operator does")
    wanted = {**wanted, "phase": "Online", "lastSeen": now_rfc3339()}
    wanted.pop("identity", None)  # the server's record of the certificate, never the site's
    wanted.pop("health", None)  # the health controller's score, never the site's own
    assert SITE.status_model is not None
    try:
        parsed = SITE.status_model.model_validate(wanted)
    except ValidationError as exc:
        raise invalid(SITE.kind, site, causes_from_pydantic(exc, "status")) from None
    return parsed.model_dump(mode="json", by_alias=True, exclude_none=True)


def kept_fields(site: str, body: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """A delta report's ``keep`` (the status fields unchanged since the site's last report,
    left out of its ``status``) and ``base`` (the Site's resourceVersion that report left);
    422 naming the bad entry. ``((), None)`` for a report in full."""
    keep, base = body.get("keep"), body.get("base")
    if keep is None or keep == []:
        return (), None
    if not isinstance(keep, list):
        raise invalid(SITE.kind, site, [Cause("keep", "must be a list of status field names")])
    assert SITE.status_model is not None
    reportable = SITE.status_model.model_fields.keys() - SERVER_FIELDS
    reported = body.get("status") or {}
    for i, name in enumerate(keep):
        if not isinstance(name, str) or name not in reportable:
            why = f"must name a status field the site reports, not {name!r}"
            raise invalid(SITE.kind, site, [Cause(f"keep[{i}]", why)])
        if name in reported:
            why = f"{name!r} is in status as well: keep it or report it, not both"
            raise invalid(SITE.kind, site, [Cause(f"keep[{i}]", why)])
    if not isinstance(base, str) or not base.isdigit():
        why = "required with keep: the Site's resourceVersion after the report it keeps from"
        raise invalid(SITE.kind, site, [Cause("base", why)])
    return tuple(dict.fromkeys(keep)), base


class StatusWriter:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._pending: list[_Report] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (for tests and metrics)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="site-status")

    async def submit(
        self,
        tenant: str,
        site: str,
        serial: str,
        status: dict[str, Any],
        *,
        with_manifest: bool = False,
        keep: tuple[str, ...] = (),
        base: str | None = None,
    ) -> Written:
        """Write a validated status for the site whose current certificate has ``serial``;
        returns the updated Site once its batch committed, and with ``with_manifest`` the
        site's manifest read in the same transaction (``PUT /site-api/v1/sync``: no trip to a
        worker thread of its own to read it). ``keep``: fields taken from the stored status,
        if the Site is still at resourceVersion ``base`` (409 Conflict if not)."""
        done: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._pending.append(_Report(tenant, site, serial, status, done, with_manifest, keep, base))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="site-status-writer")
        return await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    # Its own thread: a batch must not queue behind request reads.
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._write, batch
                    )
                except Exception as exc:  # the transaction failed: every report in it did
                    results = [exc] * len(batch)
                self.batches += 1
                for report, result in zip(batch, results, strict=True):
                    if report.done.done():
                        continue  # the caller went away
                    if isinstance(result, BaseException):
                        report.done.set_exception(result)
                    else:
                        report.done.set_result(result)

    def _write(self, batch: list[_Report]) -> list[Written | BaseException]:
        out: list[Written | BaseException] = []
        health = self.ctx.extras.get("health")
        scorer = health if isinstance(health, HealthController) else None
        scores: list[tuple[_Report, Obj, Prescored]] = []
        try:
            with self.ctx.store.batch() as tx:
                for report in batch:
                    try:
                        written, score = _write_one(tx, report, scorer)
                    except ApiError as exc:  # refused for this site only; the others go on
                        out.append(exc)
                        continue
                    out.append(written)
                    if score is not None:
                        scores.append((report, written.site, score))
                # Handed over before the commit: once committed, the hub may fold a Site
                # event at once, and it should find its score there.
                for report, site, score in scores:
                    assert scorer is not None
                    scorer.prescored(report.tenant, report.site, site["metadata"]["resourceVersion"], score)
        except BaseException:
            for report, _, _ in scores:  # not committed: no event will come for these
                assert scorer is not None
                scorer.forget_prescored(report.tenant, report.site)
            raise
        return out


def _write_one(
    tx: StoreBatch, report: _Report, scorer: HealthController | None
) -> tuple[Written, Prescored | None]:
    site = tx.get_or_none(report.tenant, SITE.kind, "", report.site)
    if site is None:
        raise unauthorized(f'Unauthorized: site "{report.site}" no longer exists; its certificate is revoked')
    current = site.get("status") or {}
    if current.get("phase") == "Decommissioned":
        raise unauthorized(
            f'Unauthorized: site "{report.site}" is decommissioned; its certificate is revoked'
        )
    identity = current.get("identity") or {}
    if identity.get("serial") != report.serial:
        raise unauthorized(
            f"Unauthorized: certificate {report.serial} is not the current certificate of site "
            f'"{report.site}" (superseded or revoked)'
        )
    status = report.status
    if report.keep:
        if site["metadata"]["resourceVersion"] != report.base:
            why = (
                f"its status was written since resourceVersion {report.base}, so the fields the "
                "report keeps may not be the site's own: report them in full"
            )
            raise conflict(SITE.kind, report.site, why)
        # Kept values win over the defaults the partial status was validated with.
        status = {**status, **{k: current[k] for k in report.keep if k in current}}
    if identity:
        status = {**status, "identity": identity}
    if current.get("health"):  # server-owned: the health controller's, kept like identity
        status = {**status, "health": current["health"]}
    # The score this report gives, in the same write: otherwise the health controller
    # writes it a moment later (a second commit and event for every report that moves it).
    scored = scorer.score_report(report.tenant, report.site, status) if scorer is not None else None
    if scored is not None:
        status = {**status, "health": scored[0]}
    written = tx.update(report.tenant, {**site, "status": status}, part="status", stored=site)
    score = scored[1] if scored is not None and written is not site else None  # None: a no-op write
    if not report.with_manifest:
        return Written(written), score
    return Written(written, tx.get_or_none(report.tenant, SITE_MANIFEST.kind, "", report.site)), score


def status_writer(ctx: ServerContext) -> StatusWriter:
    writer = ctx.extras.get("status_writer")
    if not isinstance(writer, StatusWriter):
        writer = ctx.extras["status_writer"] = StatusWriter(ctx)
    return writer
