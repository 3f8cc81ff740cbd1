"""Converters of user-supplied values: options (each raises ValueError naming the bad
value) and JSON files (duplicate keys refused)."""

from twisted.python import usage

LOCAL_SESSION_APPS = ("ensight", "envision")


def _port(value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (0-65535)")
    return port


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    # NaN fails every comparison, so this also refuses "nan".
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def _positive_seconds(value):
    """Seconds > 0: a wait that must end, where 0 would fail everything at once."""
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError(f"{value!r} is not a number of seconds > 0")
    return seconds


def _level(value):
    try:
        level = int(value)
    except (TypeError, ValueError):
        level = -1
    if level < 0:
        raise ValueError(f"{value!r} is not a verbosity level (0, 1 or 2)")
    return level


def _local_session(value):
    words = value.split()
    if len(words) != 2 or words[0] not in LOCAL_SESSION_APPS or not words[1].isdigit():
        raise ValueError(
            f"{value!r} is not 'appname count' with appname "
            f"{' or '.join(LOCAL_SESSION_APPS)} and a whole count"
        )
    return words[0], int(words[1])


def _coerced(coerce, name):
    """Wrap a converter so that a bad value's error names the option."""

    def convert(value):
        try:
            return coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None

    convert.coerceDoc = ""
    return convert


class DuplicateKey(Exception):
    """A JSON object names one key twice (json.loads would keep only the last)."""


def unique_keys(pairs):
    """A C{json.loads} C{object_pairs_hook} that raises L{DuplicateKey}."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result
