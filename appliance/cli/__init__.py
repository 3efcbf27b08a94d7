"""The command line (``appliance ...``), and the operator's tools it runs: doctor, backup,
the demo."""

from appliance.cli import bundles as _bundles  # noqa: F401 (registers keys, bundle)
from appliance.cli.commands import cli, main

__all__ = ["cli", "main"]
