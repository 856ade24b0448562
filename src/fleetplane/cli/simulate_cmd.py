"""``fleetplane simulate``: a fleet of simulated sites against a real server; ``fleetplane demo``:
the server plus a simulated fleet in one command (what ``make run`` starts)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetplane.agent.drivers.simmodel.faults import FAULTS
from fleetplane.cli.agent_cmd import resolve_token
from fleetplane.core.errors import ApiError


def _default_sim_dir() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "fleetplane-sim"


def _labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"invalid label {pair!r}: expected key=value")
            labels[key.strip()] = value.strip()
    return labels


def _regions(items: list[str] | None) -> tuple[str, ...]:
    from fleetplane.simulator.cities import REGIONS

    found = tuple(r.strip() for item in items or [] for r in item.split(",") if r.strip())
    unknown = [r for r in found if r not in REGIONS]
    if unknown:
        raise ValueError(f"unknown region(s) {', '.join(unknown)}; known: {', '.join(REGIONS)}")
    return found


def _faults(items: list[str] | None) -> tuple[str, ...]:
    from fleetplane.agent.drivers.simmodel.faults import parse_fault

    for item in items or []:
        parse_fault(item)  # FaultError is a ValueError: refused before any site starts
    return tuple(items or ())


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import err, fail, report

    @app.command()
    def simulate(
        server: Annotated[str, typer.Option("--server", help="Server URL, e.g. https://127.0.0.1:7443.")],
        sites: Annotated[int, typer.Option(help="How many sites to simulate.")] = 100,
        ca_file: Annotated[Path | None, typer.Option(help="The server's serving CA certificate.")] = None,
        ca_hash: Annotated[
            str | None, typer.Option(help="sha256:HEX of the serving CA's SubjectPublicKeyInfo.")
        ] = None,
        token: Annotated[str | None, typer.Option(help="Registration token (prefer --token-file).")] = None,
        token_file: Annotated[Path | None, typer.Option(help="File holding the registration token.")] = None,
        regions: Annotated[
            list[str] | None, typer.Option("--regions", help="World regions to place sites in (a,b,...).")
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed: the same seed draws the same fleet.")] = 1,
        processes: Annotated[int, typer.Option(help="Worker processes (one event loop each).")] = 1,
        data_dir: Annotated[
            Path, typer.Option(help="Where the sites' keys, certificates and manifests live.")
        ] = _default_sim_dir(),
        heartbeat: Annotated[float, typer.Option(help="Seconds between a site's heartbeats.")] = 10.0,
        prefix: Annotated[str, typer.Option(help="Prefix of the site names (prefix-city-00042).")] = "",
        label: Annotated[
            list[str] | None, typer.Option("--label", help="Extra label k=v for every site.")
        ] = None,
        profile: Annotated[
            str, typer.Option(help="Sim site profile: default, edge, datacenter, fast.")
        ] = "default",
        start_rate: Annotated[
            float, typer.Option(help="Agent cores started per second per process.")
        ] = 200.0,
        fault: Annotated[
            list[str] | None,
            typer.Option(
                "--fault",
                help="Inject a fault into every site: NAME[:k=v,...], e.g. "
                "memory_pressure:after=60,duration=600 or install_failure:stage=health_check ("
                + ", ".join(FAULTS)
                + "; every fault takes after= and duration= seconds).",
            ),
        ] = None,
        exit_with_parent: Annotated[
            bool,
            typer.Option(
                "--exit-with-parent",
                hidden=True,  # for `fleetplane demo`, which starts the simulator as its child
                help="Stop when the process that started this one is gone (killed with -9).",
            ),
        ] = False,
    ) -> None:
        """Onboard N simulated sites through the real zero-touch path and run their agents.

        Restarting with the same --data-dir reuses the sites' identities."""
        from fleetplane.agent.onboard import AgentError, pin_server_ca
        from fleetplane.simulator.fleet import SimulateConfig, _setup_logging
        from fleetplane.simulator.fleet import simulate as run_simulation

        if (ca_file is None) == (ca_hash is None):
            raise fail("give exactly one of --ca-file and --ca-hash")
        if sites < 1 or processes < 1 or heartbeat <= 0:
            raise fail("--sites and --processes must be at least 1, --heartbeat positive")
        token = resolve_token(token, token_file)
        try:
            extra = _labels(label)
            where = _regions(regions)
            faults = _faults(fault)
            server_ca = pin_server_ca(server.rstrip("/"), ca_file, ca_hash)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        except AgentError as exc:
            raise fail(exc.message) from exc
        _setup_logging()
        config = SimulateConfig(
            server=server.rstrip("/"),
            data_dir=data_dir.resolve(),
            sites=sites,
            server_ca=server_ca,
            token=token,
            regions=where,
            seed=seed,
            processes=min(processes, sites),
            heartbeat=heartbeat,
            prefix=prefix,
            labels=extra,
            profile=profile,
            start_rate=start_rate,
            faults=faults,
            parent_pid=os.getppid() if exit_with_parent else None,  # now: the parent may go soon
        )
        err.print(
            f"simulating {sites} sites against {config.server} ({config.processes} process(es); "
            f"data in {config.data_dir})",
            highlight=False,
        )
        code = run_simulation(config)
        if code:
            raise typer.Exit(code)

    @app.command()
    def demo(
        sites: Annotated[int, typer.Option(help="How many simulated sites.")] = 300,
        data_dir: Annotated[
            Path | None,
            typer.Option(help="Server data dir (default: the server's).", envvar="FLEETPLANE_DATA_DIR"),
        ] = None,
        port: Annotated[int, typer.Option(help="Port of the server.")] = 7443,
        seed: Annotated[int, typer.Option(help="Seed of the simulated fleet.")] = 1,
        heartbeat: Annotated[float, typer.Option(help="Seconds between a site's heartbeats.")] = 10.0,
        processes: Annotated[int, typer.Option(help="Simulator worker processes.")] = 1,
    ) -> None:
        """Start the server and a simulated fleet of N sites (zero-touch onboarded) against it."""
        from fleetplane.cli.admin import _data_dir_default
        from fleetplane.server.bootstrap import default_client_config

        def on_term(signum: int, _frame: object) -> None:
            raise SystemExit(0)  # run the cleanup below: stop the simulator and the server

        signal.signal(signal.SIGTERM, on_term)
        root = (data_dir or _data_dir_default()).resolve()
        try:
            server = _start_server(root, port)
        except ApiError as exc:
            raise report(exc) from exc
        url = f"https://127.0.0.1:{port}"
        try:
            ca_file = root / "tls" / "serving-ca.crt"
            try:
                token_file = _demo_token(url, ca_file, (root / "admin.key").read_text().strip(), root)
            except ApiError as exc:
                raise report(exc) from exc
            err.print(
                f"\nfleetplane demo: server {url}, admin key in {root / 'admin.key'} "
                f"(the CLI reads it via {default_client_config()})\n"
                f"  console: {url}/console/  (log in with the admin key; the browser must trust "
                f"{ca_file}, or accept the warning)\n"
                f"  {sites} simulated sites onboard now (data in {root / 'demo-sites'});\n"
                "  in another terminal:\n"
                f"  try: .venv/bin/fleetplane get sites -o wide -l region=eu-west\n"
                "  kubectl: .venv/bin/fleetplane kubeconfig NAMESPACE/VK8S -o k.yaml, then "
                "KUBECONFIG=k.yaml kubectl get pods -o wide (README: Deploy applications with kubectl)\n",
                highlight=False,
            )
            argv = [
                sys.executable, "-m", "fleetplane", "simulate", "--server", url, "--ca-file", str(ca_file),
                "--token-file", str(token_file), "--sites", str(sites), "--seed", str(seed),
                "--data-dir", str(root / "demo-sites"), "--heartbeat", str(heartbeat),
                "--processes", str(processes), "--exit-with-parent",
            ]  # fmt: skip
            sim = subprocess.Popen(argv)
            _wait_any(server, sim)
        finally:
            for proc in (locals().get("sim"), server):
                if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def _start_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise ApiError(0, "ConfigError", f"port {port} is in use: stop what runs there or pass --port")
    argv = [sys.executable, "-m", "fleetplane", "server", "--data-dir", str(root), "--port", str(port)]
    proc = subprocess.Popen(argv)
    ca = root / "tls" / "serving-ca.crt"
    deadline = time.monotonic() + 60
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ApiError(0, "ServerError", f"the server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError, OSError, ssl.SSLError):
            if (
                ca.exists()
                and httpx.get(
                    f"https://127.0.0.1:{port}/readyz",
                    verify=ssl.create_default_context(cafile=ca),
                    timeout=2,
                ).is_success
            ):
                return proc
        time.sleep(0.2)
    proc.kill()
    raise ApiError(0, "ServerError", "the server did not become ready in 60 s")


def _demo_token(url: str, ca_file: Path, admin_key: str, root: Path) -> Path:
    """An auto-accept token for the demo fleet, kept in ``<root>/demo-token`` (0600) so that a
    restart reuses it; made again if the file or the token is gone."""
    from fleetplane.client import Client, Connection

    token_file = root / "demo-token"
    body: dict[str, Any] = {
        "apiVersion": "fleetplane.io/v1",
        "kind": "RegistrationToken",
        "metadata": {"name": "demo-fleet"},
        "spec": {"autoAccept": True, "labels": {"fleet": "demo"}, "description": "fleetplane demo"},
    }
    with Client(Connection(server=url, key=admin_key, ca_file=str(ca_file))) as client:
        try:
            client.get("registrationtokens", "demo-fleet")
            exists = True
        except ApiError as exc:
            if exc.code != 404:
                raise
            exists = False
        if exists and token_file.exists():
            return token_file
        if exists:
            client.delete("registrationtokens", "demo-fleet")
        created = client.create("registrationtokens", body)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(created["status"]["token"]) + "\n")
    return token_file


def _wait_any(*procs: subprocess.Popen[Any]) -> None:
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
