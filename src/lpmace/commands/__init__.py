"""Subcommands of the `lpmace` command line, one module each (see `lpmace.cli`)."""
