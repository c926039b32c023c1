"""Errors a user can cause: reported as one message and exit code 2, no traceback."""
import signal


class AlsegError(Exception):
    """A problem with the user's input or config, with a message that says how to fix it."""

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(str(message)))


def printable(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 shown as \\xNN: Python keeps them as
    lone surrogates, which no log, terminal or file can write."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

class Refused(AlsegError):
    """A run that may not go on in its directory: it stops before writing anything there."""


class Interrupted(KeyboardInterrupt):
    """A signal asked the run to stop (SIGTERM, as Slurm sends on pre-emption, or SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
