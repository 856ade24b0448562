"""``fleetplane demo`` (the README's first command, ``make run``): a server and a simulated
fleet that onboards itself, a banner with the console URL, the admin key's place and hints
for the CLI and kubectl; SIGTERM stops both, cleanly."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support.server import free_port

SITES = 4


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *descendants(child)]
    return found


def test_the_demo_starts_a_fleet_prints_where_everything_is_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "FLEETPLANE_CONFIG": str(tmp_path / "config.yaml"), "PYTHONUNBUFFERED": "1"}
    env.pop("FLEETPLANE_DATA_DIR", None)
    argv = [sys.executable, "-m", "fleetplane", "demo", "--sites", str(SITES), "--port", str(port)]
    argv += ["--data-dir", str(data), "--heartbeat", "2"]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    stream = demo.stdout
    assert stream is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
    reader.start()
    below: list[int] = []
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not any("kubectl:" in line for line in lines):
            assert demo.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no banner:\n" + "".join(lines)
            time.sleep(0.2)
        banner = "".join(lines)
        assert f"console: {url}/console/" in banner
        assert f"admin key in {data / 'admin.key'}" in banner
        assert "fleetplane get sites" in banner and "fleetplane kubeconfig" in banner

        key = (data / "admin.key").read_text().strip()
        verify = ssl.create_default_context(cafile=data / "tls" / "serving-ca.crt")
        with httpx.Client(base_url=url, verify=verify, headers={"Authorization": f"Bearer {key}"}) as api:

            def online() -> int:
                items = api.get("/apis/fleetplane.io/v1/sites").json()["items"]
                return sum(1 for s in items if (s.get("status") or {}).get("phase") == "Online")

            while online() < SITES:
                assert demo.poll() is None, "".join(lines)
                assert time.monotonic() < deadline + 60, f"{online()} of {SITES} Online:\n" + "".join(lines)
                time.sleep(0.5)
        below = descendants(demo.pid)
        assert len(below) >= 2  # the server and the simulator
    finally:
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(60)
    reader.join(5)
    output = "".join(lines)
    assert code == 0, output
    assert "Traceback" not in output, output
    time.sleep(0.5)
    assert not [pid for pid in below if Path(f"/proc/{pid}").exists()], "processes left behind"
