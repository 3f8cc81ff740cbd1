"""The seed-compatible C{nexus-websocketserver} command: runs the gateway in the foreground.

It takes the same options as C{twistd -n nexusws}. The log goes to stdout, or
with C{--log_file} only to that file (created with mode 0600), each line once.
A start-up mistake prints one line on stderr and exits with 2 (a bad option)
or 1 (a port in use, a log file that cannot be opened); SIGTERM or SIGINT stop
the gateway and exit with 0.
"""

import sys

from twisted.logger import globalLogBeginner
from twisted.python import usage

from nexusws import tap
from nexusws.errors import StartupError, say
from nexusws.gateway import log_observer
from nexusws.logs import open_log_file

PROG = "nexus-websocketserver"


def main(argv=None):
    options = tap.Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        say(PROG, e)
        return 2

    from twisted.internet import reactor

    # The log file is this script's (the gateway service's copy of the log is
    # for twistd): logging to it begins before the gateway starts, so what was
    # logged meanwhile (options, assembly) reaches it once, replayed, and the
    # start-up lines too, directly.
    log_file, options["log_file"] = options["log_file"], None
    try:
        top = tap.makeService(options, reactor)
    except usage.UsageError as e:  # a service script's __init__ raised
        say(PROG, e)
        return 2
    if log_file is not None:
        try:
            stream = open_log_file(log_file)
        except OSError as e:
            say(PROG, f"--log_file {log_file!r}: cannot open: {e.strerror}")
            return 1
        globalLogBeginner.beginLoggingTo([log_observer(stream, options["verbose"])], redirectStandardIO=False)
    try:
        # Without --log_file, log events are buffered until logging begins: a
        # failed start prints its one line and nothing else.
        top.privilegedStartService()
    except StartupError as e:
        say(PROG, e)
        return 1
    if log_file is None:
        globalLogBeginner.beginLoggingTo([log_observer(sys.stdout, options["verbose"])], redirectStandardIO=False)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
