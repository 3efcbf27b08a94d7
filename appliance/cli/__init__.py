"""The command line (``appliance ...``), and the operator's tools it runs: doctor, backup,
the demo."""

from appliance.cli.commands import cli, main

__all__ = ["cli", "main"]
