"""Agent-side pieces that need no server: backoff, renewal window, facts, CA pinning checks."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509

from fleetplane.agent.identity import FileSiteKeyStore
from fleetplane.agent.onboard import (
    AgentConfig,
    AgentError,
    Backoff,
    collect_facts,
    csr_name,
    needs_renewal,
    onboard,
    pin_server_ca,
)
from fleetplane.identity.authority import TenantAuthority


def test_backoff_grows_with_jitter_and_caps_at_30s() -> None:
    b = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert delays[0] <= 0.5
    assert all(d <= 30.0 for d in delays)
    assert max(delays) >= 15.0  # reached the cap's range
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next_delay() <= 0.5


def test_renewal_when_less_than_a_third_is_left(tmp_path: Path) -> None:
    store = FileSiteKeyStore(tmp_path)
    store.ensure_key()
    now = dt.datetime.now(dt.UTC)
    ca = TenantAuthority.create("acme")
    pem = ca.sign_site_csr(store.csr("s1"), "s1", lifetime=dt.timedelta(days=30), now=now)
    cert = x509.load_pem_x509_certificate(pem)
    assert not needs_renewal(cert, now + dt.timedelta(days=19))
    assert needs_renewal(cert, now + dt.timedelta(days=21))


def test_facts_and_csr_name() -> None:
    facts = collect_facts(35.6, 139.7)
    assert facts["hostname"] and facts["agentVersion"] and facts["osVersion"]
    assert facts["hardware"]["cpuCores"] >= 1 and facts["hardware"]["memoryMiB"] > 0
    assert facts["coordinates"] == {"latitude": 35.6, "longitude": 139.7}
    assert "coordinates" not in collect_facts()
    assert csr_name("Store_7.example.com") == "store-7"
    assert csr_name("---") == "site"


def test_ca_pinning_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="--ca-file or --ca-hash"):
        pin_server_ca("https://127.0.0.1:1", None, None)
    with pytest.raises(AgentError, match="sha256:<64 hex"):
        pin_server_ca("https://127.0.0.1:1", None, "md5:abc")
    bad = tmp_path / "ca.pem"
    bad.write_text("nope")
    with pytest.raises(AgentError, match="no PEM certificate"):
        pin_server_ca("https://127.0.0.1:1", bad, None)


def test_onboard_without_token_or_device_is_a_clear_error(tmp_path: Path) -> None:
    ca = TenantAuthority.create("acme")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.root_pem)
    config = AgentConfig(server="https://127.0.0.1:1", data_dir=tmp_path / "agent", ca_file=ca_file)
    with pytest.raises(AgentError, match="no way to register"):
        onboard(config)
