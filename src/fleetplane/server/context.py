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
