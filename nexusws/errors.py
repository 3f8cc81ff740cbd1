"""Errors that stop start-up with one line, never a traceback."""

import sys

#: How error lines are prefixed under twistd (the console script uses its own name).
TWISTD_PROG = "twistd nexusws"


class StartupError(Exception):
    """A user error found while starting: bad file, bad option value, port in use.

    The message is one line naming the option or file at fault.
    """


def say(prog, error):
    """Write C{prog: error: <error>} as one line on the process's real stderr.

    C{sys.__stderr__} because twistd, once logging has begun, replaces
    C{sys.stderr} with a file that feeds the log.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"{prog}: error: {error}\n")
    stream.flush()


def install_excepthook():
    """Make an uncaught L{StartupError} print its one line instead of a traceback.

    C{twistd -n} lets an exception from C{privilegedStartService} escape (after
    removing its pid file; a daemonizing twistd reports it to its parent through
    the status pipe instead), so Python prints it and exits with 1. This hook
    turns ours into one line; any other exception keeps its traceback.
    """
    previous = sys.excepthook
    if getattr(previous, "_nexusws", False):
        return

    def hook(kind, value, tb):
        if isinstance(value, StartupError):
            say(TWISTD_PROG, value)
        else:
            previous(kind, value, tb)

    hook._nexusws = True
    sys.excepthook = hook
