"""The services of a running gateway: the listeners, the log file and the
orderly shutdown of open tunnels.

Start-up failures (a port in use, a log file that cannot be opened) raise
L{StartupError} from C{privilegedStartService}: the console script prints its
one line and exits with 1; under twistd the exception escapes (a daemonizing
twistd reports it through its status pipe) and L{install_excepthook} prints it
as one line instead of a traceback.
"""

import os
import signal

from autobahn import websocket as autobahn_websocket
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.base import ReactorBase
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from nexusws import __version__, internals
from nexusws.errors import StartupError, install_excepthook
from nexusws.logs import logger, open_log_file, set_verbosity, text_file_observer
from nexusws.sessions import procs

_log = logger("nexusws")


def parse_endpoint(reactor, label, description):
    """Parse the server endpoint string C{description} given as option C{label}.

    @raise StartupError: one line saying what is wrong with the string.
    """
    try:
        return endpoints.serverFromString(reactor, description)
    # Endpoint parsers are plugins with no documented error type: any exception
    # while parsing a user's string is a mistake in that string.
    except Exception as e:
        kind = description.partition(":")[0]
        if kind == "systemd" and isinstance(e, (KeyError, IndexError)):
            detail = (
                "systemd passed no such socket (LISTEN_FDS="
                f"{os.environ.get('LISTEN_FDS', 'unset')}, LISTEN_FDNAMES="
                f"{os.environ.get('LISTEN_FDNAMES', 'unset')}); run twistd -n from a "
                "service unit whose socket unit provides it, with a matching LISTEN_PID"
            )
        elif kind == "systemd" and isinstance(e, AttributeError):
            detail = "domain must be an address family such as INET, INET6 or UNIX"
        elif isinstance(e, OSError) and e.filename:
            detail = f"{e.strerror}: {e.filename}"
        else:
            detail = str(e).strip() or type(e).__name__
        raise StartupError(f"{label} {description!r}: not a usable endpoint: {detail}") from None


def is_tls_endpoint(description):
    """Whether the endpoint string does its own TLS (C{ssl:...})."""
    return description.partition(":")[0] == "ssl"


def log_observer(stream, verbose):
    """A text log observer writing to C{stream} at the C{--verbose} level.

    nexusws's own loggers and Autobahn already filter at the source (see
    L{nexusws.logs}); this also keeps other libraries' debug events out
    below level 2.
    """
    predicate = LogLevelFilterPredicate(
        defaultLogLevel=LogLevel.debug if verbose >= 2 else LogLevel.info
    )
    if verbose >= 1:
        predicate.setLogLevelForNamespace("nexusws", LogLevel.debug)
    return FilteringLogObserver(text_file_observer(stream), [predicate])


def check_nvx():
    """Warn loudly when Autobahn runs without its C accelerators (about 100x slower)."""
    if getattr(autobahn_websocket, "USES_NVX", False):
        _log.info("Autobahn NVX acceleration: on")
        return True
    _log.warn(
        "Autobahn NVX acceleration is OFF: masking and UTF-8 validation run in pure "
        "Python and tunnels will be about 100 times slower; install autobahn's binary "
        "wheel (with cffi) to fix this"
    )
    return False


def check_internals():
    """Check the library internals the tunnels' fast paths use (L{nexusws.internals});
    warn in one line, naming what is missing, when they fall back to the public APIs."""
    missing = internals.check()
    if missing:
        _log.warn(
            "library internals missing in {versions}: {missing}; tunnels use the public APIs "
            "only (correct, slower); install the versions in constraints.txt to fix this",
            versions=internals.versions(), missing=", ".join(missing),
        )
    return not missing


class GatewayService(service.MultiService):
    """The whole gateway: applies C{--verbose}, opens C{--log_file}, starts its children.

    @param verbose: the C{--verbose} level.
    @param log_file: path of a file that receives a copy of the log while the
        gateway runs, or None. The console script sends the log I{only} there;
        under twistd it comes in addition to twistd's own log (stdout with
        C{-n}, C{twistd.log} or C{--logfile} otherwise), from the start of the
        gateway to its end (twistd's own first and last lines are not in it).
    @param notes: warnings about the configuration, logged once at start-up.
    """

    def __init__(self, verbose=0, log_file=None, notes=(), reactor=None):
        super().__init__()
        self.reactor = reactor
        self.verbose = verbose
        self.log_file = log_file
        self.notes = list(notes)
        self._stream = None
        self._observer = None

    def privilegedStartService(self):
        set_verbosity(self.verbose)
        if isinstance(self.reactor, ReactorBase):
            # Ours before anything listens: a SIGTERM before the reactor runs is
            # served once it does. Twisted installs its own when it starts;
            # they are replaced right after (see startService).
            self._install_signal_handlers(only_default=True)
        try:
            # Opened before privileges are shed, like twistd's own log file.
            self._open_log_file()
            _log.info("nexusws {version} starting", version=__version__)
            check_nvx()
            check_internals()
            old, new = procs.raise_open_files_limit()
            if new != old:
                _log.info("open files limit raised from {old} to {new}", old=old, new=new)
            for note in self.notes:
                _log.warn(note)
            super().privilegedStartService()
        except StartupError as e:
            # For the log too: a daemonizing twistd's parent shows only the first
            # 100 bytes of the error and points the user at the log file.
            _log.error("nexusws cannot start: {error}", error=str(e))
            install_excepthook()
            self._close_log_file()
            raise

    def startService(self):
        super().startService()
        if isinstance(self.reactor, ReactorBase):
            self.reactor.callWhenRunning(self._stop_cleanly_on_sigterm)
            self.reactor.addSystemEventTrigger("after", "shutdown", self._ignore_late_signals)

    def _stop_cleanly_on_sigterm(self):
        """Make SIGTERM (and SIGINT) an orderly stop with exit status 0, under twistd too.

        Twisted's handler records the signal and twistd then kills itself
        with it after shutting down (status -15). A SIGTERM is how systemd
        and operators ask nexusws to stop, and the stop is orderly (tunnels
        closed with 1001), so it ends with status 0 like the console script.
        Twisted installs its handlers before after-startup triggers run, so
        this replaces Twisted's, and does what it does minus the recording.
        """
        self._install_signal_handlers(only_default=False)

    def _install_signal_handlers(self, only_default):
        defaults = (signal.SIG_DFL, signal.default_int_handler)
        for number in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(number)
            if only_default and current not in defaults:
                continue  # someone else's (a debugger's, a test runner's): leave it
            if not only_default and current in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # the reactor runs without signal handlers: leave it so
            signal.signal(number, self._on_signal)

    def _ignore_late_signals(self):
        """Once stopped, ignore further SIGTERM/SIGINT while the process exits.

        Python's finalization resets Python-level handlers to the default, so
        a second SIGTERM (systemd, an impatient operator) arriving then would
        turn an orderly exit 0 into death by signal; an ignored signal stays
        ignored.
        """
        for number in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(number) == self._on_signal:
                signal.signal(number, signal.SIG_IGN)

    def _on_signal(self, number, frame):
        self.reactor.callFromThread(self._stop_once, signal.Signals(number).name)

    def _stop_once(self, name):
        """Stop the reactor; a second signal while stopping is only logged."""
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            _log.info("{signal} received while already stopping", signal=name)
        else:
            _log.info("{signal} received: stopping", signal=name)

    def stopService(self):
        _log.info("nexusws stopping")
        d = super().stopService()
        d.addBoth(self._close_log_file)
        return d

    def _open_log_file(self):
        if self.log_file is None or self._stream is not None:
            return
        try:
            self._stream = open_log_file(self.log_file)  # created 0600
        except OSError as e:
            raise StartupError(f"--log_file {self.log_file!r}: cannot open: {e.strerror}") from None
        self._observer = log_observer(self._stream, self.verbose)
        globalLogPublisher.addObserver(self._observer)

    def _close_log_file(self, passthrough=None):
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        return passthrough


class ListenerService(service.Service):
    """Listen on one endpoint; a failure to listen stops start-up.

    Unlike a bare C{StreamServerEndpointService}, which only logs a bind error
    and runs on without the port, this raises L{StartupError} from
    C{privilegedStartService}. Once listening it logs
    C{<label> listening on <scheme>://<address>:<port>/ (<description>)}.
    """

    def __init__(self, label, description, endpoint, factory, scheme):
        self.label = label
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.scheme = scheme
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        results = []
        d = self.endpoint.listen(self.factory)
        d.addBoth(results.append)
        if not results:
            # TCP, SSL, UNIX and systemd-adopted endpoints all listen synchronously;
            # one that does not could fail after start-up has been declared good.
            d.cancel()
            raise StartupError(
                f"{self.label} {self.description!r}: this endpoint type does not "
                "listen at once and is not supported"
            )
        result = results[0]
        if isinstance(result, Failure):
            raise StartupError(
                f"{self.label} {self.description!r}: cannot listen: {_reason(result.value)}"
            )
        self.port = result
        host = self.port.getHost()
        address = getattr(host, "host", None)
        shown = f"[{address}]" if address and ":" in address else address
        _log.info(
            "{label} listening on {scheme}://{address}:{port}/ ({description})",
            label=self.label,
            scheme=self.scheme,
            address=shown or host,
            port=getattr(host, "port", "-"),
            description=self.description,
        )

    def startService(self):
        # A service added to an already running parent skips the privileged step.
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)


def _reason(exc):
    error = getattr(exc, "socketError", None)
    if getattr(error, "strerror", None):
        return error.strerror
    if error is not None:
        return str(error).strip()
    return str(exc).strip() or type(exc).__name__


class TunnelsService(service.Service):
    """On stop, close every open tunnel with 1001 and wait (bounded) for them.

    Put it first in its parent: a MultiService stops children in reverse
    order, so the listeners stop accepting before the tunnels are closed.
    """

    def __init__(self, factory, reactor, grace):
        self.factory = factory
        self.reactor = reactor
        self.grace = grace

    def stopService(self):
        super().stopService()
        count = len(self.factory.tunnels)
        if not count:
            return None
        _log.info("closing {count} open tunnel(s)", count=count)
        d = self.factory.close_all()
        d.addTimeout(self.grace, self.reactor)
        d.addErrback(lambda _: _log.warn("some tunnels did not close within {grace}s", grace=self.grace))
        return d
