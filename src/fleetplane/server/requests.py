"""Request plumbing shared by the API routers: body decoding, list parameters, responses."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from fastapi import Request
from fastapi.responses import Response

from fleetplane.core.errors import Cause, bad_request
from fleetplane.core.fields import parse_field_selector
from fleetplane.core.selectors import Selector, SelectorError, parse_selector
from fleetplane.core.store.base import FieldFilter


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise bad_request("the request body is empty", [Cause("body", "required", "FieldValueRequired")])
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(raw)
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise bad_request(
            f"the request body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: {exc}"
        ) from exc


async def read_object(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be an object", [Cause("body", "must be an object")])
    return body


def label_selector(request: Request) -> Selector | None:
    text = request.query_params.get("labelSelector")
    if not text:
        return None
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise bad_request(f"unable to parse requirement: {exc}", [Cause("labelSelector", str(exc))]) from exc


def field_selector(
    request: Request, allowed: set[str] | None = None, aliases: dict[str, str] | None = None
) -> FieldFilter | None:
    return parse_field_selector(request.query_params.get("fieldSelector", ""), allowed, aliases)


def int_param(request: Request, name: str, default: int, minimum: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise bad_request(
            f"{name}: must be an integer, got {raw!r}", [Cause(name, "must be an integer")]
        ) from exc
    if value < minimum:
        raise bad_request(f"{name}: must be at least {minimum}", [Cause(name, f"must be at least {minimum}")])
    return value


def bool_param(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def revision_param(request: Request) -> int | None:
    """``resourceVersion`` for watches: absent or "0" means "start from the current state"."""
    raw = request.query_params.get("resourceVersion", "")
    if raw in ("", "0"):
        return None
    if not raw.isdigit():
        raise bad_request(
            f"resourceVersion: invalid value {raw!r}", [Cause("resourceVersion", "must be a revision number")]
        )
    return int(raw)
