"""Add every kind's schema to the served OpenAPI document.

The routes are generic (one handler for all kinds), so FastAPI cannot infer the
bodies; we publish each kind's envelope with its Pydantic spec and status schemas.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fleetplane.core.registry import API_VERSION, KindRegistry


def kind_schemas(app: FastAPI, registry: KindRegistry) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for info in registry.all():
            props: dict[str, Any] = {
                "apiVersion": {"type": "string", "enum": [API_VERSION]},
                "kind": {"type": "string", "enum": [info.kind]},
                "metadata": {"type": "object"},
            }
            for part, model in (("spec", info.spec_model), ("status", info.status_model)):
                if model is None:
                    continue
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components[f"{info.kind}{part.title()}"] = schema
                props[part] = {"$ref": f"#/components/schemas/{info.kind}{part.title()}"}
            components[info.kind] = {
                "type": "object",
                "required": ["metadata"],
                "properties": props,
                "x-fleetplane-scope": info.scope.value,
                "x-fleetplane-plural": info.plural,
            }
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
