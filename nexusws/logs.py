"""Logging: the loggers and their namespaces, verbosity levels, the log line and the log file.

Every nexusws module gets its L{Logger} from L{logger}; those loggers emit
through one filter whose level follows C{--verbose}, so the level applies
whether the process runs under twistd or the C{nexus-websocketserver} script.

Namespaces: a logger's namespace is in every line it writes
(C{[nexusws.reservations#info] reservation #1a2b3c4d demo#0: ...}), and
operators grep for it, so it names a stable part of the gateway, not a module
path: it stays as it is when code moves. There is one scheme, which L{logger}
enforces:

  - C{nexusws}: the gateway as a whole (start-up, listeners, shutdown);
  - C{nexusws.<area>}, C{<area>} one of L{AREAS} (several modules may share one:
    the HTTP tree's modules all log as C{nexusws.web});
  - C{nexusws.service.<name>}: one configured service's own lines, C{<name>}
    its name as configured.

A new area is added to L{AREAS} (tests/test_logs.py checks that every call of
L{logger} in the package uses one, and that every one is used).

One exception to the letter of it, kept as it is: a L{Logger} that is a class
attribute is a descriptor, and Twisted names what it logs through an instance
after that instance's class, C{<module>.<class>}, whatever namespace it was made
with. The tunnel's logger (C{logger("nexusws.bridge")} on
L{nexusws.bridge.BridgeProtocol}) writes C{[nexusws.bridge.BridgeProtocol#info]
tunnel open: ...}: that class keeps its name and its module, or its lines change.

Verbosity levels:
  0  start-up, listeners, one line per tunnel open and close, HTTP access, warnings, errors
  1  also nexusws debug: handshake decisions, backend connects, flow-control pauses
  2  (and above) also Autobahn's own debug output (its raw handshakes among it)

Secrets: importing this module installs L{nexusws.scrub}'s scrubber as the
global log publisher's first observer, so every line, whoever writes it and at
any verbosity, has its secrets masked before any observer that writes the log
sees it; see L{nexusws.scrub}.
"""

import hashlib
import json
import os
from datetime import UTC, datetime
from urllib.parse import quote

import txaio
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)

from nexusws import scrub

# Before any observer that writes the log is added (see nexusws.scrub.install).
scrub.install()

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

#: The parts of the gateway that log, each as C{nexusws.<area>} (see the module docstring).
AREAS = frozenset({
    "admission",  # the cap on connections per address, at accept time
    "api",  # the /v1 REST API
    "auth",  # who is calling, and may they
    "balancer",  # the session balancer and its nodes
    "balancer.mail",  # the balancer's e-mail to the administrator
    "balancer.web",  # the balancer's HTTP and WebSocket endpoints
    "bridge",  # the WebSocket-TCP tunnels
    "groups",  # group membership
    "launcher",  # spawning, watching and ending session processes
    "procs",  # process facts from /proc, reaping orphans
    "reservations",  # reservations, their tokens and state machines
    "routing",  # where a WebSocket goes
    "services",  # the service config file
    "slurm",  # what the Slurm scheduler says of the gateway's jobs
    "statefile",  # the session state file
    "viewer",  # the browser VNC viewer
    "web",  # the HTTP side: files, ranges, the /ansys/ tree
})
#: A configured service's own logger is this and its name.
SERVICE_PREFIX = "nexusws.service."


def logger(namespace):
    """Return a L{Logger} for C{namespace} whose events obey the C{--verbose} level.

    @raise ValueError: C{namespace} is not in the scheme (see the module docstring).
    """
    if not _in_scheme(namespace):
        raise ValueError(f"logger namespace {namespace!r} is not 'nexusws', 'nexusws.<area>' with an area "
                         f"of nexusws.logs.AREAS, nor '{SERVICE_PREFIX}<name>'")
    return Logger(namespace=namespace, observer=_observer)


def _in_scheme(namespace):
    if not isinstance(namespace, str):
        return False
    if namespace.startswith(SERVICE_PREFIX):
        return len(namespace) > len(SERVICE_PREFIX)
    root, dot, area = namespace.partition(".")
    return root == "nexusws" and (not dot or area in AREAS)


def set_verbosity(level):
    """Apply a C{--verbose} level (see the module docstring)."""
    _predicate.setLogLevelForNamespace(None, LogLevel.debug if level >= 1 else LogLevel.info)
    txaio.use_twisted()  # Autobahn's logging; idempotent, and needed before its first import
    txaio.set_global_log_level("debug" if level >= 2 else "info")


def printable(text, limit=200):
    """Quote control characters and cut C{text} so one log line stays one line."""
    text = str(text)
    if not (text.isascii() and text.isprintable()):  # printable ASCII is kept as it is
        text = quote(text, safe=" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(text):
    """C{text} with every run of whitespace (newlines too) made one space."""
    return " ".join(str(text).split())


def describe(exc):
    """C{"TypeName: message"} on one line."""
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def show(value, limit=80):
    """C{value} as JSON (else repr), on one line, cut at C{limit} characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    text = one_line(text)
    return text if len(text) <= limit else text[:limit] + "..."


def tag(token):
    """How a log line names a token: C{#} and 8 hex digits of its SHA-256.

    No token material: the tag cannot be turned back into the token (a UUID4
    holds 122 random bits), yet every line about one token carries the same
    tag, across restarts too, and an operator who has a token can compute it
    (C{sha256(token.encode()).hexdigest()[:8]})."""
    return "#" + hashlib.sha256(str(token).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def iso_utc(epoch):
    """ISO-8601 UTC, to the second, of C{epoch} seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def classic_text(event, _stamps={}):  # noqa: B006 - the per-second cache of time stamps
    """C{formatEventAsClassicLogText(event)}, Twisted's log line, made cheaply.

    Twisted formats C{log_format} with a pure-Python C{string.Formatter} and
    the time stamp with C{strftime}, some 40 µs a line: a third of an HTTP
    request's CPU when each request logs two lines. For the usual event (a
    C{str} format whose fields C{str.format_map} understands, no failure, not a
    legacy flattened one) this gives the same text with the C{str} method and
    one time stamp a second; any other event, or any error, goes to Twisted's.
    """
    fmt = event.get("log_format")
    if type(fmt) is not str or "log_failure" in event or "log_flattened" in event:
        return formatEventAsClassicLogText(event)
    try:
        text = fmt.format_map(event)
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        else:
            system = str(system)
        when = event.get("log_time")
        if when is None:
            stamp = "-"
        elif (stamp := _stamps.get(second := int(when))) is None or when < 0:
            if len(_stamps) > 4:
                _stamps.clear()
            stamp = _stamps[second] = formatTime(when)
    except Exception:  # Twisted's own formatting says what is wrong
        return formatEventAsClassicLogText(event)
    if not text:
        return None
    return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


def text_file_observer(stream):
    """Twisted's C{textFileLogObserver(stream)}, formatting with L{classic_text}."""
    return FileLogObserver(stream, classic_text)


# --- the log file and Autobahn's lines ------------------------------------------------


def open_log_file(path):
    """C{path} opened for appending, as line-buffered UTF-8 text; a new file is
    created with mode 0600 (the log names users and client addresses), an
    existing one keeps its mode.

    @raise OSError: it cannot be opened."""
    return open(path, "a", encoding="utf-8", buffering=1, opener=_private)


def _private(path, flags):
    return os.open(path, flags, 0o600)


class Quieter:
    """Stands in for a txaio logger (an Autobahn object's C{log}) and logs its
    C{info} and C{warn} lines at debug: for Autobahn's lines about something
    nexusws logs itself. Anything else goes to the logger as it is."""

    def __init__(self, log):
        self._log = log
        self.info = self.warn = log.debug

    def __getattr__(self, name):
        return getattr(self._log, name)
