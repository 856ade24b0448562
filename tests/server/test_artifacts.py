"""The artifact repository against a real server: streamed upload with metadata, dedup,
download with Range, validation errors naming fields, and who may upload or download."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetplane.client import Client, Connection
from fleetplane.client.artifacts import upload_artifact
from fleetplane.core.errors import ApiError
from tests.support.artifacts import assign, pattern
from tests.support.onboarding import API, SITE_API, Agent, onboard, operator
from tests.support.server import ServerProcess

MIB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("artifacts") / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def op(server: ServerProcess) -> Iterator[httpx.Client]:
    with operator(server) as http:
        yield http


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with server.client() as client:
        yield client


def blobs(server: ServerProcess) -> list[Path]:
    return sorted(p for p in (server.data_dir / "artifacts" / "sha256").glob("??/*") if p.is_file())


def put(
    client: Client,
    name: str,
    data: bytes,
    ns: str = "infra",
    *,
    type: str = "package",
    version: str = "1.0.0",
    architecture: str = "",
    signature: str = "",
    sha256: str = "",
) -> dict[str, Any]:
    chunks = iter([data[i : i + MIB] for i in range(0, len(data), MIB)])
    return upload_artifact(
        client,
        ns,
        name,
        chunks,
        type=type,
        version=version,
        architecture=architecture,
        signature=signature,
        sha256=sha256,
    )


def test_upload_records_metadata_and_serves_ranges(
    server: ServerProcess, admin: Client, op: httpx.Client
) -> None:
    # 5 MiB: over the 3 MiB JSON body limit, which artifact uploads do not share.
    data = pattern(5 * MIB + 123, seed=1)
    digest = hashlib.sha256(data).hexdigest()
    art = put(
        admin, "edge-agent", data, type="package", version="2.4.1", architecture="arm64", signature="c2ln"
    )
    status, spec = art["status"], art["spec"]
    assert status["phase"] == "Ready" and status["sha256"] == digest and status["size"] == len(data)
    assert spec == {"type": "package", "version": "2.4.1", "architecture": "arm64", "signature": "c2ln"}
    assert (server.data_dir / "artifacts" / "sha256" / digest[:2] / digest[2:]).read_bytes() == data

    listed = op.get(f"{API}/namespaces/infra/artifacts").json()["items"]
    assert [a["metadata"]["name"] for a in listed] == ["edge-agent"]

    url = f"{API}/namespaces/infra/artifacts/edge-agent/content"
    whole = op.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == f'"{digest}"'
    part = op.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = op.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    suffix = op.get(url, headers={"Range": "bytes=-7"})
    assert suffix.status_code == 206 and suffix.content == data[-7:]
    beyond = op.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert beyond.json()["kind"] == "Status"


def test_same_bytes_are_stored_once_and_kept_until_the_last_reference_goes(
    server: ServerProcess, admin: Client, op: httpx.Client
) -> None:
    data = pattern(2 * MIB, seed=2)
    before = len(blobs(server))
    put(admin, "img-a", data, type="os-image", version="1.0")
    put(admin, "img-b", data, type="os-image", version="1.0")
    assert len(blobs(server)) == before + 1
    digest = hashlib.sha256(data).hexdigest()

    assert op.delete(f"{API}/namespaces/infra/artifacts/img-a").status_code == 200
    assert (server.data_dir / "artifacts" / "sha256" / digest[:2] / digest[2:]).exists()
    assert op.get(f"{API}/namespaces/infra/artifacts/img-b/content").content == data
    assert op.delete(f"{API}/namespaces/infra/artifacts/img-b").status_code == 200
    assert not (server.data_dir / "artifacts" / "sha256" / digest[:2] / digest[2:]).exists()
    assert op.get(f"{API}/namespaces/infra/artifacts/img-b").status_code == 404


def test_an_expected_digest_that_does_not_match_is_refused_and_nothing_is_kept(
    server: ServerProcess, admin: Client, op: httpx.Client
) -> None:
    before = blobs(server)
    with pytest.raises(ApiError) as err:
        put(admin, "bad", pattern(MIB, seed=3), sha256="0" * 64)
    assert err.value.code == 400 and [c.field for c in err.value.causes] == ["sha256"]
    assert blobs(server) == before
    assert op.get(f"{API}/namespaces/infra/artifacts/bad").status_code == 404
    assert not list((server.data_dir / "artifacts" / "tmp").iterdir())  # no spool left behind
    good = pattern(1000, seed=3)
    art = put(admin, "good", good, sha256="sha256:" + hashlib.sha256(good).hexdigest())
    assert art["status"]["phase"] == "Ready"


def test_ready_artifacts_are_immutable(admin: Client) -> None:
    data = pattern(3000, seed=4)
    put(admin, "fixed", data)
    again = put(admin, "fixed", data)  # the same bytes: a no-op
    assert again["status"]["sha256"] == hashlib.sha256(data).hexdigest()
    with pytest.raises(ApiError) as err:
        put(admin, "fixed", pattern(3000, seed=5))
    assert err.value.code == 409 and "delete it first" in err.value.message


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"type": "rpm", "version": "1.0"}, "spec.type"),
        ({"version": "1.0"}, "spec.type"),
        ({"type": "package", "version": "1 0"}, "spec.version"),
        ({"type": "package"}, "spec.version"),
        ({"type": "package", "version": "1.0", "architecture": "z80"}, "spec.architecture"),
        ({"type": "package", "version": "1.0", "sha256": "abc"}, "sha256"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(
    op: httpx.Client, params: dict[str, str], field: str
) -> None:
    r = op.put(f"{API}/namespaces/infra/artifacts/x/content", params=params, content=b"bytes")
    assert r.status_code in (400, 422), r.text
    body = r.json()
    assert body["kind"] == "Status" and field in [c["field"] for c in body["details"]["causes"]]
    assert op.get(f"{API}/namespaces/infra/artifacts/x").status_code == 404


def test_artifacts_are_not_written_through_the_generic_api(op: httpx.Client) -> None:
    body = {"metadata": {"name": "sneaky"}, "spec": {"type": "package", "version": "1.0"}}
    r = op.post(f"{API}/namespaces/infra/artifacts", json=body)
    assert r.status_code == 403 and "managed by the server" in r.json()["message"]


def test_keys_without_rights_cannot_upload(server: ServerProcess, op: httpx.Client) -> None:
    keys = {}
    for name, spec in {
        "art-viewer": {"role": "viewer"},
        "art-elsewhere": {"role": "editor", "namespaces": ["other"]},
    }.items():
        r = op.post(f"{API}/accesskeys", json={"metadata": {"name": name}, "spec": spec})
        assert r.status_code == 201, r.text
        keys[name] = r.json()["status"]["accessKey"]
    for key in keys.values():
        client = Client(Connection(server=server.url, key=key, ca_file=server.ca_file))
        with client, pytest.raises(ApiError) as err:
            put(client, "nope", b"data")
        assert err.value.code == 403
    assert op.get(f"{API}/namespaces/infra/artifacts/nope").status_code == 404
    viewer = Client(Connection(server=server.url, key=keys["art-viewer"], ca_file=server.ca_file))
    with viewer:
        assert viewer.http.delete(f"{API}/namespaces/infra/artifacts/good").status_code == 403


def test_a_site_downloads_only_what_its_manifest_assigns(
    server: ServerProcess, admin: Client, op: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    where = tmp_path_factory.mktemp("art-sites")
    mine: Agent = onboard(server, op, where, "art-site-a")
    other: Agent = onboard(server, op, where, "art-site-b")
    data = pattern(MIB + 17, seed=6)
    art = put(admin, "site-pkg", data)
    digest = str(art["status"]["sha256"])
    assign(
        server, "art-site-a", [{"name": "site-pkg", "sha256": digest, "size": len(data), "type": "package"}]
    )

    with mine.mtls() as site:
        r = site.get(f"{SITE_API}/artifacts/{digest}")
        assert r.status_code == 200 and r.content == data and r.headers["etag"] == f'"{digest}"'
        r = site.get(f"{SITE_API}/artifacts/{digest}", headers={"Range": "bytes=100-"})
        assert r.status_code == 206 and r.content == data[100:]
        assert site.get(f"{SITE_API}/artifacts/not-a-digest").status_code == 400
    with other.mtls() as site:
        r = site.get(f"{SITE_API}/artifacts/{digest}")
        assert r.status_code == 404 and "not assigned to site art-site-b" in r.json()["message"]
    with httpx.Client(base_url=server.url, verify=server.tls) as anonymous:
        assert anonymous.get(f"{SITE_API}/artifacts/{digest}").status_code == 401


def test_cli_upload_list_download_delete(server: ServerProcess, tmp_path: Path) -> None:
    data = pattern(3 * MIB + 1, seed=7)
    source = tmp_path / "helm-chart.tgz"
    source.write_bytes(data)
    r = server.cli(
        "artifacts", "upload", str(source), "--type", "container-package", "--version", "0.3.1", "-n", "cli"
    )
    assert r.returncode == 0, r.stderr
    assert (
        "artifact/helm-chart.tgz uploaded: 3.0 MiB" in r.stdout
        and hashlib.sha256(data).hexdigest() in r.stdout
    )
    listed = server.cli("artifacts", "list", "-n", "cli")
    assert (
        "helm-chart.tgz" in listed.stdout
        and "container-package" in listed.stdout
        and "Ready" in listed.stdout
    )
    # A partial download from an earlier try is resumed and the whole file verified.
    target = tmp_path / "out.tgz"
    (tmp_path / "out.tgz.part").write_bytes(data[:MIB])
    got = server.cli("artifacts", "download", "helm-chart.tgz", "-n", "cli", "--out", str(target))
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == data
    bad = server.cli("artifacts", "upload", str(source), "--type", "rpm", "--version", "1", "-n", "cli")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "spec.type" in bad.stderr
    gone = server.cli("artifacts", "delete", "helm-chart.tgz", "-n", "cli")
    assert gone.returncode == 0 and "deleted" in gone.stdout
    assert server.cli("artifacts", "get", "helm-chart.tgz", "-n", "cli").returncode == 1


def test_an_infra_pipeline_assigns_its_artifacts_to_its_sites_only(
    server: ServerProcess, admin: Client, op: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    where = tmp_path_factory.mktemp("art-pipeline")
    member = onboard(server, op, where, "art-pipe-in", labels={"art": "in"})
    outsider = onboard(server, op, where, "art-pipe-out", labels={"art": "out"})
    data = pattern(4096, seed=8)
    digest = str(put(admin, "pipe-pkg", data)["status"]["sha256"])
    vs = {"metadata": {"name": "art-in"}, "spec": {"selector": "art=in"}}
    assert op.post(f"{API}/namespaces/infra/virtualsites", json=vs).status_code == 201
    pipeline = {
        "metadata": {"name": "pkgs"},
        "spec": {"virtualSites": ["art-in"], "packages": ["pipe-pkg"], "cluster": False},
    }
    r = op.post(f"{API}/namespaces/infra/infrapipelines", json=pipeline)
    assert r.status_code == 201, r.text
    with member.mtls() as site:
        deadline = time.monotonic() + 20
        while (r := site.get(f"{SITE_API}/artifacts/{digest}")).status_code == 404:
            assert time.monotonic() < deadline, "the pipeline's artifact never reached the site's manifest"
            time.sleep(0.2)
        assert r.status_code == 200 and r.content == data
    with outsider.mtls() as site:
        assert site.get(f"{SITE_API}/artifacts/{digest}").status_code == 404


def test_an_interrupted_upload_leaves_a_failed_artifact_that_a_new_upload_replaces(
    server: ServerProcess, admin: Client, op: httpx.Client
) -> None:
    def cut_off() -> Iterator[bytes]:
        yield pattern(MIB, seed=9)
        raise ConnectionAbortedError("the operator's laptop went to sleep")

    with pytest.raises(ConnectionAbortedError):
        upload_artifact(admin, "infra", "flaky", cut_off(), type="package", version="1.0", size=4 * MIB)
    deadline = time.monotonic() + 10
    while True:  # the server notices the cut on its own time
        r = op.get(f"{API}/namespaces/infra/artifacts/flaky")
        status = r.json().get("status") if r.status_code == 200 else {}
        if status.get("phase") == "Failed":
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert status["message"] == "the upload was interrupted"
    assert not list((server.data_dir / "artifacts" / "tmp").iterdir())
    art = put(admin, "flaky", pattern(2 * MIB, seed=9))
    assert art["status"]["phase"] == "Ready" and art["status"]["size"] == 2 * MIB
