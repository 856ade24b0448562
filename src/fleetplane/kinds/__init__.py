"""The kinds fleetplane knows: each is a schema plus validation, registered once."""

from fleetplane.core.registry import KindRegistry
from fleetplane.kinds.access import ACCESS_KEY, TENANT
from fleetplane.kinds.alerts import ALERT, ALERT_KINDS, ALERT_RECEIVER, ALERT_RULE
from fleetplane.kinds.artifact import ARTIFACT
from fleetplane.kinds.event import EVENT
from fleetplane.kinds.history import INTENT_REVISION
from fleetplane.kinds.infra import ALARM, INFRA_KINDS, INFRA_PIPELINE, NODE, SITE_INVENTORY
from fleetplane.kinds.intents import INTENT_KINDS, RESOURCE_RESERVATION
from fleetplane.kinds.manifest import SITE_MANIFEST
from fleetplane.kinds.onboarding import (
    CERTIFICATE_AUTHORITY,
    REGISTRATION,
    REGISTRATION_TOKEN,
    TRUSTED_MANUFACTURER,
)
from fleetplane.kinds.os_upgrade import OS_UPGRADE, OS_UPGRADE_KINDS, OS_VERSION
from fleetplane.kinds.policy import NETWORK_POLICY, POLICY_KINDS, SERVICE_POLICY
from fleetplane.kinds.rollout import ROLLOUT
from fleetplane.kinds.secret import SECRET
from fleetplane.kinds.site import SITE
from fleetplane.kinds.site_metrics import SITE_METRICS
from fleetplane.kinds.virtualsite import VIRTUAL_SITE
from fleetplane.kinds.vk8s import VK8S


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
        SITE_MANIFEST,
        *INTENT_KINDS,
        *POLICY_KINDS,
        *OS_UPGRADE_KINDS,
        ROLLOUT,
        INTENT_REVISION,
        VK8S,
        *ALERT_KINDS,
        SITE_METRICS,
        ARTIFACT,
        *INFRA_KINDS,
        EVENT,
    ):
        registry.register(info)
    return registry


REGISTRY = build_registry()

__all__ = [
    "ACCESS_KEY",
    "ALARM",
    "ALERT",
    "ALERT_KINDS",
    "ALERT_RECEIVER",
    "ALERT_RULE",
    "ARTIFACT",
    "CERTIFICATE_AUTHORITY",
    "EVENT",
    "INFRA_KINDS",
    "INFRA_PIPELINE",
    "INTENT_KINDS",
    "INTENT_REVISION",
    "NETWORK_POLICY",
    "NODE",
    "OS_UPGRADE",
    "OS_UPGRADE_KINDS",
    "OS_VERSION",
    "POLICY_KINDS",
    "REGISTRATION",
    "REGISTRATION_TOKEN",
    "REGISTRY",
    "RESOURCE_RESERVATION",
    "ROLLOUT",
    "SECRET",
    "SERVICE_POLICY",
    "SITE",
    "SITE_INVENTORY",
    "SITE_MANIFEST",
    "SITE_METRICS",
    "TENANT",
    "TRUSTED_MANUFACTURER",
    "VIRTUAL_SITE",
    "VK8S",
    "build_registry",
]
