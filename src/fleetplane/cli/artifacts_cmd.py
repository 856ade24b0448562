"""``fleetplane artifacts upload|list|get|download|delete``: the artifact repository.

``upload`` streams the file (any size) and sends its SHA-256, computed first, so the server
refuses bytes that changed on the way; ``download`` resumes a partial file with ``Range``
and checks the digest the server names before keeping it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fleetplane.cli.output import columns_for, dump, table
from fleetplane.client.artifacts import download_artifact, sha256_of, upload_artifact
from fleetplane.core.errors import ApiError
from fleetplane.kinds.artifact import ARCHITECTURES, ARTIFACT, ARTIFACT_TYPES

NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the artifact.")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | wide | json | yaml")]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state

    artifacts = typer.Typer(help="The artifact repository: OS images, packages, container packages.")
    app.add_typer(artifacts, name="artifacts", no_args_is_help=True)

    @artifacts.command("upload")
    def upload(
        file: Annotated[Path, typer.Argument(help="The file to upload (streamed; any size).")],
        name: Annotated[str, typer.Option(help="Artifact name (default: the file name, lower case).")] = "",
        type: Annotated[str, typer.Option("--type", help=" | ".join(ARTIFACT_TYPES))] = "package",
        version: Annotated[str, typer.Option(help="Version, e.g. 1.4.2.")] = "",
        architecture: Annotated[str, typer.Option(help=" | ".join(ARCHITECTURES))] = "any",
        signature_file: Annotated[
            Path | None, typer.Option(help="A detached signature to keep with the artifact.")
        ] = None,
        description: Annotated[str, typer.Option(help="Free text.")] = "",
        namespace: NamespaceOpt = "default",
    ) -> None:
        """Upload FILE as an artifact (created Ready with its SHA-256 and size)."""
        if not file.is_file():
            raise fail(f"{file}: no such file")
        if not version:
            raise fail("--version is required")
        signature = ""
        if signature_file is not None:
            try:
                signature = signature_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise fail(f"cannot read {signature_file}: {exc}") from exc
        art_name = name or file.name.lower().replace("_", "-")
        digest = sha256_of(file)
        try:
            with state.client() as client:
                created = upload_artifact(
                    client,
                    namespace,
                    art_name,
                    file,
                    type=type,
                    version=version,
                    architecture=architecture,
                    signature=signature,
                    description=description,
                    sha256=digest,
                )
        except ApiError as exc:
            raise report(exc) from exc
        status = created.get("status") or {}
        size = _size(int(status.get("size") or 0))
        out.print(f"artifact/{art_name} uploaded: {size}, sha256:{status.get('sha256')}", highlight=False)

    @artifacts.command("list")
    def list_(
        namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace (default: all).")] = "",
        output: OutputOpt = "table",
    ) -> None:
        """List artifacts with type, version, architecture, size and phase."""
        try:
            with state.client() as client:
                items = client.list("artifacts", namespace or None)["items"]
        except ApiError as exc:
            raise report(exc) from exc
        if output in ("json", "yaml"):
            out.print(dump({"kind": "ArtifactList", "items": items}, output), highlight=False, markup=False)
            return
        out.print(table(items, columns_for(ARTIFACT, output == "wide", not namespace)))

    @artifacts.command("get")
    def get(name: str, namespace: NamespaceOpt = "default", output: OutputOpt = "yaml") -> None:
        """Show one artifact's metadata (yaml by default)."""
        try:
            with state.client() as client:
                obj = client.get("artifacts", name, namespace)
        except ApiError as exc:
            raise report(exc) from exc
        if output in ("table", "wide"):
            out.print(table([obj], columns_for(ARTIFACT, output == "wide", False)))
            return
        out.print(dump(obj, output), highlight=False, markup=False)

    @artifacts.command("download")
    def download(
        name: str,
        out_file: Annotated[
            Path | None, typer.Option("--out", "-O", help="Where to write (default: NAME).")
        ] = None,
        namespace: NamespaceOpt = "default",
    ) -> None:
        """Download an artifact; a partial file from an earlier try is resumed."""
        target = out_file or Path(name)
        partial = target.with_name(target.name + ".part")
        try:
            with state.client() as client:
                expected = str(
                    (client.get("artifacts", name, namespace).get("status") or {}).get("sha256") or ""
                )
                offset = partial.stat().st_size if partial.exists() else 0
                with partial.open("ab") as sink:
                    etag = download_artifact(client, namespace, name, sink, offset=offset)
        except ApiError as exc:
            raise report(exc) from exc
        actual = sha256_of(partial)
        if actual != (etag or expected):
            partial.unlink()
            raise fail(f"downloaded bytes have SHA-256 {actual}, not {etag or expected}; removed, try again")
        os.replace(partial, target)
        out.print(f"artifact/{name} saved to {target} (sha256:{actual})", highlight=False)

    @artifacts.command("delete")
    def delete(name: str, namespace: NamespaceOpt = "default") -> None:
        """Delete an artifact (its bytes go when no other artifact has the same ones)."""
        try:
            with state.client() as client:
                client.delete("artifacts", name, namespace)
        except ApiError as exc:
            raise report(exc) from exc
        out.print(f'artifact "{name}" deleted', highlight=False)
