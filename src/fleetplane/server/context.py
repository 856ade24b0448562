"""What every request handler shares: the store, the watch hub, the kinds, the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fleetplane.core.registry import KindRegistry
from fleetplane.core.store import Store
from fleetplane.core.watch import WatchHub


@dataclass
class ServerSettings:
    data_dir: Path
    store_url: str = ""
    host: str = "127.0.0.1"
    port: int = 7443
    tls: bool = True
    max_body_bytes: int = 3 * 1024 * 1024
    # How many revisions of the event log a watch can resume from.
    history_revisions: int = 100_000
    compact_interval: float = 60.0
    watch_timeout: float = 1800.0
    client_config: Path | None = None
    run_controllers: bool = True
    # Key-encryption key for secrets at rest: file:PATH, env:VAR or pkcs11:... (see core/envelope).
    kek: str = ""
    # Pending registrations older than this expire; site certificates live this long.
    registration_ttl: float = 86400.0
    site_cert_lifetime: float = 30 * 86400.0
    # A site whose lastSeen is older than this is marked Offline (liveness controller).
    offline_after: float = 30.0
    # Rollout objects kept per intent; older settled ones are pruned (controllers/rollouts.py).
    rollouts_kept: int = 10
    # Alerts (docs/alerts.md): seconds between evaluations; the URL receivers are given.
    alert_interval: float = 15.0
    external_url: str = ""
    # Metrics history: STEP:RETENTION per resolution, and seconds between batched writes.
    metrics_retention: str = "1m:3h,10m:24h,1h:7d"
    metrics_flush_interval: float = 60.0
    # Site events (docs/events.md): seconds an event is kept after it last happened; per-site cap.
    event_ttl: float = 3600.0
    events_per_site: int = 50
    # Artifact repository: blob store URL ("" = <data-dir>/artifacts, file:PATH, s3://BUCKET/PREFIX)
    # and the largest artifact upload, which has its own limit (max_body_bytes is for JSON).
    artifact_store: str = ""
    max_artifact_bytes: int = 64 * 1024**3

    def resolved_kek(self) -> str:
        return self.kek or f"file:{self.data_dir / 'kek.key'}"

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'fleetplane.db'}"


@dataclass
class ServerContext:
    settings: ServerSettings
    store: Store
    registry: KindRegistry
    hub: WatchHub
    extras: dict[str, object] = field(default_factory=dict)
