"""The memory floor for connected sites: what a server with the fleetplane server's TLS setup
(uvicorn's SSL context from ``server.tls.ssl_context_factory``, on uvloop) holds per idle
mutual-TLS connection before any application state: N clients with a site certificate from
a tenant authority (the product's own PKI code), one small request and answer each, then
idle. Everything above this in the fan-out's "server memory per connected site" is the
server's own state per site.

``python -m bench.tls_floor serve DIR PORT`` is the server process; ``tls_floor(n)`` runs one.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import free_port, rss_kb, stop_process
from fleetplane.identity.authority import TenantAuthority
from fleetplane.identity.pki import make_csr, make_key
from fleetplane.identity.serving import ensure_serving_cert

REQUEST_BYTES = 512  # about a site's delta report
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
SITE = "floor-site-00001"


def _write_pki(root: Path) -> None:
    """The certificates the server and its sites use, made by the product's own code: a
    serving certificate, a tenant authority (root and issuing CA) and one site's leaf."""
    serving = ensure_serving_cert(root / "tls", ["127.0.0.1"])
    (root / "serving.crt").write_bytes(serving.cert.read_bytes())
    (root / "serving.key").write_bytes(serving.key.read_bytes())
    (root / "serving-ca.crt").write_bytes(serving.ca_cert.read_bytes())
    authority = TenantAuthority.create("default")
    key = make_key()
    (root / "sites-ca.crt").write_bytes(authority.ssl_bundle())
    (root / "site.crt").write_bytes(authority.sign_site_csr(make_csr(key, SITE), SITE))
    (root / "site.key").write_bytes(key)


def serve(root: Path, port: int) -> None:
    """The server process: the fleetplane server's SSL context, on uvloop as uvicorn runs it,
    and a protocol that answers a client's request once and keeps the connection."""
    import uvicorn
    import uvloop

    from fleetplane.server.tls import TrustBundle, ssl_context_factory

    trust = TrustBundle()
    trust.add((root / "sites-ca.crt").read_bytes())

    async def no_app(scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError  # config.load() wants an app; the protocol below answers

    config = uvicorn.Config(
        app=no_app,
        ssl_certfile=str(root / "serving.crt"),
        ssl_keyfile=str(root / "serving.key"),
        ssl_context_factory=ssl_context_factory(trust),
    )
    config.load()
    held: list[Any] = []

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:  # uvloop's SSL transport
            self.transport, self.received = transport, 0
            held.append(transport)

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received == REQUEST_BYTES:
                self.transport.write(ANSWER)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Answer, "127.0.0.1", port, ssl=config.ssl, backlog=4096)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def _connect_all(port: int, n: int, ctx: ssl.SSLContext) -> list[asyncio.StreamWriter]:
    head = b"PUT /site-api/v1/sync HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: "
    size = REQUEST_BYTES - len(head) - len(b"000\r\n\r\n")
    request = head + b"%03d\r\n\r\n" % size + b"x" * size
    assert len(request) == REQUEST_BYTES
    gate = asyncio.Semaphore(200)  # the accept backlog

    async def one() -> asyncio.StreamWriter:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(request)
            await reader.readexactly(len(ANSWER))
            return writer

    return list(await asyncio.gather(*(one() for _ in range(n))))


def tls_floor(n: int) -> dict[str, Any]:
    """Server RSS per idle mutual-TLS connection, N connections."""
    with tempfile.TemporaryDirectory(prefix="fp-bench-tls-") as tmp:
        root = Path(tmp)
        _write_pki(root)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tls_floor", "serve", str(root), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"the TLS floor server did not start ({proc.wait(10)})")
            time.sleep(0.5)
            rss_idle = rss_kb(proc.pid)
            ctx = ssl.create_default_context(cafile=root / "serving-ca.crt")
            ctx.load_cert_chain(root / "site.crt", root / "site.key")

            async def measure() -> int:
                writers = await _connect_all(port, n, ctx)
                await asyncio.sleep(1.0)
                rss = rss_kb(proc.pid)
                for writer in writers:
                    writer.close()
                return rss

            rss_connected = asyncio.run(measure())
        finally:
            stop_process(proc)
    return {"rss_kb_per_conn": max(0, rss_connected - rss_idle) / n}


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(Path(sys.argv[2]), int(sys.argv[3]))
