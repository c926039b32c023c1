"""Errors a user can cause: reported as one message and exit code 2, no traceback."""


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
