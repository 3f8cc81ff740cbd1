"""Logging: verbosity levels, the log file, and redaction of secrets.

Every nexusws module gets its L{Logger} from L{logger}; those loggers emit
through one filter whose level follows C{--verbose}, so the level applies
whether the process runs under twistd or the C{nexus-websocketserver} script.

Verbosity levels:
  0  start-up, listeners, one line per tunnel open and close, HTTP access, warnings, errors
  1  also nexusws debug: handshake decisions, backend connects, flow-control pauses
  2  also Autobahn's own debug output
"""

import json
import re
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus

import txaio
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = frozenset(
    {"security_token", "token", "password", "primary_password", "vnc_password", "key", "secret"}
)


_TOKEN_IN_PATH = re.compile(r"(/v\d+/release/)[^/?#]+")


def logger(namespace):
    """Return a L{Logger} for C{namespace} whose events obey the C{--verbose} level."""
    return Logger(namespace=namespace, observer=_observer)


def set_verbosity(level):
    """Apply a C{--verbose} level (see the module docstring)."""
    _predicate.setLogLevelForNamespace(None, LogLevel.debug if level >= 1 else LogLevel.info)
    txaio.use_twisted()  # Autobahn's logging; idempotent, and needed before its first import
    txaio.set_global_log_level("debug" if level >= 2 else "info")


def redact(uri):
    """Return C{uri} (str or bytes) as str with the values of secret query parameters masked.

    Parameter names are compared after percent-decoding, as twisted.web
    decodes them before the API sees them: C{security%5Ftoken=...} is masked
    too. Both C{&} and C{;} separate parameters, as in twisted.web's parser.
    """
    if isinstance(uri, bytes):
        uri = uri.decode("latin-1")
    path, sep, query = uri.partition("?")
    # A reservation token can also stand in the path: /v1/release/<token>.
    path = _TOKEN_IN_PATH.sub(r"\1***", path)
    if not sep:
        return path
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition("=")
        if eq and unquote_plus(name, encoding="latin-1").lower() in SECRET_PARAMS:
            parts[i] = name + "=***"
    return path + "?" + "".join(parts)


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


def short(token):
    """The part of a token that may appear in a log line."""
    return printable(str(token)[:8]) + "..."


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
    except Exception:  # noqa: BLE001 - Twisted's own formatting says what is wrong
        return formatEventAsClassicLogText(event)
    if not text:
        return None
    return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


def text_file_observer(stream):
    """Twisted's C{textFileLogObserver(stream)}, formatting with L{classic_text}."""
    return FileLogObserver(stream, classic_text)
