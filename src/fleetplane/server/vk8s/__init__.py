"""vK8s: a Kubernetes-compatible API per namespace, served at
``/api/vK8s/namespaces/<namespace>/<vk8s-name>/`` (see ``docs/vk8s.md``)."""

from fleetplane.server.vk8s.routes import router

__all__ = ["router"]
