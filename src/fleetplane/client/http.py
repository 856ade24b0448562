"""Operator-side HTTP calls: the native resource API with an API key (CLI, tests).

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
from typing import Any, Protocol, Self

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


class Answer(Protocol):
    """What :func:`decode_response` reads: an ``httpx.Response`` or a ``SiteResponse``."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def decode_response(resp: Answer) -> Any:
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
