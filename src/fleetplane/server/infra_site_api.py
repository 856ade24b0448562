"""Site-facing infrastructure calls (mutual TLS): a site hands over the kubeconfig of the
application cluster its pipeline brought up.

``PUT /site-api/v1/site/kubeconfig`` with ``{"namespace": ..., "kubeconfig": ...}`` stores it
as the ``Secret`` ``<site>-kubeconfig`` (type ``fleetplane.io/kubeconfig``) in that namespace,
sealed at rest like every Secret (``server/sealing.py``): it never passes through
``Site.status``. Least privilege: the site names only itself (the Secret is named after the
certificate's site) and only the namespace of the ``InfraPipeline`` its current manifest
carries.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request

from fleetplane.core.errors import Cause, bad_request, forbidden
from fleetplane.core.objects import Obj
from fleetplane.kinds import SECRET, SITE_MANIFEST
from fleetplane.server.context import ServerContext
from fleetplane.server.requests import JsonResponse, read_object
from fleetplane.server.sealing import seal
from fleetplane.server.site_api import PREFIX, authenticated_site

router = APIRouter(prefix=PREFIX)
MAX_KUBECONFIG = 1 << 20
KUBECONFIG_TYPE = "fleetplane.io/kubeconfig"


def _write(ctx: ServerContext, tenant: str, site: str, namespace: str, kubeconfig: str) -> Obj:
    manifest = ctx.store.get_or_none(tenant, SITE_MANIFEST.kind, "", site) or {}
    source = str(((manifest.get("spec") or {}).get("sections") or {}).get("infra", {}).get("source") or "")
    if source.partition("/")[0] != namespace:
        raise forbidden(
            f'Forbidden: site "{site}" runs no InfraPipeline of namespace "{namespace}"; '
            "its kubeconfig goes to the namespace of the pipeline in its manifest"
        )
    name = f"{site}-kubeconfig"
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if len(site) <= 63:
        meta["labels"] = {"fleetplane.io/site": site}
    data = {"kubeconfig": base64.b64encode(kubeconfig.encode()).decode()}
    obj = SECRET.normalize({"metadata": meta, "spec": {"type": KUBECONFIG_TYPE, "data": data}})
    current = ctx.store.get_or_none(tenant, SECRET.kind, namespace, name)
    if current is None:
        return ctx.store.create(tenant, seal(ctx, tenant, SECRET, obj))
    body = {**current, "spec": obj["spec"]}
    return ctx.store.update(tenant, seal(ctx, tenant, SECRET, body))


@router.put("/site/kubeconfig")
async def put_kubeconfig(request: Request) -> JsonResponse:
    ctx, tenant, site = await authenticated_site(request)
    body = await read_object(request)
    namespace, kubeconfig = body.get("namespace"), body.get("kubeconfig")
    if not isinstance(namespace, str) or not namespace:
        raise bad_request("namespace must be a string", [Cause("namespace", "must be a non-empty string")])
    if not isinstance(kubeconfig, str) or not 0 < len(kubeconfig) <= MAX_KUBECONFIG:
        raise bad_request(
            "kubeconfig must be a string", [Cause("kubeconfig", f"must be 1 to {MAX_KUBECONFIG} characters")]
        )
    name = site["metadata"]["name"]
    stored = await asyncio.to_thread(_write, ctx, tenant, name, namespace, kubeconfig)
    meta = stored["metadata"]
    return JsonResponse({"name": meta["name"], "namespace": meta["namespace"]})
