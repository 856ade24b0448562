"""``fleetplane kubeconfig NAMESPACE/VK8S``: a kubeconfig for one namespace's vK8s.

The credential is a new access key (the same bearer credential as the native API: 256 random
bits, only its hash stored), limited to that namespace, with the role asked for (``editor``
by default). The server URL carries the vK8s prefix; the CA is the server's serving CA.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fleetplane.kinds.vk8s import VK8S, api_path


def kubeconfig(server: str, namespace: str, name: str, token: str, ca_pem: bytes | None) -> dict[str, Any]:
    entry = f"{namespace}-{name}"
    cluster: dict[str, Any] = {"server": server.rstrip("/") + api_path(namespace, name)}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": entry, "cluster": cluster}],
        "users": [{"name": entry, "user": {"token": token}}],
        "contexts": [{"name": entry, "context": {"cluster": entry, "user": entry, "namespace": namespace}}],
        "current-context": entry,
        "preferences": {},
    }


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state
    from fleetplane.core.errors import ApiError

    @app.command("kubeconfig")
    def kubeconfig_cmd(
        target: Annotated[str, typer.Argument(help="NAMESPACE/VK8S: the vK8s to reach.")],
        output: Annotated[
            str | None, typer.Option("--output", "-o", help="Write here (mode 0600) instead of stdout.")
        ] = None,
        role: Annotated[str, typer.Option(help="Role of the new key: editor or viewer.")] = "editor",
    ) -> None:
        """Write a kubeconfig for a vK8s: its URL, the server's CA and a new access key limited to
        its namespace, so that kubectl and Kubernetes clients work unchanged."""
        namespace, _, name = target.partition("/")
        if not namespace or not name:
            raise fail(f'expected NAMESPACE/VK8S, got "{target}"')
        if role not in ("editor", "viewer"):
            raise fail("--role must be editor or viewer")
        try:
            with state.client() as client:
                client.get(VK8S.plural, name, namespace)
                key_name = f"vk8s-{namespace}-{name}"[:52].rstrip("-.") + "-" + secrets.token_hex(4)
                spec = {
                    "role": role,
                    "namespaces": [namespace],
                    "description": f"kubeconfig for vK8s {namespace}/{name}",
                }
                created = client.create("accesskeys", {"metadata": {"name": key_name}, "spec": spec})
                server, ca_file = client.conn.server, client.conn.ca_file
        except ApiError as exc:
            raise report(exc) from exc
        ca_pem = Path(ca_file).read_bytes() if ca_file else None
        text = yaml.safe_dump(
            kubeconfig(server, namespace, name, created["status"]["accessKey"], ca_pem), sort_keys=False
        )
        if output is None:
            out.print(text, markup=False, highlight=False, end="")
            return
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        out.print(
            f"kubeconfig for vK8s {namespace}/{name} written to {output} (key {key_name})", highlight=False
        )
