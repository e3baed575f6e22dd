"""The errors a user sees, and how the command line reports them.

Every error meant for a user is one line that names the field, file or value at
fault; the CLI prints it without a traceback (`--debug` shows one) and exits:

    SpecError    2    bad input: a spec field, a file, a store that is not ours
    StoreBusy    2    another live driver holds the store (the line names it)
    RunError     1    a run that cannot finish (no room for an actor, a tile that kills actors)
    Interrupted  130  Ctrl-C: what is kept and how to complete it (143 for SIGTERM, as a shell reports it)

Kept free of the package's imports so that every module, light or heavy, can raise them.
"""

import signal


class SpecError(ValueError):
    """Bad user input: each line of the message names the field, file or value at fault."""


class StoreBusy(SpecError):
    """The store is in use by another live process (named in the message)."""


class RunError(RuntimeError):
    """A run that cannot finish (an actor that cannot start, a tile that keeps killing actors)."""


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C, or SIGTERM from `ray job stop` or a batch scheduler); the message says what is
    kept. The exit status is 128 + `by`, the signal's number."""

    by = signal.SIGINT  # set once per process by the SIGTERM handler, read by the CLI when it exits


def unwind(signum: int, frame=None):
    """The CLI's SIGTERM handler: stop the run as Ctrl-C does (actors stopped, finished tiles on disk, --resume
    completes the store), the signal `signum` kept for the exit status.

    It raises KeyboardInterrupt because inside Ray's blocking calls (`ray.wait`, `ray.get`) an exception raised by
    a signal handler reaches Python only as KeyboardInterrupt, or as a bare SystemExit(1) whatever it was.
    """
    Interrupted.by = signum
    raise KeyboardInterrupt


EXIT_CODES = ((SpecError, 2), (RunError, 1))
