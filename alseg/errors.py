"""Errors a user can cause: reported as one message and exit code 2, no traceback; and how a
signal stops a run (`interrupt`, `uninterrupted`)."""
import signal
import threading
from contextlib import contextmanager
from typing import Iterator


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


_pending: int | None = None  # a signal that asked the run to stop, until the run has stopped
_shielded = 0  # depth of `uninterrupted` blocks open in the main thread
_deferred: int | None = None  # a signal that came inside them, raised when the outermost ends


def interrupt(signum: int) -> None:
    """Stop the run for `signum`: raise Interrupted now (at the end of the block, inside an
    `uninterrupted` one), and remember it for `check_interrupted`."""
    global _pending, _deferred
    _pending = signum
    if _shielded:
        _deferred = signum
    else:
        raise Interrupted(signum)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A block that a signal does not break into: its Interrupted comes when the block ends.
    For a file being written, whose writer may be a C extension calling back into Python
    (torch.save into a file object turns an exception raised in its callback into its own
    RuntimeError, and the run would end as a crash): the file is completed, then the run stops.
    Only the main thread, where signal handlers run, is shielded."""
    global _shielded, _deferred
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _shielded += 1
    try:
        yield
    finally:  # an error leaving the block goes on as it is; check_interrupted still sees the signal
        _shielded -= 1
        signum = None
        if not _shielded:
            signum, _deferred = _deferred, None
    if signum is not None:
        raise Interrupted(signum)


def check_interrupted() -> None:
    """Raise Interrupted again if a signal asked the run to stop and the run went on: Python
    swallows an exception raised in a finaliser (a generator or object closed by the garbage
    collector), so a signal landing there would otherwise be lost. The loop calls this at each
    cycle and training report."""
    if _pending is not None:
        raise Interrupted(_pending)


def clear_interrupted() -> None:
    """The run has stopped for its signal."""
    global _pending, _deferred
    _pending = _deferred = None
