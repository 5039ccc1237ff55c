"""The one exception type users see: the CLI prints it as a single line, never a traceback."""


class CaptionerError(Exception):
    """A problem with the user's input (a file, a setting): say what and where, in one line."""
