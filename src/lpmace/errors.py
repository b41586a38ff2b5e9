"""Errors lpmace raises for bad input: one class, one readable line for the CLI."""


class InputError(ValueError):
    """Bad user input (file, key, value, configuration); the message names what is wrong and where.

    The CLI prints ``str(err)`` on one line and exits with status 2; no traceback.
    """
