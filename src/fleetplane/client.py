"""The one module that makes HTTP calls to a fleetplane server (CLI, agent, tests).

Errors come back as the server's ``Status`` turned into ``ApiError``, so callers
see the same code, reason, message and field causes that the server sent.
"""

from __future__ import annotations

import builtins
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import yaml

from fleetplane.core.errors import ApiError

API = "/apis/fleetplane.io/v1"


@dataclass(frozen=True)
class Connection:
    server: str
    key: str
    ca_file: str | None = None

    @classmethod
    def from_config(
        cls,
        config_path: Path | None = None,
        *,
        server: str | None = None,
        key: str | None = None,
        key_file: str | None = None,
        ca_file: str | None = None,
    ) -> Connection:
        """Flags beat environment (FLEETPLANE_SERVER, _KEY, _KEY_FILE, _CA_FILE) beat the config file."""
        path = config_path or Path(
            os.environ.get("FLEETPLANE_CONFIG")
            or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            / "fleetplane"
            / "config.yaml"
        )
        cfg: dict[str, Any] = {}
        if path.exists():
            try:
                cfg = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ApiError(0, "ConfigError", f"{path}: not valid YAML{where}: {problem}") from exc
        server = server or os.environ.get("FLEETPLANE_SERVER") or cfg.get("server")
        ca_file = ca_file or os.environ.get("FLEETPLANE_CA_FILE") or cfg.get("caFile")
        key = key or os.environ.get("FLEETPLANE_KEY")
        key_file = key_file or os.environ.get("FLEETPLANE_KEY_FILE") or cfg.get("keyFile")
        if not server:
            raise ApiError(
                0,
                "ConfigError",
                f"no server configured: start one with `fleetplane server` "
                f"or set FLEETPLANE_SERVER (looked in {path})",
            )
        if not key:
            if not key_file:
                raise ApiError(0, "ConfigError", "no access key configured: set FLEETPLANE_KEY or keyFile")
            try:
                key = Path(key_file).read_text().strip()
            except OSError as exc:
                raise ApiError(
                    0, "ConfigError", f"cannot read access key file {key_file}: {exc.strerror}"
                ) from exc
        return cls(server=str(server).rstrip("/"), key=key, ca_file=ca_file)


def resource_path(plural: str, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
    path = f"{API}/namespaces/{namespace}/{plural}" if namespace else f"{API}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def decode_response(resp: httpx.Response) -> Any:
    """The body of a successful answer; a ``Status`` answer raised as ``ApiError``."""
    try:
        data = resp.json() if resp.content else None
    except ValueError:
        data = None
    if resp.status_code >= 400:
        if isinstance(data, dict) and data.get("kind") == "Status":
            raise ApiError.from_status(data, resp.status_code)
        raise ApiError(resp.status_code, "Unknown", f"HTTP {resp.status_code}: {resp.text[:200]}")
    return data


class _SyncHttp:
    """What both synchronous clients share: one httpx client, closed on exit."""

    http: httpx.Client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(_SyncHttp):
    def __init__(self, conn: Connection, *, timeout: float = 30.0) -> None:
        self.conn = conn
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=conn.ca_file) if conn.ca_file else True
        )
        self.http = httpx.Client(
            base_url=conn.server,
            headers={"Authorization": f"Bearer {conn.key}", "User-Agent": "fleetplane-client"},
            verify=verify,
            timeout=timeout,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else {}
        try:
            resp = self.http.request(method, path, content=content, params=params, headers=headers)
        except httpx.ConnectError as exc:
            raise ApiError(0, "ConnectionError", f"cannot reach {self.conn.server}: {exc}") from exc
        except httpx.TransportError as exc:
            raise ApiError(0, "ConnectionError", f"talking to {self.conn.server} failed: {exc}") from exc
        return decode_response(resp)

    # -- resources ----------------------------------------------------------------------

    def discover(self) -> list[dict[str, Any]]:
        data = self.request("GET", API)
        return [r for r in data["resources"] if "/" not in r["name"]]

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", resource_path(plural, namespace, name))
        return result

    def list(
        self,
        plural: str,
        namespace: str | None = None,
        *,
        selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if selector:
            params["labelSelector"] = selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit:
            params["limit"] = limit
        if continue_token:
            params["continue"] = continue_token
        result: dict[str, Any] = self.request("GET", resource_path(plural, namespace), params=params)
        return result

    def list_all(
        self, plural: str, namespace: str | None = None, *, selector: str = "", page: int = 500
    ) -> builtins.list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            data = self.list(plural, namespace, selector=selector, limit=page, continue_token=token)
            items += data["items"]
            token = data["metadata"].get("continue", "")
            if not token:
                return items

    def create(self, plural: str, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", resource_path(plural, namespace), body=obj)
        return result

    def replace(
        self, plural: str, obj: dict[str, Any], namespace: str | None = None, *, status: bool = False
    ) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        path = resource_path(plural, namespace, name, "status" if status else "")
        result: dict[str, Any] = self.request("PUT", path, body=obj)
        return result

    def patch(
        self,
        plural: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        kind: str = "merge",
        status: bool = False,
    ) -> dict[str, Any]:
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[kind]
        path = resource_path(plural, namespace, name, "status" if status else "")
        result: dict[str, Any] = self.request("PATCH", path, body=patch, content_type=ctype)
        return result

    def plan(
        self, objects: builtins.list[dict[str, Any]], namespace: str, *, limit: int = 0
    ) -> dict[str, Any]:
        """What writing ``objects`` would do (``POST .../plan``); the server writes nothing."""
        body = {"apiVersion": "v1", "kind": "List", "items": objects}
        params = {"namespace": namespace, "limit": limit}
        result: dict[str, Any] = self.request("POST", f"{API}/plan", body=body, params=params)
        return result

    def delete(
        self, plural: str, name: str, namespace: str | None = None, *, resource_version: str | None = None
    ) -> dict[str, Any]:
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        result: dict[str, Any] = self.request("DELETE", resource_path(plural, namespace, name), body=body)
        return result

    def watch(
        self,
        plural: str,
        namespace: str | None = None,
        *,
        selector: str = "",
        resource_version: str = "",
        timeout: float | None = None,
        field_selector: str = "",
    ) -> Iterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``); an ``ERROR`` event raises its Status."""
        params: dict[str, Any] = {"watch": "true"}
        if selector:
            params["labelSelector"] = selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        if timeout:
            params["timeoutSeconds"] = int(timeout)
        try:
            with self.http.stream(
                "GET", resource_path(plural, namespace), params=params, timeout=httpx.Timeout(10.0, read=None)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    decode_response(resp)
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    if event.get("type") == "ERROR":
                        raise ApiError.from_status(event["object"], int(event["object"].get("code", 500)))
                    yield event
        except httpx.TransportError as exc:
            raise ApiError(0, "ConnectionError", f"watch on {self.conn.server} broke: {exc}") from exc


# -- the site-facing API (agent side) ---------------------------------------------------------------

SITE_API = "/site-api/v1"
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


class AsyncSiteClient:
    """The asyncio twin of :class:`SiteClient` (same calls, same errors) plus the manifest
    long-poll. Many of them share one event loop (the simulator runs thousands); each holds
    one keep-alive connection, used by one call at a time, so a site costs one TLS
    connection, not two (the agent core heartbeats between long-polls)."""

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
        self.http = httpx.AsyncClient(
            base_url=self.server,
            headers={"User-Agent": "fleetplane-agent"},
            verify=ssl_context,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=120.0,
            ),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

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
    ) -> httpx.Response:
        """One call; transport failures become ``ApiError(0, "ConnectionError")``."""
        content = orjson.dumps(body) if body is not None else None
        hdrs = dict(headers or {})
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            try:
                return await self.http.request(
                    method, path, content=content, params=params, headers=hdrs, **extra
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # The server closed a kept-alive connection as we reused it (its idle timeout
                # raced our next call): an idempotent call is safely sent again, once.
                if method not in ("GET", "PUT"):
                    raise
                return await self.http.request(
                    method, path, content=content, params=params, headers=hdrs, **extra
                )
        except httpx.ConnectError as exc:
            raise ApiError(0, "ConnectionError", f"cannot reach {self.server}: {exc}") from exc
        except httpx.TransportError as exc:
            raise ApiError(0, "ConnectionError", f"talking to {self.server} failed: {exc!r}") from exc
        except ssl.SSLError as exc:
            raise ApiError(0, "ConnectionError", f"TLS with {self.server} failed: {exc}") from exc

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
        result: dict[str, Any] = await self.request("PUT", f"{SITE_API}/site/status", body={"status": status})
        return result

    async def renew(self, csr_pem: bytes) -> bytes:
        result = await self.request("POST", f"{SITE_API}/site/certificate", body={"csr": csr_pem.decode()})
        return str(result["certificate"]).encode()

    async def manifest(self, after: int, wait_seconds: int) -> dict[str, Any] | None:
        """The site's ``SiteManifest`` once its generation is above ``after``; ``None`` when
        ``wait_seconds`` passed without one (204)."""
        resp = await self.send(
            "GET",
            f"{SITE_API}/manifest",
            params={"after": after, "waitSeconds": wait_seconds},
            timeout=wait_seconds + 30.0,
        )
        if resp.status_code == 204:
            return None
        result: dict[str, Any] = decode_response(resp)
        return result
