"""Start the server: data directory, TLS identity, CLI config, then uvicorn."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from fleetplane.core.process_tuning import tune_for_service
from fleetplane.core.store import open_store
from fleetplane.identity.serving import default_hosts, ensure_serving_cert
from fleetplane.server.app import create_app
from fleetplane.server.bootstrap import default_client_config, ensure_admin, write_client_config
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.tls import MtlsHttpToolsProtocol, ssl_context_factory

log = logging.getLogger("fleetplane.server")


def server_url(settings: ServerSettings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if settings.tls else 'http'}://{host}:{settings.port}"


# A site keeps one connection and long-polls on it; uvicorn's default (close after 5 s idle)
# turned every agent that lagged 5 s behind its answers into a TCP + TLS reconnect, and at
# 10,000 sites such a storm took an eighth of the server's CPU. Longer than the agent's own
# keep-alive (120 s, client/site.py), so the client, not the server, ends an idle connection.
KEEP_ALIVE_SECONDS = 130


STARTUP_FAILURE = 3  # uvicorn's exit code when the server could not start


class DrainingServer(uvicorn.Server):
    """uvicorn's server, ending what clients wait on as its shutdown begins: each site's
    long-poll answers at once (``204``: nothing newer) and each API or console watch stream
    ends, so their connections close. Left alone, every one was cancelled when the grace period
    ran out, and logged as a traceback: a demo of 300 sites printed about 200 at Ctrl-C."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.fleetplane_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ctx = getattr(self.fleetplane_app.state, "ctx", None)
        if isinstance(ctx, ServerContext):
            ended = ctx.hub.end_waits()
            log.info("shutting down: %d long-polls and watches ended", ended)
        await super().shutdown(sockets)


def run_server(settings: ServerSettings, *, banner: bool = True) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    store = open_store(settings.resolved_store_url())
    key_file = ensure_admin(store, settings.data_dir)
    ssl: dict[str, Any] = {}
    ca_file = None
    if settings.tls:
        hosts = default_hosts() + ([settings.host] if settings.host not in ("0.0.0.0", "::") else [])  # noqa: S104
        files = ensure_serving_cert(settings.data_dir / "tls", sorted(set(hosts)))
        ssl = {
            "ssl_certfile": str(files.cert),
            "ssl_keyfile": str(files.key),
            # Mutual TLS for sites: a client certificate is asked for and reaches the app.
            "ssl_context_factory": ssl_context_factory(),
            "http": MtlsHttpToolsProtocol,
        }
        ca_file = files.ca_cert
    url = server_url(settings)
    config_path = settings.client_config or default_client_config()
    write_client_config(config_path, url, key_file, ca_file, settings.data_dir)
    if banner:
        print(
            f"fleetplane {url}\n"
            f"  API:          {url}/apis/fleetplane.io/v1\n"
            f"  store:        {store.backend} ({settings.resolved_store_url().split('@')[-1]})\n"
            f"  admin key:    {key_file} (owner-only; the CLI reads it via {config_path})\n"
            f"  try:          fleetplane get sites",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(settings, store)
    tune_for_service()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # No X-Forwarded-* rewriting: the server terminates its own TLS (a site is known by
        # the client certificate of its connection, which no proxy can forward), and nothing
        # reads the client address or scheme. uvicorn's default checked every request's
        # headers for them, a frame on every waiting long-poll and 2 % of the server's CPU
        # in a 10,000-site fan-out (py-spy).
        proxy_headers=False,
        **ssl,
    )
    server = DrainingServer(config, app)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
    finally:
        store.close()
