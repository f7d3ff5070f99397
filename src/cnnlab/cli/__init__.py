"""The ``cnnlab`` command line: a parser and one small function per subcommand, each calling the library once."""

from cnnlab.cli.main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
