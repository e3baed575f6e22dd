"""The errors a user sees, and how the command line reports them.

Every error meant for a user is one line that names the field, file or value at
fault; the CLI prints it without a traceback (`--debug` shows one) and exits:

    SpecError    2    bad input: a spec field, a file, a store that is not ours
    StoreBusy    2    another live driver holds the store (the line names it)
    RunError     1    a run that cannot finish (no room for an actor, a tile that kills actors)
    Interrupted  130  Ctrl-C / SIGTERM: what is kept and how to complete it

Kept free of imports so that every module, light or heavy, can raise them.
"""


class SpecError(ValueError):
    """Bad user input: each line of the message names the field, file or value at fault."""


class StoreBusy(SpecError):
    """The store is in use by another live process (named in the message)."""


class RunError(RuntimeError):
    """A run that cannot finish (an actor that cannot start, a tile that keeps killing actors)."""


class Interrupted(Exception):
    """The user stopped a run; the message says what is kept."""


EXIT_CODES = ((SpecError, 2), (RunError, 1), (Interrupted, 130))
