"""The `fastroar` command line (commands.py), parsing and printing only; the work is in fastroar.stages."""
from fastroar.cli.commands import cli, main

__all__ = ["cli", "main"]
