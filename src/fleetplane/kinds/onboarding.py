"""Onboarding kinds: registration tokens, trusted manufacturers, registrations and the
tenant's certificate authority. The protocol is ``docs/onboarding-protocol.md``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fleetplane.core.names import validate_label_key, validate_label_value
from fleetplane.core.registry import Column, KindInfo, Scope
from fleetplane.kinds.common import Schema
from fleetplane.kinds.site import Facts


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for k, v in value.items():
        problems = validate_label_key(k) + validate_label_value(v)
        if problems:
            raise ValueError(f"label {k}={v}: {'; '.join(problems)}")
    return value


class LabelsField(Schema):
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class RegistrationTokenSpec(LabelsField):
    expiresAt: str | None = Field(default=None, pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    maxUses: int | None = Field(default=None, ge=1)
    autoAccept: bool = False
    description: str | None = Field(default=None, max_length=1024)


class RegistrationTokenStatus(Schema):
    uses: int = Field(default=0, ge=0)
    keyHash: str | None = None
    lastUsed: str | None = None


class TrustedManufacturerSpec(LabelsField):
    caBundle: str = Field(min_length=1)
    autoAccept: bool = False
    description: str | None = Field(default=None, max_length=1024)

    @field_validator("caBundle")
    @classmethod
    def _pem(cls, value: str) -> str:
        from cryptography import x509

        try:
            certs = x509.load_pem_x509_certificates(value.encode())
        except ValueError as exc:
            raise ValueError(f"caBundle is not PEM certificates: {exc}") from None
        if not certs:
            raise ValueError("caBundle holds no certificate")
        return value


class RegistrationSpec(Schema):
    requestedName: str | None = Field(default=None, max_length=63)
    requestedLabels: dict[str, str] = Field(default_factory=dict)
    facts: Facts = Field(default_factory=Facts)
    method: Literal["token", "device"]
    tokenName: str | None = None
    manufacturer: str | None = None
    deviceSubject: str | None = None
    csr: str = Field(min_length=1, max_length=16384)

    @field_validator("requestedLabels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


RegistrationPhase = Literal["Pending", "Accepted", "Rejected", "Expired"]


class RegistrationStatus(Schema):
    phase: RegistrationPhase = "Pending"
    reason: str | None = Field(default=None, max_length=4096)
    site: str | None = None
    certificate: str | None = None
    caBundle: str | None = None
    decidedAt: str | None = None
    autoAccept: bool = False
    pollHash: str | None = None


class CertificateAuthoritySpec(Schema):
    rootCertificate: str
    issuingCertificate: str


class CertificateAuthorityStatus(Schema):
    # Sealed private keys and the issuing state (revocations, CRL number): hidden.
    sealedIssuingKey: str | None = None
    sealedRootKey: str | None = None
    state: str | None = None
    crl: str | None = None
    crlNextUpdate: str | None = None


REGISTRATION_TOKEN = KindInfo(
    kind="RegistrationToken",
    plural="registrationtokens",
    short_names=("rt", "token", "tokens"),
    spec_model=RegistrationTokenSpec,
    status_model=RegistrationTokenStatus,
    scope=Scope.TENANT,
    hidden_paths=("status.keyHash",),
    columns=(
        Column("NAME", "metadata.name"),
        Column("USES", "status.uses"),
        Column("MAX USES", "spec.maxUses"),
        Column("EXPIRES", "spec.expiresAt"),
        Column("AUTO ACCEPT", "spec.autoAccept"),
        Column("LABELS", "spec.labels"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

TRUSTED_MANUFACTURER = KindInfo(
    kind="TrustedManufacturer",
    plural="trustedmanufacturers",
    short_names=("tm", "manufacturer", "manufacturers"),
    spec_model=TrustedManufacturerSpec,
    scope=Scope.TENANT,
    columns=(
        Column("NAME", "metadata.name"),
        Column("AUTO ACCEPT", "spec.autoAccept"),
        Column("LABELS", "spec.labels"),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

REGISTRATION = KindInfo(
    kind="Registration",
    plural="registrations",
    short_names=("reg",),
    spec_model=RegistrationSpec,
    status_model=RegistrationStatus,
    scope=Scope.TENANT,
    hidden_paths=("status.pollHash",),
    api_write_verbs=frozenset({"delete"}),
    columns=(
        Column("NAME", "metadata.name"),
        Column("PHASE", "status.phase"),
        Column("REQUESTED NAME", "spec.requestedName"),
        Column("HOSTNAME", "spec.facts.hostname"),
        Column("METHOD", "spec.method"),
        # What an operator decides on (SCENARIOS step 4): the box, where it is, what it asks.
        Column("MODEL", "spec.facts.hardware.model"),
        Column("LOCATION", "spec.facts.coordinates"),
        Column("LABELS", "spec.requestedLabels"),
        Column("CPUS", "spec.facts.hardware.cpuCores", wide_only=True),
        Column("MEMORY MIB", "spec.facts.hardware.memoryMiB", wide_only=True),
        Column("SERIAL", "spec.facts.hardware.serial", wide_only=True),
        Column("SITE", "status.site", wide_only=True),
        Column("REASON", "status.reason", wide_only=True),
        Column("AGE", "metadata.creationTimestamp"),
    ),
)

CA_NAME = "tenant"

CERTIFICATE_AUTHORITY = KindInfo(
    kind="CertificateAuthority",
    plural="certificateauthorities",
    short_names=("ca",),
    spec_model=CertificateAuthoritySpec,
    status_model=CertificateAuthorityStatus,
    scope=Scope.TENANT,
    hidden_paths=("status.sealedIssuingKey", "status.sealedRootKey", "status.state"),
    api_write_verbs=frozenset(),
    columns=(Column("NAME", "metadata.name"), Column("AGE", "metadata.creationTimestamp")),
)
