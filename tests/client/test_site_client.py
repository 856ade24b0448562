"""The site agent's HTTP client over real TLS, against a bare HTTP/1.1 server that answers
one request per connection and drops the connection when a second one arrives on it (as a
server does whose idle timeout races the agent's next call): an idempotent call is sent
again once on a new connection; any other fails with a clear ``ConnectionError``."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from fleetplane.client.site import AsyncSiteClient
from fleetplane.core.errors import ApiError
from fleetplane.identity.serving import ensure_serving_cert

BODY = b'{"kind":"Site","metadata":{"generation":7}}'


class OneAnswerServer:
    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.answered: list[bytes] = []
        self.dropped: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            line = head.split(b"\r\n", 1)[0]
            if not first:
                self.dropped.append(line)
                break
            first = False
            for header in head.split(b"\r\n"):
                if header.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(header.split(b":")[1]))
            self.answered.append(line)
            head_out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            writer.write(head_out % len(BODY) + BODY)
            await writer.drain()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, bytes]:
    files = ensure_serving_cert(tmp_path, ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    return ctx, files.ca_cert.read_bytes()


def test_an_idempotent_call_on_a_dropped_connection_is_sent_again(tls: tuple[ssl.SSLContext, bytes]) -> None:
    async def scenario() -> None:
        server = OneAnswerServer(tls[0])
        client = AsyncSiteClient(f"https://127.0.0.1:{await server.start()}", tls[1])
        try:
            assert (await client.request("GET", "/site-api/v1/site"))["metadata"]["generation"] == 7
            put = await client.request("PUT", "/site-api/v1/site/status", body={"status": {}})
            assert put["metadata"]["generation"] == 7
            # The PUT met the dropped connection first, then went out again on a new one.
            assert server.dropped == [b"PUT /site-api/v1/site/status HTTP/1.1"]
            assert server.answered == [
                b"GET /site-api/v1/site HTTP/1.1",
                b"PUT /site-api/v1/site/status HTTP/1.1",
            ]
        finally:
            await client.aclose()
            server.server.close()

    asyncio.run(scenario())


def test_a_post_on_a_dropped_connection_fails_clearly(tls: tuple[ssl.SSLContext, bytes]) -> None:
    async def scenario() -> None:
        server = OneAnswerServer(tls[0])
        client = AsyncSiteClient(f"https://127.0.0.1:{await server.start()}", tls[1])
        try:
            await client.request("GET", "/site-api/v1/site")
            with pytest.raises(ApiError) as caught:
                await client.request("POST", "/site-api/v1/site/certificate", body={"csr": "x"})
            assert caught.value.code == 0 and caught.value.reason == "ConnectionError"
            assert "talking to https://127.0.0.1" in caught.value.message
            assert server.answered == [b"GET /site-api/v1/site HTTP/1.1"]  # not sent twice
        finally:
            await client.aclose()
            server.server.close()

    asyncio.run(scenario())


def test_an_untrusted_server_and_a_closed_port_are_connection_errors(
    tls: tuple[ssl.SSLContext, bytes], tmp_path: Path
) -> None:
    other_ca = ensure_serving_cert(tmp_path / "other", ["127.0.0.1"]).ca_cert.read_bytes()

    async def scenario() -> None:
        server = OneAnswerServer(tls[0])
        port = await server.start()
        untrusting = AsyncSiteClient(f"https://127.0.0.1:{port}", other_ca)
        try:
            with pytest.raises(ApiError) as caught:
                await untrusting.request("GET", "/site-api/v1/site")
            assert caught.value.reason == "ConnectionError" and "cannot reach" in caught.value.message
            assert server.answered == []  # nothing was sent to a server it cannot verify
        finally:
            await untrusting.aclose()
            server.server.close()
            await server.server.wait_closed()
        closed = AsyncSiteClient(f"https://127.0.0.1:{port}", tls[1])
        try:
            with pytest.raises(ApiError) as caught:
                await closed.request("GET", "/site-api/v1/site")
            assert caught.value.reason == "ConnectionError" and "cannot reach" in caught.value.message
        finally:
            await closed.aclose()

    asyncio.run(scenario())
