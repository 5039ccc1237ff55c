"""The exceptions users see: the CLI prints each as a single line, never a traceback."""


class CaptionerError(Exception):
    """A problem with the user's input (a file, a setting): say what and where, in one line."""

    exit_code = 1


class Interrupted(CaptionerError):
    """Ctrl-C stopped a command; the message says how to continue, if there is a way."""

    exit_code = 130
