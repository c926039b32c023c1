"""Errors a user can cause: reported as one message and exit code 2, no traceback."""


class AlsegError(Exception):
    """A problem with the user's input or config, with a message that says how to fix it."""
