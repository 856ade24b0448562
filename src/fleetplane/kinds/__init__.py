"""The kinds fleetplane knows: each is a schema plus validation, registered once."""

from fleetplane.core.registry import KindRegistry
from fleetplane.kinds.access import ACCESS_KEY, TENANT
from fleetplane.kinds.site import SITE
from fleetplane.kinds.virtualsite import VIRTUAL_SITE


def build_registry() -> KindRegistry:
    registry = KindRegistry()
    for info in (SITE, VIRTUAL_SITE, TENANT, ACCESS_KEY):
        registry.register(info)
    return registry


REGISTRY = build_registry()

__all__ = ["ACCESS_KEY", "REGISTRY", "SITE", "TENANT", "VIRTUAL_SITE", "build_registry"]
