"""The `ditkit` command line: `main` parses, builds configs and calls the library."""

from ditkit.cli.main import main

__all__ = ["main"]
