"""The server's HTTP protocol on one TLS connection (``server/tls.py`` ``MtlsHttpToolsProtocol``,
which keeps leaner per-connection state than uvicorn's): pipelined requests are answered in
order, a large answer reaches a reader that stops reading for a while whole (flow control),
and a site's client certificate still reaches the site API."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest

from fleetplane.client.artifacts import upload_artifact
from tests.support.onboarding import API, SITE_API, anonymous, onboard, operator
from tests.support.server import ServerProcess

MIB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("tls-protocol") / "data")
    srv.start()
    yield srv
    srv.stop()


def read_answer(reader: BinaryIO) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a content-length from a buffered reader: (status, body)."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def test_pipelined_requests_are_answered_in_the_order_they_were_sent(server: ServerProcess) -> None:
    paths = ["/version", "/healthz", "/readyz", "/version"]
    wire = b"".join(f"GET {p} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode() for p in paths)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        server.tls.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(wire)  # one write: the server parses all four before answering the first
        reader = conn.makefile("rb")
        answers = [read_answer(reader) for _ in paths]
    assert [status for status, _ in answers] == [200] * len(paths)
    bodies = [orjson.loads(body) for _, body in answers]
    assert bodies[0]["platform"] == "fleetplane" and bodies[3] == bodies[0]
    assert bodies[1] == {"status": "ok"}
    assert bodies[2]["status"] == "ok" and "revision" in bodies[2]


def test_a_large_answer_reaches_a_reader_that_paused_whole(server: ServerProcess) -> None:
    data = os.urandom(24 * MIB)  # more than the socket buffers hold: the server must pause
    with server.client() as admin:
        chunks = iter([data[i : i + MIB] for i in range(0, len(data), MIB)])
        upload_artifact(admin, "infra", "big-image", chunks, type="os-image", version="2.0.0")
    with (
        operator(server) as op,
        op.stream("GET", f"{API}/namespaces/infra/artifacts/big-image/content") as answer,
    ):
        assert answer.status_code == 200
        time.sleep(1.5)  # stop reading: the server's writes back up and it waits to resume
        digest = hashlib.sha256()
        size = 0
        for chunk in answer.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == len(data) and digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_site_is_known_by_its_client_certificate_on_every_request(
    server: ServerProcess, tmp_path: Path
) -> None:
    with operator(server) as op:
        agent = onboard(server, op, tmp_path, "tls-protocol-site")
    with agent.mtls() as site:  # one connection, several requests: each carries the certificate
        for _ in range(3):
            answer = site.get(f"{SITE_API}/site")
            assert answer.status_code == 200, answer.text
            assert answer.json()["metadata"]["name"] == "tls-protocol-site"
    with anonymous(server) as nobody:
        refused = nobody.get(f"{SITE_API}/site")
    assert refused.status_code == 401 and "certificate" in refused.json()["message"]
