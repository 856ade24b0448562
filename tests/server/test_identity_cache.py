"""The identity service admits a certificate it issued itself without checking its own
signature again, and still refuses it once revoked."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.core.store import open_store
from fleetplane.core.watch import WatchHub
from fleetplane.identity.pki import make_csr, make_key
from fleetplane.kinds import REGISTRY
from fleetplane.server.context import ServerContext, ServerSettings
from fleetplane.server.identity import IdentityService


def test_an_issued_certificate_is_admitted_from_the_cache_until_revoked(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        ctx = ServerContext(ServerSettings(data_dir=tmp_path), store, REGISTRY, WatchHub(store))
        service = IdentityService(ctx)
        issued = service.sign("acme", make_csr(make_key(), "s1").decode(), "s1")
        der = ssl.PEM_cert_to_DER_cert(issued.certificate)
        assert service.verified_before(der) == ("acme", "s1", issued.serial)
        service.revoke("acme", issued.serial, "superseded")
        assert service.verified_before(der) is None
        with pytest.raises(ApiError, match="revoked"):
            service.verify_site_cert(der)
    finally:
        store.close()
