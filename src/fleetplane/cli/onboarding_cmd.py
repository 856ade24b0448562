"""Onboarding commands: ``tokens create``, ``registrations accept|reject``, ``trust-manufacturer``.

Listing works generically: ``fleetplane get registrations`` / ``get tokens``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetplane.core.errors import ApiError

API = "/apis/fleetplane.io/v1"
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f'invalid label "{pair}": expected key=value')
            labels[key.strip()] = value.strip()
    return labels


def expiry(text: str, now: dt.datetime | None = None) -> str:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f'invalid duration "{text}": use e.g. 30m, 12h, 7d, 2w')
    when = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state

    tokens = typer.Typer(help="Registration tokens for onboarding sites.", no_args_is_help=True)
    registrations = typer.Typer(help="Decide on sites waiting to join.", no_args_is_help=True)
    app.add_typer(tokens, name="tokens")
    app.add_typer(registrations, name="registrations")

    @tokens.command("create")
    def tokens_create(
        name: str,
        labels: Annotated[list[str] | None, typer.Option("--labels", "--label", help="k=v,...")] = None,
        expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 7d, 12h.")] = None,
        max_uses: Annotated[int | None, typer.Option(help="How many sites may use it.")] = None,
        auto_accept: Annotated[bool, typer.Option(help="Accept registrations without review.")] = False,
        description: Annotated[str | None, typer.Option()] = None,
    ) -> None:
        """Create a registration token; it is printed once."""
        try:
            spec: dict[str, Any] = {"labels": parse_labels(labels or []), "autoAccept": auto_accept}
            if expires:
                spec["expiresAt"] = expiry(expires)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        if max_uses is not None:
            spec["maxUses"] = max_uses
        if description:
            spec["description"] = description
        try:
            with state.client() as client:
                body = {"metadata": {"name": name}, "spec": spec}
                created = client.request("POST", f"{API}/registrationtokens", body=body)
        except ApiError as exc:
            raise report(exc) from exc
        status = created.get("status") or {}
        out.print(f"registrationtoken/{name} created. The token is shown only now:\n", highlight=False)
        out.print(f"  {status.get('token')}\n", highlight=False, markup=False)
        if status.get("caHash"):
            out.print(f"Agents pin the server with:  --ca-hash {status['caHash']}", highlight=False)

    def _decide(verb: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with state.client() as client:
                result: dict[str, Any] = client.request(
                    "POST", f"{API}/registrations/{name}/{verb}", body=body
                )
                return result
        except ApiError as exc:
            raise report(exc) from exc

    @registrations.command("accept")
    def accept(
        name: str,
        site: Annotated[str | None, typer.Option("--name", help="Site name (default: requested).")] = None,
        label: Annotated[list[str] | None, typer.Option("--label", "-l", help="k=v, repeatable.")] = None,
    ) -> None:
        """Accept a registration: the site is created and gets its certificate."""
        try:
            body: dict[str, Any] = {"labels": parse_labels(label or [])}
        except ValueError as exc:
            raise fail(str(exc)) from exc
        if site:
            body["name"] = site
        status = _decide("accept", name, body).get("status") or {}
        out.print(f"registration/{name} accepted: site/{status.get('site')} created", highlight=False)

    @registrations.command("reject")
    def reject(name: str, reason: Annotated[str, typer.Option(help="Shown to the agent.")]) -> None:
        """Reject a registration; the agent sees the reason."""
        _decide("reject", name, {"reason": reason})
        out.print(f"registration/{name} rejected", highlight=False)

    @app.command("trust-manufacturer")
    def trust_manufacturer(
        name: str,
        ca_file: Annotated[Path, typer.Option(help="PEM CA bundle of the device manufacturer.")],
        auto_accept: Annotated[bool, typer.Option(help="Accept its devices without review.")] = False,
        labels: Annotated[list[str] | None, typer.Option("--labels", "--label", help="k=v,...")] = None,
    ) -> None:
        """Trust device identities (e.g. TPM keys) certified by a manufacturer CA."""
        try:
            bundle = ca_file.read_text()
            spec = {"caBundle": bundle, "autoAccept": auto_accept, "labels": parse_labels(labels or [])}
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from exc
        try:
            with state.client() as client:
                client.request(
                    "POST", f"{API}/trustedmanufacturers", body={"metadata": {"name": name}, "spec": spec}
                )
        except ApiError as exc:
            raise report(exc) from exc
        out.print(f"trustedmanufacturer/{name} created", highlight=False)
