"""``python -m fleetplane`` is the ``fleetplane`` command."""

from fleetplane.cli.main import app

app()
