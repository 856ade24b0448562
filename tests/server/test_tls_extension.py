"""The ASGI TLS extension the server fills for a client certificate: to ASGI code it is the
standard list of one PEM string; the site API takes the certificate from it as DER, from
this form or from a plain list of PEM strings (another server's extension)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request

from fleetplane.core.errors import ApiError
from fleetplane.server.site_api import peer_certificate
from fleetplane.server.tls import PemChain
from tests.support.onboarding import make_ca


def der_certificate() -> bytes:
    _, cert = make_ca("tls-extension-test")
    return cert.public_bytes(serialization.Encoding.DER)


def request_with(tls: dict[str, Any] | None) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    return Request(scope)


def test_the_chain_reads_as_one_pem_string() -> None:
    der = der_certificate()
    chain = PemChain(der)
    pem = ssl.DER_cert_to_PEM_cert(der)
    assert len(chain) == 1 and bool(chain)
    assert chain[0] == pem and chain[-1] == pem and list(chain) == [pem] and list(chain[:1]) == [pem]
    assert ssl.PEM_cert_to_DER_cert(chain[0]) == der
    with pytest.raises(IndexError):
        chain[1]


def test_the_site_api_takes_the_certificate_as_der_from_either_form() -> None:
    der = der_certificate()
    assert peer_certificate(request_with({"client_cert_chain": PemChain(der)})) == der
    assert peer_certificate(request_with({"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)]})) == der


@pytest.mark.parametrize("tls", [None, {}, {"client_cert_chain": []}])
def test_no_client_certificate_is_401(tls: dict[str, Any] | None) -> None:
    with pytest.raises(ApiError) as err:
        peer_certificate(request_with(tls))
    assert err.value.code == 401 and "client certificate" in err.value.message
