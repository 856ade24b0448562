"""Every command and sub-command prints its help: a help text with Rich markup in it (an
``s3://BUCKET[/PREFIX]`` read as a closing tag) crashes ``--help`` with a traceback."""

from __future__ import annotations

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
