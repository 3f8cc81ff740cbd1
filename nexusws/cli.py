"""The seed-compatible C{nexus-websocketserver} command: runs the gateway in the foreground.

It takes the same options as C{twistd -n nexusws}. The log goes to stdout, or
with C{--log_file} only to that file. A start-up mistake prints one line on
stderr and exits with 2 (a bad option) or 1 (a port in use, a log file that
cannot be opened); SIGTERM or SIGINT stop the gateway and exit with 0.
"""

import sys

from twisted.logger import globalLogBeginner
from twisted.python import usage

from nexusws import tap
from nexusws.errors import StartupError, say
from nexusws.service import log_observer

PROG = "nexus-websocketserver"


def main(argv=None):
    options = tap.Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        say(PROG, e)
        return 2

    from twisted.internet import reactor

    top = tap.makeService(options, reactor)
    try:
        # Until logging begins, log events are buffered: a failed start prints
        # its one line and nothing else.
        top.privilegedStartService()
    except StartupError as e:
        say(PROG, e)
        return 1
    # With --log_file the gateway already copies the log there; stdout stays quiet.
    observers = [] if options["log_file"] else [log_observer(sys.stdout, options["verbose"])]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
