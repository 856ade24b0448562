"""An unreachable artifact store (an S3 bucket behind a dead endpoint) is an outage the
operator can read — 503 with a Status naming the store — never a 500, and nothing is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.onboarding import API, operator
from tests.support.server import ServerProcess, free_port


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    dead = free_port()  # nothing listens here
    srv = ServerProcess(
        tmp_path / "data", extra_args=["--artifact-store", f"s3://fleet/art?endpoint=http://127.0.0.1:{dead}"]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-test")  # the server process inherits them
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-test")
    srv.start()
    yield srv
    srv.stop()


def test_an_unreachable_artifact_store_answers_503_and_keeps_nothing(server: ServerProcess) -> None:
    with operator(server) as op:
        r = op.put(
            f"{API}/namespaces/infra/artifacts/img/content",
            params={"type": "package", "version": "1.0.0"},
            content=b"x" * 4096,
        )
        assert r.status_code == 503, r.text
        status = r.json()
        assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
        assert "artifact store is unavailable" in status["message"]
        listed = op.get(f"{API}/namespaces/infra/artifacts").json()["items"]
        assert all(a["status"].get("phase") != "Ready" for a in listed)
