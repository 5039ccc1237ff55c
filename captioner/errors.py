"""The exceptions users see: the CLI prints each as a single line, never a traceback."""


class CaptionerError(Exception):
    """A problem with the user's input (a file, a setting): say what and where, in one line."""

    exit_code = 1


class UsageError(CaptionerError):
    """The command line itself is wrong (an option's value, a key=value setting): exit status 2,
    argparse's convention, so a script can tell a mistyped command from a failed one."""

    exit_code = 2


class Interrupted(CaptionerError):
    """Ctrl-C stopped a command; the message says how to continue, if there is a way."""

    exit_code = 130


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message as one short line (libraries' messages go on for paragraphs)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    return (text[:limit - 3] + "...") if len(text) > limit else text or type(err).__name__
