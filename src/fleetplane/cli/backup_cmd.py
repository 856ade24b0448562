"""``fleetplane admin backup`` and ``fleetplane admin restore``: the control plane's disaster
recovery (docs/backup.md).

The passphrase comes from ``--passphrase-file``, else ``FLEETPLANE_BACKUP_PASSPHRASE``, else a
prompt (asked twice for a backup). ``backup`` asks the running server for the archive;
``restore`` works offline on a new data directory, before a server is started there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetplane.client.backup import download_backup
from fleetplane.core.errors import ApiError

PASS_ENV = "FLEETPLANE_BACKUP_PASSPHRASE"  # noqa: S105  (the variable's name)
PassFileOpt = Annotated[
    Path | None, typer.Option(help=f"File holding the passphrase (else ${PASS_ENV}, else a prompt).")
]


def _passphrase(path: Path | None, *, confirm: bool) -> str:
    from fleetplane.cli.main import fail

    if path is not None:
        try:
            value = path.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read the passphrase file {path}: {exc}") from exc
    elif os.environ.get(PASS_ENV):
        value = os.environ[PASS_ENV]
    elif sys.stdin.isatty():
        value = typer.prompt("Backup passphrase", hide_input=True, confirmation_prompt=confirm)
    else:
        raise fail(f"no passphrase: use --passphrase-file or set {PASS_ENV}")
    if not value:
        raise fail("the passphrase is empty")
    return value


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import fail, out, report, state

    admin = typer.Typer(help="Disaster recovery of the control plane: backup and restore.")
    app.add_typer(admin, name="admin", no_args_is_help=True)

    @admin.command("backup")
    def backup(
        out_file: Annotated[Path, typer.Option("--out", help="Archive to write (encrypted).")],
        with_artifacts: Annotated[
            bool, typer.Option(help="Include the artifact blobs (their metadata is always included).")
        ] = False,
        passphrase_file: PassFileOpt = None,
    ) -> None:
        """Write an encrypted backup of the store, CAs, KEK and artifact metadata (system admin)."""
        passphrase = _passphrase(passphrase_file, confirm=True)
        partial = out_file.with_name(out_file.name + ".part")
        try:
            with state.client() as client, partial.open("wb") as sink:
                revision = download_backup(client, sink, passphrase, with_artifacts=with_artifacts)
        except ApiError as exc:
            partial.unlink(missing_ok=True)
            raise report(exc) from exc
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise fail(f"cannot write {out_file}: {exc.strerror}") from exc
        os.chmod(partial, 0o600)
        partial.replace(out_file)
        size = out_file.stat().st_size
        out.print(f"backup of revision {revision} written to {out_file} ({size} bytes)", highlight=False)

    @admin.command("restore")
    def restore_cmd(
        in_file: Annotated[Path, typer.Option("--in", help="The archive written by `admin backup`.")],
        data_dir: Annotated[Path, typer.Option(help="A new (absent or empty) data directory.")],
        store: Annotated[
            str,
            typer.Option(help="Store URL to restore into (default: SQLite in the data dir); must be empty."),
        ] = "",
        passphrase_file: PassFileOpt = None,
    ) -> None:
        """Restore a backup into a new data directory; then start `fleetplane server` on it."""
        from fleetplane.server.backup import BackupError, restore

        if not in_file.is_file():
            raise fail(f"{in_file}: no such file")
        passphrase = _passphrase(passphrase_file, confirm=False)
        try:
            with in_file.open("rb") as source:
                done = restore(source, passphrase.encode(), data_dir, store_url=store)
        except BackupError as exc:
            raise fail(f"cannot restore {in_file}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise fail(f"cannot restore {in_file}: {exc}") from exc
        out.print(
            f"restored {done.objects} objects at revision {done.revision} (backup of {done.created_at}) "
            f"and {done.artifacts} artifact blobs into {done.data_dir}",
            highlight=False,
        )
        if not done.kek_included:
            out.print(
                f"the backup's KEK ({done.kek_spec}) is not in the archive: "
                "start the server with the same --kek",
                highlight=False,
            )
        out.print(f"start it with: fleetplane server --data-dir {done.data_dir}", highlight=False)
