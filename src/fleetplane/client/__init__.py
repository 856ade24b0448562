"""The one package that makes HTTP calls to a fleetplane server (CLI, agent, tests).

``http`` holds the operator side (API key), ``site`` the site side (onboarding and
mutual TLS). Errors come back as the server's ``Status`` turned into ``ApiError``, so
callers see the same code, reason, message and field causes that the server sent.
"""

from fleetplane.client.http import API, Client, Connection, decode_response, resource_path
from fleetplane.client.site import (
    SITE_API,
    AsyncSiteClient,
    SiteClient,
    fetch_server_chain,
    site_ssl_context,
    spki_sha256,
)

__all__ = [
    "API",
    "SITE_API",
    "AsyncSiteClient",
    "Client",
    "Connection",
    "SiteClient",
    "decode_response",
    "fetch_server_chain",
    "resource_path",
    "site_ssl_context",
    "spki_sha256",
]
