"""Zero-touch onboarding, agent side (see docs/onboarding-protocol.md).

Call home with a token or a device proof, wait for an operator (long-poll), save the
issued identity in the data directory, and renew the certificate later over mTLS.

The data directory (0700) holds::

    site.key        the site's private key (0600; generated here, never sent)
    site.crt        the site certificate the tenant authority issued
    ca-bundle.pem   the tenant's root + issuing CA
    server-ca.pem   the pinned serving CA of the server
    identity.json   tenant, site, server URL, registration name
    pending.json    registration name + poll token while waiting (0600; removed once decided)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

import fleetplane
from fleetplane.agent.identity import (
    DeviceKey,
    FileSiteKeyStore,
    KeyStoreError,
    SiteKeyStore,
    device_proof,
    ensure_private_dir,
    read_private,
    write_private,
    write_public,
)
from fleetplane.client import SiteClient, fetch_server_chain, spki_sha256
from fleetplane.core.errors import ApiError

log = logging.getLogger("fleetplane.agent")
T = TypeVar("T")

EXIT_REFUSED = 2  # registration rejected or expired
EXIT_REVOKED = 3  # the site's identity is no longer accepted
EXIT_FAILED = 1  # anything else that stops the agent (bad configuration, unusable files)
POLL_SECONDS = 30


class AgentError(Exception):
    """An expected failure that stops the agent: one line for the operator, and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class AgentConfig:
    server: str
    data_dir: Path
    ca_file: Path | None = None
    ca_hash: str | None = None
    token: str | None = None
    tenant: str | None = None
    device: DeviceKey | None = None
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    latitude: float | None = None
    longitude: float | None = None
    heartbeat: float = 10.0
    once: bool = False


# -- backoff ----------------------------------------------------------------------------------------


class Backoff:
    """Jittered exponential backoff ("full jitter"), capped at ``cap`` seconds."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def retrying(what: str, call: Callable[[], T], stop: threading.Event, backoff: Backoff | None = None) -> T:
    """Run ``call`` until it does not fail with a connection error (or ``stop`` is set)."""
    backoff = backoff or Backoff()
    warned = False
    while True:
        try:
            result = call()
        except ApiError as exc:
            if exc.code != 0 and exc.code not in (502, 503, 504):
                raise
            delay = backoff.next_delay()
            if not warned:
                log.warning("%s: %s; retrying (backoff up to %.0f s)", what, exc.message, backoff.cap)
                warned = True
            if stop.wait(delay):
                raise AgentError("stopped", 0) from None
            continue
        if warned:
            log.info("%s: server reachable again", what)
        return result


# -- facts ----------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def os_version() -> str:
    fields: dict[str, str] = {}
    for line in _read("/etc/os-release").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip().strip('"')
    return fields.get("PRETTY_NAME") or f"{platform.system()} {platform.release()}"


def memory_mib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def collect_facts(latitude: float | None = None, longitude: float | None = None) -> dict[str, Any]:
    hardware: dict[str, Any] = {"cpuCores": os.cpu_count() or 1, "memoryMiB": memory_mib()}
    model = " ".join(
        p for p in (_read("/sys/class/dmi/id/sys_vendor"), _read("/sys/class/dmi/id/product_name")) if p
    )
    serial = _read("/sys/class/dmi/id/product_serial")  # root-only on most systems
    if model:
        hardware["model"] = model
    if serial:
        hardware["serial"] = serial
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "hardware": hardware,
        "agentVersion": fleetplane.__version__,
        "osVersion": os_version(),
    }
    if latitude is not None and longitude is not None:
        facts["coordinates"] = {"latitude": latitude, "longitude": longitude}
    return facts


def csr_name(requested: str | None) -> str:
    """A DNS label for the CSR's CN (the authority sets the real subject itself)."""
    base = (requested or socket.gethostname() or "site").lower()
    label = re.sub(r"[^a-z0-9-]+", "-", base.split(".")[0]).strip("-")[:63].strip("-")
    return label or "site"


# -- trusting the server ----------------------------------------------------------------------------


def pin_server_ca(server: str, ca_file: Path | None, ca_hash: str | None) -> bytes:
    """The serving CA to trust: the file given, or the certificate of the server's TLS chain
    whose SPKI hash is ``ca_hash`` (kubeadm-style discovery)."""
    if ca_file is not None:
        try:
            data = ca_file.read_bytes()
            x509.load_pem_x509_certificates(data)
        except OSError as exc:
            raise AgentError(f"cannot read --ca-file {ca_file}: {exc.strerror}") from None
        except ValueError:
            raise AgentError(f"--ca-file {ca_file} holds no PEM certificate") from None
        return data
    if not ca_hash:
        raise AgentError("give the server's CA with --ca-file or --ca-hash sha256:HEX")
    wanted = ca_hash.strip().lower()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", wanted):
        raise AgentError(f"--ca-hash must look like sha256:<64 hex digits>, got {ca_hash!r}")
    chain = retrying(f"fetching the TLS chain of {server}", lambda: fetch_server_chain(server), _NEVER)
    for der in chain:
        if spki_sha256(der) == wanted:
            cert = x509.load_der_x509_certificate(der)
            from cryptography.hazmat.primitives import serialization

            return cert.public_bytes(serialization.Encoding.PEM)
    raise AgentError(
        f"none of the {len(chain)} certificate(s) {server} presented matches --ca-hash {ca_hash} "
        "(wrong server, or the server does not send its CA in its TLS chain: use --ca-file)"
    )


_NEVER = threading.Event()


# -- the saved identity -----------------------------------------------------------------------------


@dataclass
class SavedIdentity:
    data_dir: Path
    tenant: str
    site: str
    server: str
    registration: str = ""

    @property
    def cert_file(self) -> Path:
        return self.data_dir / "site.crt"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "site.key"

    @property
    def ca_bundle_file(self) -> Path:
        return self.data_dir / "ca-bundle.pem"

    @property
    def server_ca_file(self) -> Path:
        return self.data_dir / "server-ca.pem"

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def client(self, timeout: float = 30.0) -> SiteClient:
        """A mutual-TLS client authenticated by this identity."""
        read_private(self.key_file, "site key")
        return SiteClient(
            self.server,
            self.server_ca_file.read_bytes(),
            cert_file=self.cert_file,
            key_file=self.key_file,
            timeout=timeout,
        )

    @classmethod
    def load(cls, data_dir: Path) -> SavedIdentity | None:
        path = data_dir / "identity.json"
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            ident = cls(data_dir, doc["tenant"], doc["site"], doc["server"], doc.get("registration", ""))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AgentError(f"{path} is unreadable ({exc}); remove {data_dir} to onboard again") from None
        for f in (ident.cert_file, ident.key_file, ident.ca_bundle_file, ident.server_ca_file):
            if not f.exists():
                raise AgentError(f"{f} is missing; remove {data_dir} to onboard again")
        return ident

    def save(self, certificate: bytes, ca_bundle: bytes, server_ca: bytes) -> None:
        write_public(self.cert_file, certificate)
        write_public(self.ca_bundle_file, ca_bundle)
        write_public(self.server_ca_file, server_ca)
        doc = {
            "tenant": self.tenant,
            "site": self.site,
            "server": self.server,
            "registration": self.registration,
            "serverCa": self.server_ca_file.name,
        }
        write_public(self.data_dir / "identity.json", json.dumps(doc, indent=2).encode() + b"\n")


def tenant_and_site(cert_pem_data: bytes) -> tuple[str, str]:
    from fleetplane.identity.pki import parse_id, spiffe_uris

    cert = x509.load_pem_x509_certificate(cert_pem_data)
    for uri in spiffe_uris(cert):
        tenant, site, workload = parse_id(uri)
        if workload is None:
            return tenant, site
    raise AgentError("the issued certificate names no fleetplane site")


# -- onboarding -------------------------------------------------------------------------------------


def _pending_path(data_dir: Path) -> Path:
    return data_dir / "pending.json"


def _register(
    config: AgentConfig, api: SiteClient, keys: SiteKeyStore, stop: threading.Event
) -> dict[str, Any]:
    csr = keys.csr(csr_name(config.name))
    body: dict[str, Any] = {
        "csr": csr.decode(),
        "facts": collect_facts(config.latitude, config.longitude),
    }
    if config.name:
        body["requestedName"] = config.name
    if config.labels:
        body["requestedLabels"] = dict(config.labels)
    if config.token:
        body["token"] = config.token
    if config.device is not None and config.tenant:
        body["tenant"] = config.tenant
    if not config.token and config.device is None:
        raise AgentError(
            "no way to register: give --token / --token-file / FLEETPLANE_TOKEN, "
            "or --tenant with --device-cert and --device-key"
        )

    def attempt() -> dict[str, Any]:
        if config.device is not None:
            nonce = api.nonce()["nonce"]
            try:
                body["device"] = device_proof(config.device, str(nonce), csr)
            except KeyStoreError as exc:
                raise AgentError(f"device identity: {exc}") from None
        return api.register(body)

    try:
        answer = retrying("registering", attempt, stop)
    except ApiError as exc:
        raise AgentError(f"registration refused ({exc.reason}): {exc.message}", EXIT_REFUSED) from None
    return answer


def onboard(config: AgentConfig, stop: threading.Event | None = None) -> SavedIdentity:
    """Return the saved identity, registering and waiting for acceptance first if needed."""
    stop = stop or threading.Event()
    try:
        ensure_private_dir(config.data_dir)
    except (OSError, KeyStoreError) as exc:
        raise AgentError(f"data dir {config.data_dir}: {exc}") from None
    saved = SavedIdentity.load(config.data_dir)
    if saved is not None:
        return saved
    server = config.server.rstrip("/")
    server_ca = pin_server_ca(server, config.ca_file, config.ca_hash)
    keys = FileSiteKeyStore(config.data_dir)
    try:
        keys.ensure_key()
    except KeyStoreError as exc:
        raise AgentError(str(exc)) from None
    pending_file = _pending_path(config.data_dir)
    with SiteClient(server, server_ca, timeout=POLL_SECONDS + 30) as api:
        if pending_file.exists():
            try:
                pending = json.loads(read_private(pending_file, "pending registration"))
                name, poll_token = str(pending["name"]), str(pending["pollToken"])
            except (KeyStoreError, ValueError, KeyError) as exc:
                raise AgentError(f"{pending_file}: {exc}") from None
            log.info("resuming: registration %s is still waiting for a decision", name)
            decided = _wait(api, name, poll_token, stop)
        else:
            answer = _register(config, api, keys, stop)
            name, poll_token = str(answer["name"]), str(answer["pollToken"])
            log.info("registered as %s", name)
            if answer.get("phase") == "Accepted" and answer.get("certificate"):
                decided = answer  # auto-accepted: the certificate came with the answer
            else:
                write_private(pending_file, json.dumps({"name": name, "pollToken": poll_token}).encode())
                decided = _wait(api, name, poll_token, stop)
    certificate = str(decided["certificate"]).encode()
    ca_bundle = str(decided.get("caBundle") or "").encode()
    tenant, site = tenant_and_site(certificate)
    ident = SavedIdentity(config.data_dir, tenant, str(decided.get("site") or site), server, name)
    ident.save(certificate, ca_bundle, server_ca)
    pending_file.unlink(missing_ok=True)
    log.info("accepted: site %s of tenant %s", ident.site, tenant)
    return ident


def _wait(api: SiteClient, name: str, poll_token: str, stop: threading.Event) -> dict[str, Any]:
    announced = False
    while True:
        try:
            answer = retrying(
                f"waiting for registration {name}", lambda: api.poll(name, poll_token, POLL_SECONDS), stop
            )
        except ApiError as exc:
            if exc.code in (401, 404):
                raise AgentError(
                    f"registration {name} is gone or no longer ours ({exc.reason}: {exc.message}); "
                    "remove pending.json from the data dir to register again",
                    EXIT_REFUSED,
                ) from None
            raise AgentError(f"waiting for registration {name} failed: {exc.message}") from None
        phase = answer.get("phase")
        if phase == "Accepted" and answer.get("certificate"):
            return answer
        if phase == "Rejected":
            reason = answer.get("reason") or "no reason given"
            raise AgentError(f"registration {name} was rejected: {reason}", EXIT_REFUSED)
        if phase == "Expired":
            reason = answer.get("reason") or "nobody accepted it in time"
            raise AgentError(f"registration {name} expired: {reason}", EXIT_REFUSED)
        if not announced:
            log.info("waiting for an operator to accept registration %s", name)
            announced = True
        if stop.is_set():
            raise AgentError("stopped", 0)


# -- renewal ----------------------------------------------------------------------------------------


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """True when less than a third of the certificate's lifetime is left."""
    now = now or dt.datetime.now(dt.UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime / 3


def renew(ident: SavedIdentity) -> x509.Certificate:
    """Get a certificate for a fresh key over mTLS (authenticated by the current one), then
    switch both files. The old key stays in use until the new certificate is saved."""
    from fleetplane.identity.pki import make_csr

    keys = FileSiteKeyStore(ident.data_dir)
    new_key = keys.stage_new_key()
    csr = make_csr(new_key, ident.site)
    with ident.client() as api:
        certificate = api.renew(csr)
    tenant, site = tenant_and_site(certificate)
    if (tenant, site) != (ident.tenant, ident.site):
        raise AgentError(
            f"renewal returned a certificate for {tenant}/{site}, not {ident.tenant}/{ident.site}"
        )
    keys.commit_new_key()
    write_public(ident.cert_file, certificate)
    cert = x509.load_pem_x509_certificate(certificate)
    log.info("renewed the site certificate; valid until %s", cert.not_valid_after_utc.isoformat())
    return cert
