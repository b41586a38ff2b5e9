"""Errors lpmace raises for bad input: one class, one readable line for the CLI."""


class InputError(ValueError):
    """Bad user input (file, key, value, configuration); the message names what is wrong and where.

    The CLI prints ``str(err)`` on one line and exits with status 2; no traceback.
    """


class TrainingFailed(InputError):
    """A training run that cannot end with a usable model (diverged, never validated, checkpoint not
    written). Usually the inputs' fault (learning rate, precision, data, disk), so the CLI reports it
    like InputError: one ``lpmace: error:`` line, exit status 2.
    """
