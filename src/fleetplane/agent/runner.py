"""The agent process: onboard if needed, then heartbeat over mutual TLS and renew the
certificate when less than a third of its lifetime is left.

Exit codes: 0 stopped (or ``--once`` done), 1 unusable configuration or files,
2 registration rejected or expired, 3 the site's identity is refused (revoked,
decommissioned, deleted, or the certificate expired).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from typing import Any

from cryptography import x509

import fleetplane
from fleetplane.agent.identity import KeyStoreError
from fleetplane.agent.onboard import (
    EXIT_REVOKED,
    AgentConfig,
    AgentError,
    Backoff,
    SavedIdentity,
    collect_facts,
    needs_renewal,
    onboard,
    os_version,
    renew,
)
from fleetplane.core.errors import ApiError

log = logging.getLogger("fleetplane.agent")


def rfc3339(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_status(facts: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Online",
        "lastSeen": rfc3339(),
        "softwareVersion": fleetplane.__version__,
        "osVersion": os_version(),
        "nodeCount": 1,
    }
    if facts:
        status["facts"] = facts
    return status


class Agent:
    def __init__(self, config: AgentConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.facts = collect_facts(config.latitude, config.longitude)

    def _refused(self, ident: SavedIdentity, exc: ApiError) -> AgentError:
        return AgentError(
            f"the server refuses site {ident.site}'s identity ({exc.reason}: {exc.message}); "
            "the site was revoked or decommissioned: stopping",
            EXIT_REVOKED,
        )

    def heartbeat(self, ident: SavedIdentity) -> dict[str, Any]:
        with ident.client() as api:
            return api.put_status(heartbeat_status(self.facts))

    def check_expiry(self, ident: SavedIdentity, cert: x509.Certificate) -> None:
        if dt.datetime.now(dt.UTC) > cert.not_valid_after_utc:
            raise AgentError(
                f"site {ident.site}'s certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; "
                f"remove {ident.data_dir} and onboard again",
                EXIT_REVOKED,
            )

    def run(self) -> int:
        ident = onboard(self.config, self.stop)
        backoff = Backoff()
        cert = ident.certificate()
        beats = 0
        warned = False
        while not self.stop.is_set():
            self.check_expiry(ident, cert)
            try:
                if needs_renewal(cert):
                    cert = renew(ident)
                site = self.heartbeat(ident)
            except ApiError as exc:
                if exc.code == 401:
                    raise self._refused(ident, exc) from None
                if exc.code != 0 and exc.code < 500:
                    raise AgentError(f"heartbeat refused ({exc.reason}): {exc.message}") from None
                if not warned:
                    log.warning("heartbeat failed: %s; retrying with backoff", exc.message)
                    warned = True
                self.stop.wait(backoff.next_delay())
                continue
            if warned or beats == 0:
                phase = (site.get("status") or {}).get("phase", "?")
                log.info("heartbeat ok: site %s is %s", ident.site, phase)
            warned = False
            backoff.reset()
            beats += 1
            if self.config.once:
                return 0
            self.stop.wait(self.config.heartbeat)
        return 0


def run_agent(config: AgentConfig) -> int:
    """Run until stopped (SIGTERM/SIGINT) or ``config.once``; returns the exit code. Expected
    failures are logged as one line, never a traceback."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        return Agent(config, stop).run()
    except AgentError as exc:
        if exc.exit_code == 0:
            return 0
        log.error("%s", exc.message)
        return exc.exit_code
    except KeyStoreError as exc:
        log.error("%s", exc)
        return 1
    except ApiError as exc:
        log.error("%s", exc.message)
        return 1
