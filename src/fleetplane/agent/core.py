"""The agent core: one site's local control loop, async, many per process.

The contract is docs/site-manifest.md ("The agent core"). One :class:`AgentCore` per site:

1. On start, load ``<data-dir>/manifest.json`` (the last manifest taken) and apply it before
   anything else, so a restart in the middle of an apply converges without the server.
2. Long-poll ``GET /site-api/v1/manifest?after=<generation>``; a newer manifest is written
   to ``manifest.json`` atomically *before* the driver applies it.
3. Report ``status.manifest`` (generation, hash, state, items) with a fresh observation
   (nodes, usage, allocatable, versions, policy hits), facts, ``lastSeen`` and phase
   ``Online`` after every apply and every ``heartbeat`` seconds.
4. On connection loss keep the last manifest enforced, retry with jittered backoff (capped at
   30 s), and on reconnect report first, then poll.

One connection per site: the heartbeat goes out between long-polls (the poll waits at most
until the next heartbeat is due), so a site never holds two connections at once. A report
and the long-poll after it go out as one call (``PUT /site-api/v1/sync``) where the server
has it; else as two.
The core renews the site certificate when a third of its lifetime is left, and stops with
:class:`SiteRefused` when the server no longer accepts the site's identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography import x509

import fleetplane
from fleetplane.agent.drivers.base import Driver, ItemStatus, Observation
from fleetplane.agent.identity import FileSiteKeyStore, write_public
from fleetplane.agent.onboard import Backoff, SavedIdentity, tenant_and_site
from fleetplane.client import AsyncSiteClient
from fleetplane.client.site import Synced
from fleetplane.core.errors import ApiError

log = logging.getLogger("fleetplane.agent")

MANIFEST_FILE = "manifest.json"
MAX_WAIT_SECONDS = 60  # the server's long-poll cap
APPLYING_RECHECK_SECONDS = 1.0  # re-apply (level-triggered) this often while items are in progress
# A manifest whose items the driver says it finishes within this long of taking it is reported
# once, finished, instead of "in progress" and again a moment later: half the reports of a
# fleet-wide change whose work is short (a small image pull), none of the information lost.
SETTLE_SECONDS = 1.0
# With a driver that says when its state next changes, re-apply then (never more often than this)...
MIN_RECHECK_SECONDS = 0.05
# ...and still at least this often, level-triggered.
MAX_DRIVER_RECHECK_SECONDS = 10.0
LEGACY_STATUS_FIELDS = ("phase", "lastSeen", "nodeCount", "facts", "softwareVersion", "osVersion")
TRANSIENT_CODES = (0, 429, 502, 503, 504)


class SiteRefused(Exception):
    """The server refuses this site's identity (revoked, decommissioned, deleted, expired)."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(message)
        self.site = site
        self.message = message


class _NoSync(Exception):
    """The combined call is not to be used with this server (after a 404 or a 422)."""


# Always in a report, never kept from the last: the server overrides both anyway.
ALWAYS_REPORTED = frozenset({"phase", "lastSeen"})


class ReportAndPoll(Protocol):
    """``AsyncSiteClient.report_and_poll``: a report (in full, or a delta keeping ``keep``
    from the report that left the Site at ``base``) and the long-poll after it."""

    def __call__(
        self,
        status: dict[str, Any],
        after: int,
        wait_seconds: float,
        *,
        keep: Sequence[str] = (),
        base: str | None = None,
    ) -> Awaitable[Synced]: ...


class SiteApi(Protocol):
    """The calls the core makes (``AsyncSiteClient``; a fake in unit tests). A client that
    also has ``report_and_poll(status, after, wait_seconds)`` (``ReportAndPoll``; the real
    one does) gets a report and the long-poll after it as one call."""

    async def manifest(self, after: int, wait_seconds: float) -> dict[str, Any] | None: ...

    async def put_status(self, status: dict[str, Any]) -> dict[str, Any]: ...

    async def renew(self, csr_pem: bytes) -> bytes: ...

    async def aclose(self) -> None: ...


def rfc3339(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_state(items: list[ItemStatus]) -> str:
    """``Failed`` if any item failed, ``Applying`` while any is in progress, else ``Applied``."""
    states = {item.state for item in items}
    if "Failed" in states:
        return "Failed"
    if "InProgress" in states:
        return "Applying"
    return "Applied"


def observation_status(obs: Observation) -> dict[str, Any]:
    """The observation's part of ``Site.status``, ``lastSeen`` from the site's own clock."""
    status = obs.to_status()
    when = dt.datetime.fromtimestamp(obs.now, dt.UTC) if obs.now > 0 else None
    status["lastSeen"] = rfc3339(when)
    return status


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temporary file + rename: a reader (or a restart) sees the old or the new file, never a
    torn one. ``durable`` also fsyncs the file and the directory (survives power loss)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_manifest(data_dir: Path) -> dict[str, Any] | None:
    """The persisted manifest, or ``None`` (none yet, or unreadable: then the server's wins)."""
    path = data_dir / MANIFEST_FILE
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        log.warning("ignoring %s: not a SiteManifest", path)
        return None
    return doc


def generation_of(manifest: dict[str, Any] | None) -> int:
    if not manifest:
        return 0
    try:
        return int((manifest.get("metadata") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


class AgentCore:
    """One site's agent loop. ``run()`` returns when ``stop()`` is called (or after one round
    with ``once``), and raises :class:`SiteRefused` when the server refuses the site."""

    def __init__(
        self,
        ident: SavedIdentity,
        driver: Driver,
        *,
        heartbeat: float = 10.0,
        facts: dict[str, Any] | None = None,
        software_version: str = fleetplane.__version__,
        once: bool = False,
        durable: bool = True,
        backoff_cap: float = 30.0,
        backoff_base: float = 0.5,
        rng: random.Random | None = None,
        client_factory: Callable[[SavedIdentity], SiteApi] | None = None,
        renew_check_seconds: float = 300.0,
    ) -> None:
        self.ident = ident
        self.driver = driver
        self.heartbeat = heartbeat
        self.facts = facts
        self.software_version = software_version
        self.once = once
        self.durable = durable
        self.backoff = Backoff(base=backoff_base, cap=backoff_cap, rng=rng)
        self._client_factory = client_factory or default_client
        self._renew_check = renew_check_seconds
        self._stop = asyncio.Event()
        self.manifest: dict[str, Any] | None = None
        self.items: list[ItemStatus] = []
        self.state = ""
        self.last_report = 0.0  # monotonic time of the last accepted report (0: none yet)
        self.reports = 0
        self.connected = False
        self._dirty = True  # something to report now
        self._settle_until = 0.0  # monotonic: a report of items in progress may wait until then
        self._legacy_status = False  # the server does not know status.manifest & co. yet
        self._no_distribution = False  # the server has no manifest endpoint (404)
        self._no_sync = False  # the server has no combined report and poll (404), or refused it
        # The last report the server confirmed (each field as JSON) and the Site's
        # resourceVersion after it: the next report leaves out what is unchanged since.
        self._acked: tuple[dict[str, bytes], str] | None = None
        self._not_after = 0.0
        self._renew_at = 0.0
        self._next_renew_check = 0.0
        self._load_cert_times()

    # -- public -------------------------------------------------------------------------------

    @property
    def site(self) -> str:
        return self.ident.site

    @property
    def generation(self) -> int:
        return generation_of(self.manifest)

    def stop(self) -> None:
        """End the loop at its next step (a long-poll in flight ends when it answers; cancel
        the task running :meth:`run` to end at once)."""
        self._stop.set()

    async def run(self) -> None:
        bind = getattr(self.driver, "bind_site", None)
        if callable(bind):  # e.g. the infra pipeline's state files and artifact downloads
            bind(self.ident)
        await self.start_from_disk()
        api = self._client_factory(self.ident)
        try:
            while not self._stop.is_set():
                try:
                    api = await self._round(api)
                except ApiError as exc:
                    await self._failed(exc)
                    continue
                if self.once:
                    return
        finally:
            await api.aclose()

    async def start_from_disk(self) -> None:
        """Load and apply the persisted manifest (before any call to the server)."""
        persisted = load_manifest(self.ident.data_dir)
        if persisted is not None and self.manifest is None:
            self.manifest = persisted
            log.info("%s: enforcing persisted manifest generation %d", self.site, self.generation)
            await self.apply()

    async def apply(self) -> None:
        """Apply the current manifest through the driver (idempotent); a driver crash is a
        ``Failed`` item, never the end of the loop."""
        if self.manifest is None:
            return
        before = (self.state, [i.to_status() for i in self.items])
        try:
            self.items = list(await self.driver.apply(self.manifest))
            self.state = manifest_state(self.items)
        except Exception as exc:  # a driver bug must not stop the site's agent
            log.exception(
                "%s: driver %s failed to apply generation %d", self.site, self.driver.name, self.generation
            )
            self.items = [ItemStatus("manifest", "apply", "Failed", f"driver error: {exc}")]
            self.state = "Failed"
        if (self.state, [i.to_status() for i in self.items]) != before:
            self._dirty = True

    async def status(self) -> dict[str, Any]:
        """The full ``Site.status`` the site reports now (fresh observation)."""
        obs = await self.driver.observe()
        status: dict[str, Any] = {
            "phase": "Online",
            "softwareVersion": self.software_version,
            **observation_status(obs),
        }
        if self.facts:
            status["facts"] = self.facts
        if self.manifest is not None:
            spec = self.manifest.get("spec") or {}
            status["manifest"] = {
                "generation": self.generation,
                "hash": str(spec.get("hash") or ""),
                "state": self.state or "Applying",
                "items": [i.to_status() for i in self.items],
            }
        return status

    # -- one round ----------------------------------------------------------------------------

    async def _round(self, api: SiteApi) -> SiteApi:
        link = getattr(self.driver, "connected", None)
        if callable(link) and not link():
            # The driver models a lost link (the sim's connectivity_loss): nothing gets
            # through; keep enforcing the manifest and look again shortly.
            self.connected, self._dirty = False, True
            await self._sleep(min(self.heartbeat, 1.0))
            return api
        now = time.monotonic()
        self._check_expiry()
        if now >= self._next_renew_check:
            self._next_renew_check = now + self._renew_check
            if self._not_after and time.time() >= self._renew_at:
                api = await self._renew(api)
        if (hold := self._hold()) > 0:
            # The driver finishes what is in progress within the settle window: report it done.
            await self._sleep(hold)
            await self.apply()
            return api
        report_due = self._dirty or now - self.last_report >= self.heartbeat or self.last_report == 0.0
        combined = self._report_and_poll_call(api) if report_due else None
        if combined is not None:
            # One call: the report, then the long-poll (PUT /site-api/v1/sync).
            try:
                found = await self._report_and_poll(combined)
            except _NoSync:
                return api  # the next round reports and polls in two calls
        else:
            if report_due:
                await self._report(api)
            if self._no_distribution:
                await self._sleep(self._until_heartbeat())
                return api
            wait = 0 if self.once else self._poll_wait()
            try:
                found = await api.manifest(self.generation, wait)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                log.warning("%s: the server has no manifest distribution (404); heartbeats only", self.site)
                self._no_distribution = True
                return api
        self._reconnected()
        if found is None and self.generation == 0 and not self.once:
            # after=0 answers at once (no long-poll) while the site has no manifest yet:
            # ask again with the next heartbeat instead of spinning.
            await self._sleep(self._until_heartbeat())
        if found is not None and self._newer(found):
            await self._take(found)
        elif self.state in {"Applying", "Failed"}:
            await self.apply()  # level-triggered: keep driving the driver towards the manifest
        if self.once and self._dirty:
            await self._report(api)
        return api

    def _newer(self, found: dict[str, Any]) -> bool:
        if generation_of(found) > self.generation:
            return True
        mine = ((self.manifest or {}).get("spec") or {}).get("hash")
        return generation_of(found) == self.generation and (found.get("spec") or {}).get("hash") != mine

    async def _take(self, manifest: dict[str, Any]) -> None:
        data = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
        path = self.ident.data_dir / MANIFEST_FILE
        if self.durable:
            await asyncio.to_thread(write_atomic, path, data, durable=True)
        else:  # no fsync, nothing to wait for: cheaper here than a trip to a thread
            write_atomic(path, data, durable=False)
        self.manifest = manifest
        log.info("%s: applying manifest generation %d", self.site, self.generation)
        self.state = "Applying"
        self._settle_until = time.monotonic() + SETTLE_SECONDS
        await self.apply()
        self._dirty = True

    async def _report(self, api: SiteApi) -> None:
        self._acked = None  # this report moves the Site's version: the next goes in full
        status = await self.status()
        if self._legacy_status:
            status = {k: v for k, v in status.items() if k in LEGACY_STATUS_FIELDS}
        try:
            await api.put_status(status)
        except ApiError as exc:
            if exc.code != 422 or self._legacy_status:
                raise
            # Version skew: a server that predates status.manifest/nodes refuses them. Keep
            # the site visible (Online, lastSeen) with what that server understands.
            log.warning(
                "%s: the server refuses the full status (%s); reporting the basic fields",
                self.site,
                exc.message,
            )
            self._legacy_status = True
            await api.put_status({k: v for k, v in status.items() if k in LEGACY_STATUS_FIELDS})
        self._reconnected()
        self.last_report = time.monotonic()
        self.reports += 1
        self._dirty = False

    def _report_and_poll_call(self, api: SiteApi) -> ReportAndPoll | None:
        """The client's combined call, when this server has it and the round may use it."""
        if self._no_sync or self._legacy_status or self._no_distribution or self.once:
            return None
        call = getattr(api, "report_and_poll", None)
        return call if callable(call) else None

    async def _report_and_poll(self, call: ReportAndPoll) -> dict[str, Any] | None:
        status = await self.status()
        reported_at = time.monotonic()
        wait = self._poll_wait(reported_at)
        # Each field as JSON: compared as sent (Python's == takes 1, 1.0 and true for equal),
        # and a snapshot nothing the driver later changes in place can alter.
        encoded = {k: orjson.dumps(v) for k, v in status.items()}
        keep, base = self._unchanged(encoded)
        self._acked = None  # until this report is confirmed
        try:
            if keep:
                try:
                    sent = {k: v for k, v in status.items() if k not in keep}
                    synced = await call(sent, self.generation, wait, keep=keep, base=base)
                except ApiError as exc:
                    if exc.code != 409:
                        raise
                    # The Site was written since our last report (an operator, a restore):
                    # what we kept may not be what it holds. Once more, in full.
                    synced = await call(status, self.generation, wait)
            else:
                synced = await call(status, self.generation, wait)
        except ApiError as exc:
            if exc.code not in (404, 422):
                raise
            # 404: a server that predates the combined call; 422: one that refuses part of
            # this status (version skew), which the separate report knows how to handle.
            log.info("%s: no combined report and poll (%d); using two calls", self.site, exc.code)
            self._no_sync = True
            raise _NoSync() from None
        if synced.site_version:
            self._acked = (encoded, synced.site_version)
        self.last_report = reported_at
        self.reports += 1
        self._dirty = False
        return synced.manifest

    def _unchanged(self, encoded: dict[str, bytes]) -> tuple[tuple[str, ...], str | None]:
        """The fields (as JSON) equal to the last confirmed report's, and that report's
        resourceVersion: what a delta report keeps. ``((), None)``: report in full."""
        if self._acked is None:
            return (), None
        last, version = self._acked
        keep = tuple(k for k, v in encoded.items() if k not in ALWAYS_REPORTED and last.get(k) == v)
        return (keep, version) if keep else ((), None)

    def _reconnected(self) -> None:
        if not self.connected:
            if self.backoff.attempt:
                log.info("%s: server reachable again", self.site)
            self.connected = True
        self.backoff.reset()

    async def _failed(self, exc: ApiError) -> None:
        if exc.code == 401:
            raise SiteRefused(
                self.site,
                f"the server refuses site {self.site}'s identity ({exc.reason}: {exc.message}); "
                "the site was revoked or decommissioned",
            )
        if exc.code in TRANSIENT_CODES:
            if self.connected or self.backoff.attempt == 0:
                log.warning(
                    "%s: %s; keeping generation %d, retrying with backoff",
                    self.site,
                    exc.message,
                    self.generation,
                )
            self.connected = False
        else:
            log.warning("%s: the server answered %d %s: %s", self.site, exc.code, exc.reason, exc.message)
        self._dirty = True  # report as soon as we are back
        if self.state in ("Applying", "Failed"):
            await self.apply()  # keep enforcing the last manifest while disconnected
        if self.once and exc.code not in TRANSIENT_CODES:
            raise exc
        await self._sleep(self.backoff.next_delay())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(seconds, 0.0))

    def _until_heartbeat(self, reported_at: float | None = None) -> float:
        last = self.last_report if reported_at is None else reported_at
        return max(0.0, last + self.heartbeat - time.monotonic())

    def _in_progress(self) -> bool:
        # Any item in progress (also beside a failed one, when the state reads Failed).
        return any(item.state == "InProgress" for item in self.items)

    def _next_change_in(self) -> float | None:
        """Seconds until the driver's own state next changes (a pull done, a pod started, an
        install step), when the driver can tell; ``None`` otherwise."""
        probe = getattr(self.driver, "next_change_in", None)
        if not callable(probe):
            return None
        due = probe()
        return None if due is None else max(0.0, float(due))

    def _hold(self) -> float:
        """How long to hold an unreported change of items in progress, because the driver
        finishes them within the settle window of the manifest just taken (0: report now).
        Never the first report, never past the window, never for a driver that cannot tell."""
        if self.once or not self._dirty or self.last_report == 0.0 or not self._in_progress():
            return 0.0
        left = self._settle_until - time.monotonic()
        due = self._next_change_in() if left > 0 else None
        if due is None or due > left:
            return 0.0
        return max(due, MIN_RECHECK_SECONDS)

    def _poll_wait(self, reported_at: float | None = None) -> float:
        """How long a long-poll may wait; ``reported_at``: a report going out with it."""
        until_heartbeat = self._until_heartbeat(reported_at)
        if self._in_progress():
            due = self._next_change_in()
            if due is not None:
                # Re-apply when the driver's state changes, not on a fixed beat.
                cap = min(MAX_DRIVER_RECHECK_SECONDS, until_heartbeat)
                return round(max(MIN_RECHECK_SECONDS, min(due, cap)), 3)
            return max(1, math.ceil(min(APPLYING_RECHECK_SECONDS, until_heartbeat)))
        return min(MAX_WAIT_SECONDS, max(1, math.ceil(until_heartbeat)))

    # -- certificate --------------------------------------------------------------------------

    def _load_cert_times(self) -> None:
        try:
            cert = self.ident.certificate()
        except (OSError, ValueError):
            return
        self._set_cert_times(cert)

    def _set_cert_times(self, cert: x509.Certificate) -> None:
        start = cert.not_valid_before_utc.timestamp()
        self._not_after = cert.not_valid_after_utc.timestamp()
        self._renew_at = self._not_after - (self._not_after - start) / 3

    def _check_expiry(self) -> None:
        if self._not_after and time.time() > self._not_after:
            raise SiteRefused(
                self.site,
                f"site {self.site}'s certificate expired; remove {self.ident.data_dir} and onboard again",
            )

    async def _renew(self, api: SiteApi) -> SiteApi:
        """A fresh key and certificate over mTLS; the old key stays until the new certificate
        is saved; then a new client (new TLS context) replaces the old one."""
        from fleetplane.identity.pki import make_csr

        keys = FileSiteKeyStore(self.ident.data_dir)
        new_key = keys.stage_new_key()
        certificate = await api.renew(make_csr(new_key, self.site))
        tenant, site = tenant_and_site(certificate)
        if (tenant, site) != (self.ident.tenant, self.ident.site):
            raise SiteRefused(self.site, f"renewal returned a certificate for {tenant}/{site}")
        keys.commit_new_key()
        write_public(self.ident.cert_file, certificate)
        cert = x509.load_pem_x509_certificate(certificate)
        self._set_cert_times(cert)
        log.info(
            "%s: renewed the site certificate; valid until %s", self.site, rfc3339(cert.not_valid_after_utc)
        )
        await api.aclose()
        return self._client_factory(self.ident)


def default_client(ident: SavedIdentity) -> SiteApi:
    return AsyncSiteClient(
        ident.server,
        ident.server_ca_file.read_bytes(),
        cert_file=ident.cert_file,
        key_file=ident.key_file,
        timeout=MAX_WAIT_SECONDS + 30.0,
    )
