"""The `distill` command line: parses arguments, calls the engine, prints."""

from distill.cli.main import main

__all__ = ["main"]
