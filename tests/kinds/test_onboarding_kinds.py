"""Schemas of the onboarding kinds and Secret."""

from __future__ import annotations

import pytest

from fleetplane.core.errors import ApiError
from fleetplane.kinds import CERTIFICATE_AUTHORITY, REGISTRATION, REGISTRATION_TOKEN, REGISTRY, SECRET


def test_registered_and_flags() -> None:
    for name in ("registrationtokens", "trustedmanufacturers", "registrations", "certificateauthorities"):
        assert REGISTRY.by_plural(name) is not None
    assert CERTIFICATE_AUTHORITY.api_write_verbs == frozenset()
    assert REGISTRATION.api_write_verbs == frozenset({"delete"})
    assert SECRET.sealed_paths == ("spec.data",) and SECRET.sensitive
    assert "status.keyHash" in REGISTRATION_TOKEN.hidden_paths


def test_token_spec_validation() -> None:
    ok = REGISTRATION_TOKEN.normalize(
        {"metadata": {"name": "t"}, "spec": {"labels": {"a": "b"}, "maxUses": 2}}
    )
    assert ok["spec"]["autoAccept"] is False
    with pytest.raises(ApiError, match="maxUses"):
        REGISTRATION_TOKEN.normalize({"metadata": {"name": "t"}, "spec": {"maxUses": 0}})
    with pytest.raises(ApiError, match="expiresAt"):
        REGISTRATION_TOKEN.normalize({"metadata": {"name": "t"}, "spec": {"expiresAt": "tomorrow"}})
    with pytest.raises(ApiError, match="label"):
        REGISTRATION_TOKEN.normalize({"metadata": {"name": "t"}, "spec": {"labels": {"bad key!": "x"}}})


def test_secret_values_must_be_base64() -> None:
    meta = {"name": "s", "namespace": "default"}
    assert SECRET.normalize({"metadata": meta, "spec": {"data": {"k": "aGk="}}})["spec"]["type"] == "Opaque"
    with pytest.raises(ApiError, match="base64"):
        SECRET.normalize({"metadata": meta, "spec": {"data": {"k": "not base64!"}}})
