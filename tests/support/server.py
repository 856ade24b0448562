"""Run the real server as a process on loopback, as an operator would."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleetplane.client import Client, Connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``fleetplane server`` in a subprocess with its own data dir, port and CLI config."""

    def __init__(
        self,
        data_dir: Path,
        *,
        store_url: str = "",
        extra_args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store_url = store_url
        self.extra_args = extra_args or []
        self.port = port or free_port()
        self.config = data_dir.parent / f"{data_dir.name}-config.yaml"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.data_dir / "tls" / "serving-ca.crt")

    @property
    def tls(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server's CA (what ``verify=`` takes)."""
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def env(self) -> dict[str, str]:
        env = {**os.environ, "FLEETPLANE_CONFIG": str(self.config), "PYTHONUNBUFFERED": "1"}
        env.pop("FLEETPLANE_SERVER", None)
        env.pop("FLEETPLANE_KEY", None)
        # pytest-xdist's workers set COLUMNS=80 and LINES=24; a script that runs the CLI
        # through a pipe has neither (and then gets whole rows).
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        return env

    def start(self, timeout: float = 30.0) -> ServerProcess:
        args = [
            sys.executable,
            "-m",
            "fleetplane",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        if self.store_url:
            args += ["--store", self.store_url]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if Path(self.ca_file).exists():
                    r = httpx.get(f"{self.url}/readyz", verify=self.tls, timeout=1)
                    if r.status_code == 200:
                        return self
            except (httpx.TransportError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def client(self, key: str | None = None) -> Client:
        return Client(Connection(server=self.url, key=key or self.admin_key, ca_file=self.ca_file))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def cli(
        self, *args: str, stdin: str | None = None, key_file: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``fleetplane`` CLI against this server, as a user would."""
        extra = ["--key-file", key_file] if key_file else []
        return subprocess.run(
            [sys.executable, "-m", "fleetplane", *extra, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
            check=False,
        )
