"""The kinds fleetplane knows: each is a schema plus validation, registered once."""

from fleetplane.core.registry import KindRegistry
from fleetplane.kinds.access import ACCESS_KEY, TENANT
from fleetplane.kinds.onboarding import (
    CERTIFICATE_AUTHORITY,
    REGISTRATION,
    REGISTRATION_TOKEN,
    TRUSTED_MANUFACTURER,
)
from fleetplane.kinds.secret import SECRET
from fleetplane.kinds.site import SITE
from fleetplane.kinds.virtualsite import VIRTUAL_SITE


def build_registry() -> KindRegistry:
    registry = KindRegistry()
    for info in (
        SITE,
        VIRTUAL_SITE,
        TENANT,
        ACCESS_KEY,
        REGISTRATION_TOKEN,
        TRUSTED_MANUFACTURER,
        REGISTRATION,
        CERTIFICATE_AUTHORITY,
        SECRET,
    ):
        registry.register(info)
    return registry


REGISTRY = build_registry()

__all__ = [
    "ACCESS_KEY",
    "CERTIFICATE_AUTHORITY",
    "REGISTRATION",
    "REGISTRATION_TOKEN",
    "REGISTRY",
    "SECRET",
    "SITE",
    "TENANT",
    "TRUSTED_MANUFACTURER",
    "VIRTUAL_SITE",
    "build_registry",
]
