"""A native-API watch on the bench fleet's sites (or their manifests): when each site first
reported a newer manifest generation, and when it reported it Applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson

if TYPE_CHECKING:
    from bench.fanout import Server

API = "/apis/fleetplane.io/v1"
FLEET_LABEL = "fanout-bench"  # the label every bench fleet's token gives its sites


def applied_report(site: dict[str, Any]) -> tuple[int, bool]:
    rep = (site.get("status") or {}).get("manifest") or {}
    return int(rep.get("generation") or 0), rep.get("state") == "Applied"


class Watcher(threading.Thread):
    """A native-API watch on the bench sites: the arrival time of each site's first report
    of a generation above its ``before`` generation with state Applied (``sitemanifests``:
    its first manifest written after ``rv``), and only of an object ``accept`` accepts."""

    def __init__(
        self,
        server: Server,
        rv: str,
        before: dict[str, int],
        plural: str = "sites",
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.rv, self.before, self.plural = server, rv, before, plural
        self.accept = accept  # when given, only objects it accepts count
        self.done: dict[str, float] = {}
        self.first: dict[str, float] = {}  # the first report of a newer generation, any state
        self.generation: dict[str, int] = {}  # the generation each done site was seen at
        self.events = 0  # every event until all are done (site writes: reports and heartbeats)
        self.all_done = threading.Event()
        self.ready = threading.Event()
        self.error = ""
        self._client = httpx.Client(
            base_url=server.url,
            verify=server.ctx,
            headers=server.headers,
            timeout=httpx.Timeout(10, read=None),
        )

    def run(self) -> None:
        params = {"watch": "true", "resourceVersion": self.rv, "timeoutSeconds": "600"}
        if self.plural == "sites":
            params["labelSelector"] = f"fleet={FLEET_LABEL}"
        try:
            with self._client.stream("GET", f"{API}/{self.plural}", params=params) as resp:
                resp.raise_for_status()
                self.ready.set()
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    now = time.perf_counter()
                    self.events += 1
                    event = orjson.loads(line)  # the instrument should cost little CPU
                    obj = event.get("object") or {}
                    name = (obj.get("metadata") or {}).get("name")
                    if name not in self.before or name in self.done:
                        continue
                    if self.plural == "sitemanifests":  # any change after rv is the compile
                        generation, applied = int(obj["metadata"].get("generation") or 0), True
                    else:
                        generation, applied = applied_report(obj)
                        if generation > self.before[name]:
                            self.first.setdefault(name, now)
                    if applied and generation > self.before[name]:
                        if self.accept is not None and not self.accept(obj):
                            continue
                        self.done[name] = now
                        self.generation[name] = generation
                        if len(self.done) == len(self.before):
                            self.all_done.set()
                            return
        except (httpx.HTTPError, OSError, ValueError) as exc:  # orjson.JSONDecodeError is one
            if not self.all_done.is_set():
                self.error = str(exc)
        finally:
            self.ready.set()

    def close(self) -> None:
        self._client.close()


def applied_generations(sites: list[dict[str, Any]]) -> dict[str, int]:
    """The sites that report their manifest Applied, with its generation: the ``before`` of a
    change's watch."""
    before: dict[str, int] = {}
    for site in sites:
        generation, applied = applied_report(site)
        if applied:
            before[site["metadata"]["name"]] = generation
    return before


def watch_change(
    server: Server,
    rv: str,
    before: dict[str, int],
    accept_manifest: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[Watcher, Watcher]:
    """Two listening watches from ``rv``: the sites' reports of a newer generation, and the
    compile controller's manifest writes (to split write -> stored -> reported)."""
    reports = Watcher(server, rv, before)
    manifests = Watcher(server, rv, dict.fromkeys(before, 0), "sitemanifests", accept=accept_manifest)
    for watcher in (reports, manifests):
        watcher.start()
    for watcher in (reports, manifests):
        watcher.ready.wait(30)
    return reports, manifests
