"""Errors a user can cause: reported as one message and exit code 2, no traceback."""
import signal


class AlsegError(Exception):
    """A problem with the user's input or config, with a message that says how to fix it."""


class Refused(AlsegError):
    """A run that may not go on in its directory: it stops before writing anything there."""


class Interrupted(KeyboardInterrupt):
    """A signal asked the run to stop (SIGTERM, as Slurm sends on pre-emption, or SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
