"""fleetplane: a control plane that runs distributed sites as one fleet."""

__version__ = "0.1.0"
