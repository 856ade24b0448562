"""The CLI's surface: every command and sub-command prints its help (a help text with Rich
markup in it — ``s3://BUCKET[/PREFIX]`` read as a closing tag — crashed ``--help`` with a
traceback), and bad server options are one-line errors."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.main import get_command
from typer.testing import CliRunner

from fleetplane.cli.main import app


def _paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        out.extend(_paths(sub, (*prefix, name)))
    return out


def test_every_command_prints_its_help() -> None:
    assert isinstance(app, typer.Typer)
    paths = _paths(get_command(app))
    assert ("server",) in paths and ("artifacts", "upload") in paths  # the walk reaches sub-commands
    runner = CliRunner()
    broken = []
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0 or "Usage" not in result.output:
            broken.append(f"{' '.join(path)}: {result.exception!r} {result.output[-200:]}")
    assert not broken, "\n".join(broken)


def test_bad_server_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, wanted in (
        (["--rollouts-kept", "0"], "--rollouts-kept must be at least 1"),
        (["--events-per-site", "0"], "--events-per-site at least 1"),
        (["--offline-after", "0"], "--offline-after must be positive"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
    ):
        result = runner.invoke(app, ["server", "--data-dir", str(tmp_path), *args])
        assert result.exit_code != 0
        assert wanted in result.output and "Traceback" not in result.output, result.output
