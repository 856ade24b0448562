"""Site-side HTTP calls: ``/site-api/v1`` onboarding (unauthenticated) and mutual TLS."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from fleetplane.client.http import _SyncHttp, decode_response
from fleetplane.core.errors import ApiError

# -- the site-facing API (agent side) ---------------------------------------------------------------

SITE_API = "/site-api/v1"
# The Site's resourceVersion once a sync's report was written (docs/site-manifest.md).
SITE_VERSION_HEADER = "Fleetplane-Site-Version"
KEEPALIVE_SECONDS = 120.0  # below the server's 130 s, so the site ends an idle connection
_ENCODING_DER = 2  # _ssl.ENCODING_DER (for the private Certificate objects of get_unverified_chain)


def spki_sha256(cert_der: bytes) -> str:
    """``sha256:<hex>`` over a certificate's DER SubjectPublicKeyInfo (the ``--ca-hash`` form)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(cert_der)
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fetch_server_chain(server: str, *, timeout: float = 10.0) -> list[bytes]:
    """The certificates (DER) the server presents in its TLS handshake, *unverified*: the
    caller must pin one of them by hash before trusting anything it says."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            sslobj = getattr(tls, "_sslobj", None)
            chain = getattr(sslobj, "get_unverified_chain", None)
            if chain is not None:
                return [c.public_bytes(_ENCODING_DER) for c in chain() or []]
            leaf = tls.getpeercert(binary_form=True)
            return [leaf] if leaf else []
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(0, "ConnectionError", f"cannot reach {server}: {exc}") from exc


class SiteClient(_SyncHttp):
    """Calls of ``/site-api/v1``: unauthenticated onboarding calls when built without a
    certificate, mutual-TLS calls with the site certificate and key otherwise. The server
    is always verified against ``ca_pem`` (the pinned serving CA), never the system store."""

    def __init__(
        self,
        server: str,
        ca_pem: bytes,
        *,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        if cert_file is not None:
            ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file) if key_file else None)
        self.http = httpx.Client(
            base_url=self.server,
            headers={"User-Agent": "fleetplane-agent"},
            verify=ctx,
            timeout=timeout,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        content = orjson.dumps(body) if body is not None else None
        hdrs = dict(headers or {})
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            resp = self.http.request(method, path, content=content, params=params, headers=hdrs, **extra)
        except httpx.ConnectError as exc:
            raise ApiError(0, "ConnectionError", f"cannot reach {self.server}: {exc}") from exc
        except httpx.TransportError as exc:
            raise ApiError(0, "ConnectionError", f"talking to {self.server} failed: {exc}") from exc
        return decode_response(resp)

    # -- onboarding (no client certificate) ----------------------------------------------------

    def nonce(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{SITE_API}/nonce")
        return result

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{SITE_API}/registrations", body=body)
        return result

    def poll(self, name: str, poll_token: str, wait_seconds: int = 30) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET",
            f"{SITE_API}/registrations/{name}",
            params={"waitSeconds": wait_seconds},
            headers={"Authorization": f"Bearer {poll_token}"},
            timeout=wait_seconds + 30.0,
        )
        return result

    def crl(self, tenant: str) -> bytes:
        try:
            resp = self.http.get(f"{SITE_API}/crl/{tenant}")
        except httpx.TransportError as exc:
            raise ApiError(0, "ConnectionError", f"cannot reach {self.server}: {exc}") from exc
        if resp.status_code >= 400:
            decode_response(resp)
        return resp.content

    # -- the site itself (mutual TLS) -----------------------------------------------------------

    def site(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{SITE_API}/site")
        return result

    def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"{SITE_API}/site/status", body={"status": status})
        return result

    def renew(self, csr_pem: bytes) -> bytes:
        result = self.request("POST", f"{SITE_API}/site/certificate", body={"csr": csr_pem.decode()})
        return str(result["certificate"]).encode()


def site_ssl_context(
    ca_pem: bytes,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client TLS context that trusts only ``ca_pem`` and, when given, presents the site
    certificate. One per site: OpenSSL binds the client certificate to the context, so sites
    cannot share one; it costs about 23 KiB (measured), the rest of a site is smaller."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem.decode())
    if cert_file is not None:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file) if key_file else None)
    return ctx


@dataclass(frozen=True, slots=True)
class Synced:
    """The answer to a report and poll: the newer manifest (``None``: none came in the wait),
    and the Site's resourceVersion once the report was written (``None`` from a server that
    takes no delta reports)."""

    manifest: dict[str, Any] | None
    site_version: str | None


@dataclass(frozen=True)
class SiteResponse:
    """A site call's answer, read whole: status, headers and body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


class AsyncSiteClient:
    """The asyncio twin of :class:`SiteClient` (same calls, same errors) plus the manifest
    long-poll. Many of them share one event loop (the simulator runs thousands); each holds
    one keep-alive connection, used by one call at a time, so a site costs one TLS
    connection, not two (the agent core heartbeats between long-polls).

    On aiohttp, not httpx like the operator's clients: every site makes these calls for
    every change, and aiohttp's C parser costs a sixth of httpx's CPU per long-poll and
    status report (190 against 1,110 µs a pair, measured on loopback TLS), which is most of
    what a simulated site costs. aiohttp is already pinned (the kubernetes client needs it)."""

    def __init__(
        self,
        server: str,
        ca_pem: bytes | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 1,
    ) -> None:
        self.server = server.rstrip("/")
        if ssl_context is None:
            if ca_pem is None:
                raise ValueError("give ca_pem or ssl_context")
            ssl_context = site_ssl_context(ca_pem, cert_file, key_file)
        self._ssl = ssl_context
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._ssl,
                    limit=self._max_connections,
                    keepalive_timeout=KEEPALIVE_SECONDS,
                ),
                headers={"User-Agent": "fleetplane-agent"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _limits(self, timeout: float | None) -> aiohttp.ClientTimeout:
        # Per phase: connecting, and each wait for bytes (a long-poll passes its own). No cap
        # on the whole call: a large artifact download may take longer than any one wait.
        t = self._timeout if timeout is None else timeout
        return aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncSiteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> SiteResponse:
        """One call; transport failures become ``ApiError(0, "ConnectionError")``."""
        content = orjson.dumps(body) if body is not None else None
        hdrs = dict(headers or {})
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        query = {k: str(v) for k, v in params.items()} if params else None
        # A call that meets a kept-alive connection the server just closed (its idle timeout
        # raced our call) is sent again once by aiohttp itself, if it is idempotent (GET, PUT).
        try:
            async with self._http().request(
                method,
                self.server + path,
                data=content,
                params=query,
                headers=hdrs,
                timeout=self._limits(timeout),
            ) as resp:
                return SiteResponse(resp.status, resp.headers, await resp.read())
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(0, "ConnectionError", f"cannot reach {self.server}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, "ConnectionError", f"talking to {self.server} failed: {exc!r}") from exc
        except ssl.SSLError as exc:
            raise ApiError(0, "ConnectionError", f"TLS with {self.server} failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A call whose body the caller reads as it arrives (``resp.content``); transport
        failures are aiohttp's (``aiohttp.ClientError``, ``TimeoutError``)."""
        async with self._http().request(
            method, self.server + path, headers=headers, timeout=self._limits(timeout)
        ) as resp:
            yield resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        resp = await self.send(method, path, body=body, params=params, headers=headers, timeout=timeout)
        return decode_response(resp)

    # -- onboarding (no client certificate) ----------------------------------------------------

    async def nonce(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{SITE_API}/nonce")
        return result

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"{SITE_API}/registrations", body=body)
        return result

    async def poll(self, name: str, poll_token: str, wait_seconds: int = 30) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "GET",
            f"{SITE_API}/registrations/{name}",
            params={"waitSeconds": wait_seconds},
            headers={"Authorization": f"Bearer {poll_token}"},
            timeout=wait_seconds + 30.0,
        )
        return result

    # -- the site itself (mutual TLS) -----------------------------------------------------------

    async def site(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{SITE_API}/site")
        return result

    async def put_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """Report the site's status. The agent has no use for the stored Site, so it asks for
        none (RFC 7240 ``Prefer: return=minimal``): the server answers 204 and neither side
        renders or parses the object. ``{}`` then; the Site from a server that ignores it."""
        resp = await self.send(
            "PUT",
            f"{SITE_API}/site/status",
            body={"status": status},
            headers={"Prefer": "return=minimal"},
        )
        if resp.status_code == 204:
            return {}
        result: dict[str, Any] = decode_response(resp)
        return result

    async def put_kubeconfig(self, namespace: str, kubeconfig: str) -> dict[str, Any]:
        """Hand the application cluster's kubeconfig over; stored sealed as a Secret."""
        body = {"namespace": namespace, "kubeconfig": kubeconfig}
        result: dict[str, Any] = await self.request("PUT", f"{SITE_API}/site/kubeconfig", body=body)
        return result

    async def renew(self, csr_pem: bytes) -> bytes:
        result = await self.request("POST", f"{SITE_API}/site/certificate", body={"csr": csr_pem.decode()})
        return str(result["certificate"]).encode()

    async def report_and_poll(
        self,
        status: dict[str, Any],
        after: int,
        wait_seconds: float,
        *,
        keep: Sequence[str] = (),
        base: str | None = None,
    ) -> Synced:
        """``PUT /site-api/v1/sync``: report the status, then long-poll as :meth:`manifest` does,
        in one call (one request per change instead of two). A server without it answers 404
        (``ApiError``), and then the two calls do the same. ``keep``/``base``: a delta report
        (the fields left out of ``status`` as unchanged since the report that left the Site at
        resourceVersion ``base``); a 409 says to report in full."""
        body: dict[str, Any] = {"status": status}
        if keep:
            body |= {"keep": list(keep), "base": base}
        manifest, headers = await self._long_poll("PUT", "sync", after, wait_seconds, body=body)
        return Synced(manifest, headers.get(SITE_VERSION_HEADER))

    async def manifest(self, after: int, wait_seconds: float) -> dict[str, Any] | None:
        """The site's ``SiteManifest`` once its generation is above ``after``; ``None`` when
        ``wait_seconds`` passed without one (204)."""
        return (await self._long_poll("GET", "manifest", after, wait_seconds))[0]

    async def _long_poll(
        self, method: str, call: str, after: int, wait_seconds: float, *, body: Any = None
    ) -> tuple[dict[str, Any] | None, Mapping[str, str]]:
        resp = await self.send(
            method,
            f"{SITE_API}/{call}",
            body=body,
            params={"after": after, "waitSeconds": wait_seconds},
            timeout=wait_seconds + 30.0,
        )
        if resp.status_code == 204:
            return None, resp.headers
        result: dict[str, Any] = decode_response(resp)
        return result, resp.headers
