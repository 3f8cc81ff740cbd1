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
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
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
    text = quote(str(text), safe=" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
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
