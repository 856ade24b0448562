"""Commands that run or administer the server: ``server``, ``tenants``, ``accesskeys``, ``version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import fleetplane
from fleetplane.core.errors import ApiError


def _data_dir_default() -> Path:
    import os

    env = os.environ.get("FLEETPLANE_DATA_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "fleetplane"


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state

    @app.command()
    def server(
        data_dir: Annotated[
            Path,
            typer.Option(help="Where the store, keys and certificates live.", envvar="FLEETPLANE_DATA_DIR"),
        ] = _data_dir_default(),
        store: Annotated[
            str,
            typer.Option(
                help="Store URL: sqlite:///FILE (default: in data dir) or postgresql://...",
                envvar="FLEETPLANE_STORE",
            ),
        ] = "",
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 7443,
        tls: Annotated[bool, typer.Option(help="Serve HTTPS with the server's own CA.")] = True,
        history: Annotated[int, typer.Option(help="Revisions a watch can resume from.")] = 100_000,
        compact_interval: Annotated[float, typer.Option(help="Seconds between compactions.")] = 60.0,
        max_body: Annotated[int, typer.Option(help="Largest request body in bytes.")] = 3 * 1024 * 1024,
        controllers: Annotated[bool, typer.Option(help="Run controllers (when elected leader).")] = True,
        client_config: Annotated[Path | None, typer.Option(help="CLI config file to write.")] = None,
        kek: Annotated[
            str,
            typer.Option(
                help="Key-encryption key for secrets at rest: file:PATH (default file:<data-dir>/kek.key), "
                "env:VAR or pkcs11:module=...;token=...;key=...;pin-env=VAR. Replicas must share it.",
                envvar="FLEETPLANE_KEK",
            ),
        ] = "",
        registration_ttl: Annotated[
            float, typer.Option(help="Seconds a registration may wait for a decision.")
        ] = 86400.0,
        site_cert_lifetime: Annotated[
            float, typer.Option(help="Lifetime of issued site certificates, in seconds.")
        ] = 30 * 86400.0,
        offline_after: Annotated[
            float, typer.Option(help="Seconds without a report after which a site is marked Offline.")
        ] = 30.0,
        artifact_store: Annotated[
            str,
            typer.Option(
                help="Artifact blobs: <data-dir>/artifacts (default), file:PATH or "
                "s3://BUCKET/PREFIX?endpoint=URL&region=NAME (prefix and query optional; docs/artifacts.md).",
                envvar="FLEETPLANE_ARTIFACT_STORE",
            ),
        ] = "",
        max_artifact_size: Annotated[
            int, typer.Option(help="Largest artifact upload in bytes (streamed; not --max-body).")
        ] = 64 * 1024**3,
        alert_interval: Annotated[float, typer.Option(help="Seconds between alert rule evaluations.")] = 15.0,
        external_url: Annotated[
            str, typer.Option(help="URL of this server as alert receivers should link to it.")
        ] = "",
        metrics_retention: Annotated[
            str, typer.Option(help="Metrics history: STEP:RETENTION per resolution (1m:3h,10m:24h,1h:7d).")
        ] = "1m:3h,10m:24h,1h:7d",
        metrics_flush: Annotated[
            float, typer.Option(help="Seconds between batched writes of the metrics history.")
        ] = 60.0,
        event_ttl: Annotated[
            float, typer.Option(help="Seconds a site event is kept after it last happened.")
        ] = 3600.0,
        events_per_site: Annotated[int, typer.Option(help="Most events kept per site.")] = 50,
        rollouts_kept: Annotated[
            int, typer.Option(help="Rollouts kept per intent (older finished ones are deleted).")
        ] = 10,
    ) -> None:
        """Run the control plane server."""
        from fleetplane.controllers.metrics_history import parse_retention
        from fleetplane.server.context import ServerSettings
        from fleetplane.server.run import run_server

        if not offline_after > 0:
            raise fail(f"--offline-after must be positive, got {offline_after}")
        if not alert_interval > 0 or not metrics_flush > 0:
            raise fail("--alert-interval and --metrics-flush must be positive")
        if not event_ttl > 0 or events_per_site < 1:
            raise fail("--event-ttl must be positive and --events-per-site at least 1")
        if rollouts_kept < 1:
            raise fail(f"--rollouts-kept must be at least 1, got {rollouts_kept}")
        try:
            parse_retention(metrics_retention)
        except ValueError as exc:
            raise fail(f"--metrics-retention: {exc}") from exc
        if not 0 < port < 65536:
            raise fail(f"--port must be between 1 and 65535, got {port}")
        if artifact_store and not artifact_store.startswith(("file:", "s3://")):
            raise fail(f"--artifact-store must be file:PATH or s3://BUCKET[/PREFIX], got {artifact_store!r}")
        settings = ServerSettings(
            data_dir=data_dir.resolve(),
            store_url=store,
            host=host,
            port=port,
            tls=tls,
            history_revisions=history,
            compact_interval=compact_interval,
            max_body_bytes=max_body,
            run_controllers=controllers,
            client_config=client_config or state.config,
            kek=kek,
            registration_ttl=registration_ttl,
            site_cert_lifetime=site_cert_lifetime,
            offline_after=offline_after,
            artifact_store=artifact_store,
            max_artifact_bytes=max_artifact_size,
            alert_interval=alert_interval,
            external_url=external_url,
            metrics_retention=metrics_retention,
            metrics_flush_interval=metrics_flush,
            event_ttl=event_ttl,
            events_per_site=events_per_site,
            rollouts_kept=rollouts_kept,
        )
        try:
            run_server(settings)
        except ValueError as exc:
            raise fail(str(exc)) from exc

    @app.command()
    def version() -> None:
        """Print the CLI version and, if reachable, the server's."""
        out.print(f"client: v{fleetplane.__version__}", highlight=False)
        try:
            with state.client() as client:
                out.print(f"server: {client.request('GET', '/version')['gitVersion']}", highlight=False)
        except ApiError as exc:
            out.print(f"server: unreachable ({exc.message})", highlight=False)

    tenants = typer.Typer(help="Manage tenants (system key only).", no_args_is_help=True)
    app.add_typer(tenants, name="tenants")

    @tenants.command("create")
    def tenant_create(name: str) -> None:
        """Create a tenant and print its first admin key (shown once)."""
        try:
            with state.client() as client:
                created = client.create("tenants", {"metadata": {"name": name}, "spec": {}})
        except ApiError as exc:
            raise report(exc) from exc
        out.print(f"tenant/{name} created", highlight=False)
        out.print(f"admin access key (shown once): {created['status']['adminAccessKey']}", highlight=False)

    keys = typer.Typer(help="Manage access keys of your tenant (admin only).", no_args_is_help=True)
    app.add_typer(keys, name="accesskeys")

    @keys.command("create")
    def key_create(
        name: str,
        role: Annotated[str, typer.Option(help="admin | editor | viewer")] = "viewer",
        namespaces: Annotated[str, typer.Option(help="Comma-separated namespaces (default: all).")] = "",
    ) -> None:
        """Create an access key and print it (shown once)."""
        spec = {"role": role, "namespaces": [n for n in namespaces.split(",") if n]}
        try:
            with state.client() as client:
                created = client.create("accesskeys", {"metadata": {"name": name}, "spec": spec})
        except ApiError as exc:
            raise report(exc) from exc
        out.print(f"accesskey/{name} created", highlight=False)
        out.print(f"access key (shown once): {created['status']['accessKey']}", highlight=False)
