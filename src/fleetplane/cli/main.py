"""The ``fleetplane`` command line: kubectl-style verbs over every kind, and the server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from fleetplane.cli import output
from fleetplane.client import Client, Connection
from fleetplane.core.apply import applied
from fleetplane.core.errors import ApiError
from fleetplane.core.registry import KindInfo
from fleetplane.kinds import REGISTRY

app = typer.Typer(
    name="fleetplane",
    help="Run distributed sites as one fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
UNWRAPPED_WIDTH = 100_000  # "as wide as the cells": Rich needs a number


def _console(*, stderr: bool = False) -> Console:
    """Rich's console for the CLI's output. Piped or redirected (a script, ``grep``, a CI log)
    there is no terminal to fit: Rich then assumes 80 columns and folds table cells across
    lines, splitting the very names a script greps for. Off a terminal, rows are as wide as
    their cells, as kubectl's are; ``COLUMNS`` still sets a width."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH if wide else None)


out = _console()
err = _console(stderr=True)
DEFAULT_NAMESPACE = "default"


class State:
    config: Path | None = None
    server: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    def client(self) -> Client:
        return Client(
            Connection.from_config(
                self.config, server=self.server, key_file=self.key_file, ca_file=self.ca_file
            )
        )


state = State()


def fail(message: str) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(1)


def report(exc: ApiError) -> typer.Exit:
    if exc.code == 0:
        return fail(exc.message)
    # Name the offending fields unless the message already says what each one says.
    extra = [f"{c.field}: {c.message}" for c in exc.causes if c.field and c.message not in exc.message]
    detail = f"{exc.message} ({'; '.join(extra)})" if extra else exc.message
    err.print(f"Error from server ({exc.reason}): {detail}", markup=False, highlight=False)
    return typer.Exit(1)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            help="CLI config file (default ~/.config/fleetplane/config.yaml).", envvar="FLEETPLANE_CONFIG"
        ),
    ] = None,
    server: Annotated[str | None, typer.Option(help="Server URL, e.g. https://127.0.0.1:7443.")] = None,
    key_file: Annotated[str | None, typer.Option(help="File holding the access key.")] = None,
    ca_file: Annotated[str | None, typer.Option(help="CA certificate to verify the server with.")] = None,
) -> None:
    state.config, state.server, state.key_file, state.ca_file = config, server, key_file, ca_file


class Resource:
    """A kind as the server describes it (discovery), with our local columns if we know it."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.plural: str = found["name"]
        self.kind: str = found["kind"]
        self.namespaced: bool = found["namespaced"]
        self.info: KindInfo | None
        try:
            self.info = REGISTRY.get(self.kind)
        except ApiError:
            self.info = None


def resolve(client: Client, name: str) -> Resource:
    wanted = name.lower()
    for found in client.discover():
        names = {found["name"], found["singularName"], found["kind"].lower(), *found.get("shortNames", [])}
        if wanted in names:
            return Resource(found)
    raise fail(f'the server doesn\'t have a resource type "{name}"')


def namespace_for(res: Resource, namespace: str | None) -> str | None:
    return (namespace or DEFAULT_NAMESPACE) if res.namespaced else None


NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")]
SelectorOpt = Annotated[str, typer.Option("--selector", "-l", help="Label selector, e.g. 'region in (a,b)'.")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | wide | yaml | json | name")]


@app.command()
def get(
    kind: Annotated[str, typer.Argument(help="Kind, plural or short name (sites, vs, ...).")],
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    selector: SelectorOpt = "",
    field_selector: Annotated[str, typer.Option("--field-selector")] = "",
    output_format: OutputOpt = "table",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Print changes as they happen.")] = False,
) -> None:
    """List or show objects."""
    if output_format not in ("table", "wide", "yaml", "json", "name"):
        raise fail(f'unknown output format "{output_format}" (table, wide, yaml, json, name)')
    try:
        with state.client() as client:
            res = resolve(client, kind)
            ns = None if all_namespaces else namespace_for(res, namespace)
            cols = output.columns_for(res.info, output_format == "wide", all_namespaces)
            if name:
                items = [client.get(res.plural, name, ns)]
            else:
                items = client.list(res.plural, ns, selector=selector, field_selector=field_selector)["items"]
            if watch:
                _watch(client, res, ns, selector, cols, output_format)
                return
            _print(items, res, cols, output_format, single=bool(name))
    except ApiError as exc:
        raise report(exc) from exc


def _print(items: list[dict[str, Any]], res: Resource, cols: list[Any], fmt: str, single: bool) -> None:
    if fmt in ("yaml", "json"):
        out.print(
            output.dump(items[0] if single else output.as_list(items, res.kind), fmt),
            markup=False,
            highlight=False,
        )
    elif fmt == "name":
        for obj in items:
            out.print(f"{res.kind.lower()}/{obj['metadata']['name']}", highlight=False)
    elif not items:
        err.print(f"No {res.plural} found" + ("." if not res.namespaced else " in this namespace."))
    else:
        out.print(output.table(items, cols))


def _watch(client: Client, res: Resource, ns: str | None, selector: str, cols: list[Any], fmt: str) -> None:
    header = True
    for event in client.watch(res.plural, ns, selector=selector):
        obj = event["object"]
        if fmt in ("yaml", "json"):
            out.print(
                output.dump(event, fmt) + ("\n---" if fmt == "yaml" else ""), markup=False, highlight=False
            )
            continue
        if event["type"] == "DELETED":
            obj = {**obj, "metadata": {**obj["metadata"], "name": obj["metadata"]["name"] + " (deleted)"}}
        table = output.table([obj], cols)
        table.show_header = header
        header = False
        out.print(table)


@app.command()
def describe(kind: str, name: str, namespace: NamespaceOpt = None) -> None:
    """Show one object in detail."""
    try:
        with state.client() as client:
            res = resolve(client, kind)
            output.describe(client.get(res.plural, name, namespace_for(res, namespace)), out)
    except ApiError as exc:
        raise report(exc) from exc


def load_documents(path: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from exc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise fail(f"{path}: not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}") from exc
    flat: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            flat += doc["items"]
        elif isinstance(doc, dict) and doc.get("kind"):
            flat.append(doc)
        else:
            raise fail(f"{path}: document {i + 1} is not an object with a kind")
    return flat


@app.command()
def apply(
    filename: Annotated[str, typer.Option("--filename", "-f", help="YAML/JSON file, or - for stdin.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Create objects, or bring existing ones to what the file says."""
    docs = load_documents(filename)
    failed = False
    with state.client() as client:
        for doc in docs:
            name = (doc.get("metadata") or {}).get("name", "?")
            try:
                res = resolve(client, str(doc["kind"]))
                ns = namespace_for(res, (doc.get("metadata") or {}).get("namespace") or namespace)
                out.print(f"{res.kind.lower()}/{name} {_apply_one(client, res, ns, doc)}", highlight=False)
            except ApiError as exc:
                report(exc)
                failed = True
    if failed:
        raise typer.Exit(1)


def _apply_one(client: Client, res: Resource, ns: str | None, doc: dict[str, Any]) -> str:
    name = doc["metadata"]["name"]
    for _ in range(5):
        try:
            current = client.get(res.plural, name, ns)
        except ApiError as exc:
            if exc.code != 404:
                raise
            client.create(res.plural, applied(None, doc), ns)
            return "created"
        wanted = applied(current, doc)  # kubectl apply's three-way merge (core/apply.py)
        try:
            updated = client.replace(res.plural, wanted, ns)
        except ApiError as exc:
            if exc.reason == "Conflict":
                continue
            raise
        same = updated["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        return "unchanged" if same else "configured"
    raise ApiError(409, "Conflict", f"{res.plural} {name}: changed by others too often, try again")


@app.command()
def delete(
    kind: Annotated[str | None, typer.Argument()] = None,
    names: Annotated[list[str] | None, typer.Argument()] = None,
    filename: Annotated[str | None, typer.Option("--filename", "-f")] = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete objects by kind and name, or those in a file."""
    targets: list[tuple[str, str, str | None]] = []
    if filename:
        targets = [
            (str(d["kind"]), d["metadata"]["name"], (d.get("metadata") or {}).get("namespace"))
            for d in load_documents(filename)
        ]
    elif kind and names:
        targets = [(kind, n, namespace) for n in names]
    else:
        raise fail("give a kind and names, or -f FILE")
    failed = False
    with state.client() as client:
        for k, name, ns in targets:
            try:
                res = resolve(client, k)
                client.delete(res.plural, name, namespace_for(res, ns or namespace))
                out.print(f'{res.kind.lower()} "{name}" deleted', highlight=False)
            except ApiError as exc:
                report(exc)
                failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def label(
    kind: str,
    name: str,
    changes: Annotated[list[str], typer.Argument(help="key=value to set, key- to remove.")],
    namespace: NamespaceOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Allow changing an existing value.")] = False,
) -> None:
    """Add, change or remove labels."""
    patch: dict[str, Any] = {}
    for change in changes:
        if change.endswith("-") and "=" not in change:
            patch[change[:-1]] = None
        elif "=" in change:
            key, _, value = change.partition("=")
            patch[key] = value
        else:
            raise fail(f'invalid label "{change}": expected key=value or key-')
    try:
        with state.client() as client:
            res = resolve(client, kind)
            ns = namespace_for(res, namespace)
            current = client.get(res.plural, name, ns)
            labels = current["metadata"].get("labels") or {}
            for key, value in patch.items():
                if value is not None and key in labels and labels[key] != value and not overwrite:
                    raise fail(f"'{key}' already has a value ({labels[key]}), and --overwrite is false")
            body = {"metadata": {"labels": patch, "resourceVersion": current["metadata"]["resourceVersion"]}}
            client.patch(res.plural, name, body, ns)
            out.print(f"{res.kind.lower()}/{name} labeled", highlight=False)
    except ApiError as exc:
        raise report(exc) from exc


from fleetplane.cli import admin as _admin  # noqa: E402  (registers its commands)

_admin.register(app)
from fleetplane.cli import agent_cmd as _agent_cmd  # noqa: E402

_agent_cmd.register(app)
from fleetplane.cli import onboarding_cmd as _onboarding_cmd  # noqa: E402

_onboarding_cmd.register(app)
from fleetplane.cli import simulate_cmd as _simulate_cmd  # noqa: E402

_simulate_cmd.register(app)
from fleetplane.cli import os_cmd as _os_cmd  # noqa: E402

_os_cmd.register(app)
from fleetplane.cli import rollout_cmd as _rollout_cmd  # noqa: E402

_rollout_cmd.register(app)
from fleetplane.cli import plan_cmd as _plan_cmd  # noqa: E402

_plan_cmd.register(app)
from fleetplane.cli import kubeconfig_cmd as _kubeconfig_cmd  # noqa: E402

_kubeconfig_cmd.register(app)
from fleetplane.cli import top_cmd as _top_cmd  # noqa: E402

_top_cmd.register(app)
from fleetplane.cli import alerts_cmd as _alerts_cmd  # noqa: E402  (after top: adds top virtualsites)

_alerts_cmd.register(app)
from fleetplane.cli import nodes_cmd as _nodes_cmd  # noqa: E402

_nodes_cmd.register(app)
from fleetplane.cli import workloads_cmd as _workloads_cmd  # noqa: E402

_workloads_cmd.register(app)
from fleetplane.cli import artifacts_cmd as _artifacts_cmd  # noqa: E402

_artifacts_cmd.register(app)
from fleetplane.cli import backup_cmd as _backup_cmd  # noqa: E402

_backup_cmd.register(app)
from fleetplane.cli import events_cmd as _events_cmd  # noqa: E402

_events_cmd.register(app)
