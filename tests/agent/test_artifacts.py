"""The site's artifact cache against a real server over mutual TLS: download once, resume a
cut download with Range, detect corrupted bytes and fetch them again, give up clearly."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetplane.agent.artifacts import ArtifactCache, ArtifactError
from fleetplane.client.artifacts import upload_artifact
from fleetplane.client.site import AsyncSiteClient
from tests.support.artifacts import assign, pattern
from tests.support.onboarding import Agent, onboard, operator
from tests.support.server import ServerProcess

MIB = 1 << 20
SIZE = 8 * MIB + 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("agent-art") / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def site(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[Agent, dict[str, str]]:
    """One onboarded site with two artifacts assigned: ``ok`` and ``tampered`` (digest -> name)."""
    with operator(server) as op:
        agent = onboard(server, op, tmp_path_factory.mktemp("agent-art-site"), "cache-site")
    refs, digests = [], {}
    with server.client() as client:
        for name, seed in (("ok", 1), ("tampered", 2)):
            data = pattern(SIZE, seed)
            art = upload_artifact(client, "infra", name, iter([data]), type="package", version="1.0")
            digests[name] = art["status"]["sha256"]
            refs.append({"name": name, "sha256": digests[name], "size": SIZE, "type": "package"})
    assign(server, "cache-site", refs)
    return agent, digests


class CuttingProxy:
    """A TCP proxy in front of the server that cuts its first connection after ``cut_after``
    bytes from the server (TLS stays end to end), counting what each connection carried."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.carried: list[int] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.carried)
        self.carried.append(0)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        self.carried[index] += len(data)
                        if index == 0 and self.carried[index] > self.cut_after:
                            break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the loop ends while a pump waits
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def client_for(agent: Agent, server: ServerProcess, url: str | None = None) -> AsyncSiteClient:
    cert, key = agent.files()
    return AsyncSiteClient(
        url or server.url, Path(server.ca_file).read_bytes(), cert_file=cert, key_file=key, timeout=30
    )


def test_downloads_once_and_verifies(
    server: ServerProcess, site: tuple[Agent, dict[str, str]], tmp_path: Path
) -> None:
    agent, digests = site

    async def run() -> ArtifactCache:
        async with client_for(agent, server) as client:
            cache = ArtifactCache(tmp_path / "cache", client)
            assert not cache.has(digests["ok"])
            path = await cache.ensure(digests["ok"], SIZE, name="ok")
            again = await cache.ensure(digests["ok"], SIZE, name="ok")
            assert again == path and cache.has(digests["ok"])
            return cache

    cache = asyncio.run(run())
    assert cache.downloads == 1  # the second ensure found the verified file
    assert cache.path(digests["ok"]).read_bytes() == pattern(SIZE, 1)
    assert not cache.partial(digests["ok"]).exists()


def test_an_interrupted_download_resumes_where_it_stopped(
    server: ServerProcess, site: tuple[Agent, dict[str, str]], tmp_path: Path
) -> None:
    agent, digests = site

    async def run() -> tuple[ArtifactCache, CuttingProxy]:
        proxy = CuttingProxy(server.port, cut_after=3 * MIB)
        port = await proxy.start()
        try:
            async with client_for(agent, server, f"https://127.0.0.1:{port}") as client:
                cache = ArtifactCache(tmp_path / "cache", client)
                await cache.ensure(digests["ok"], SIZE, name="ok")
                return cache, proxy
        finally:
            await proxy.stop()

    cache, proxy = asyncio.run(run())
    assert cache.resumes == 1 and cache.refetches == 0
    assert hashlib.sha256(cache.path(digests["ok"]).read_bytes()).hexdigest() == digests["ok"]
    first, second = proxy.carried[0], proxy.carried[1]
    assert first > 3 * MIB
    # The second connection carried only the rest (Range: bytes=N-), not the whole blob again.
    assert second < SIZE - 2 * MIB + 64 * 1024


def test_a_corrupted_partial_download_is_detected_and_fetched_again(
    server: ServerProcess, site: tuple[Agent, dict[str, str]], tmp_path: Path
) -> None:
    agent, digests = site
    cache_root = tmp_path / "cache"
    # A partial file from an earlier attempt whose bytes went bad on disk.
    partial = cache_root / "partial" / digests["ok"]
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\xff" * (2 * MIB))

    async def run() -> ArtifactCache:
        async with client_for(agent, server) as client:
            cache = ArtifactCache(cache_root, client)
            await cache.ensure(digests["ok"], SIZE, name="ok")
            return cache

    cache = asyncio.run(run())
    assert cache.refetches == 1 and cache.downloads == 2
    assert cache.path(digests["ok"]).read_bytes() == pattern(SIZE, 1)


def test_bytes_that_never_match_their_digest_raise_a_clear_error(
    server: ServerProcess, site: tuple[Agent, dict[str, str]], tmp_path: Path
) -> None:
    agent, digests = site
    digest = digests["tampered"]
    blob = server.data_dir / "artifacts" / "sha256" / digest[:2] / digest[2:]
    with blob.open("r+b") as f:  # the repository's copy is damaged (bit rot, tampering)
        f.seek(SIZE // 2)
        f.write(b"\x00\x01\x02")

    async def run() -> None:
        async with client_for(agent, server) as client:
            cache = ArtifactCache(tmp_path / "cache", client)
            with pytest.raises(ArtifactError, match="do not match SHA-256"):
                await cache.ensure(digest, SIZE, name="tampered")
            assert not cache.has(digest) and not cache.partial(digest).exists()

    asyncio.run(run())


def test_an_unassigned_artifact_is_refused(
    server: ServerProcess, site: tuple[Agent, dict[str, str]], tmp_path: Path
) -> None:
    agent, _ = site

    async def run() -> None:
        async with client_for(agent, server) as client:
            cache = ArtifactCache(tmp_path / "cache", client)
            with pytest.raises(ArtifactError, match="not assigned"):
                await cache.ensure("ab" * 32, 10)

    asyncio.run(run())
