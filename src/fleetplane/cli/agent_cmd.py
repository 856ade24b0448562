"""``fleetplane agent``: run the site agent (onboard, then the agent core over mutual TLS)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s agent: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("fleetplane.agent")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail

    @app.command()
    def agent(
        server: Annotated[str, typer.Option("--server", help="Server URL, e.g. https://cp.example:7443.")],
        data_dir: Annotated[
            Path, typer.Option(help="Where the site key, certificate and state live (0700).")
        ],
        ca_file: Annotated[Path | None, typer.Option(help="The server's serving CA certificate.")] = None,
        ca_hash: Annotated[
            str | None, typer.Option(help="sha256:HEX of the serving CA's SubjectPublicKeyInfo.")
        ] = None,
        token: Annotated[str | None, typer.Option(help="Registration token (prefer --token-file).")] = None,
        token_file: Annotated[Path | None, typer.Option(help="File holding the registration token.")] = None,
        tenant: Annotated[str | None, typer.Option(help="Tenant to register with (device identity).")] = None,
        device_cert: Annotated[Path | None, typer.Option(help="Device identity certificate (chain).")] = None,
        device_key: Annotated[Path | None, typer.Option(help="Device identity private key (0600).")] = None,
        device_tpm: Annotated[
            str | None,
            typer.Option(
                help="TPM holding the device key, as a TCTI: swtpm:host=H,port=P or device:/dev/tpmrm0."
            ),
        ] = None,
        name: Annotated[str | None, typer.Option(help="Requested site name.")] = None,
        label: Annotated[list[str] | None, typer.Option("--label", help="Requested label key=value.")] = None,
        latitude: Annotated[float | None, typer.Option(help="Site latitude.")] = None,
        longitude: Annotated[float | None, typer.Option(help="Site longitude.")] = None,
        heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 10.0,
        once: Annotated[
            bool, typer.Option("--once", help="Onboard, take the manifest, report once, exit.")
        ] = False,
        driver: Annotated[
            str, typer.Option(help="What applies the manifest: sim (an in-memory model of this site).")
        ] = "sim",
    ) -> None:
        """Run the site agent: onboard with a token or device identity, then long-poll the
        site's manifest, apply it through the driver and report status over mutual TLS."""
        from fleetplane.agent.identity import DeviceKey, FileDeviceKey, KeyStoreError, TpmDeviceKey
        from fleetplane.agent.onboard import AgentConfig
        from fleetplane.agent.runner import DRIVERS, run_agent

        _setup_logging()
        if (ca_file is None) == (ca_hash is None):
            raise fail("give exactly one of --ca-file and --ca-hash")
        token = resolve_token(token, token_file)
        labels: dict[str, str] = {}
        for item in label or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise fail(f"invalid --label {item!r}: expected key=value")
            labels[key] = value
        if (latitude is None) != (longitude is None):
            raise fail("give both --latitude and --longitude, or neither")
        if heartbeat <= 0:
            raise fail("--heartbeat must be positive")
        if driver not in DRIVERS:
            raise fail(f"unknown --driver {driver!r}; available: {', '.join(DRIVERS)}")
        device: DeviceKey | None = None
        try:
            if device_tpm:
                device = TpmDeviceKey(device_tpm, device_cert)
            elif device_cert or device_key:
                if not (device_cert and device_key):
                    raise fail("give both --device-cert and --device-key")
                device = FileDeviceKey(device_cert, device_key)
        except KeyStoreError as exc:
            raise fail(str(exc)) from exc
        if device is not None and not tenant and not token:
            raise fail("a device identity needs --tenant")
        config = AgentConfig(
            server=server,
            data_dir=data_dir,
            ca_file=ca_file,
            ca_hash=ca_hash,
            token=token,
            tenant=tenant,
            device=device,
            name=name,
            labels=labels,
            latitude=latitude,
            longitude=longitude,
            heartbeat=heartbeat,
            once=once,
        )
        code = run_agent(config, driver=driver)
        if code:
            raise typer.Exit(code)


def resolve_token(token: str | None, token_file: Path | None) -> str | None:
    """The registration token: ``--token``, else ``--token-file`` (cloud-init writes one),
    else ``FLEETPLANE_TOKEN``."""
    from fleetplane.cli.main import fail

    if token is None and token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
    return token or os.environ.get("FLEETPLANE_TOKEN") or None
