"""Secrets kept out of every log line: the masking, and the scrubber every event passes.

Every event published to Twisted's global log publisher, whoever emits it
(nexusws, Autobahn, Twisted, a session program's output), first passes
L{scrub}, in place, by the publisher's first observer, installed by L{install}
when L{nexusws.logs} is imported -- before twistd or the console script add
the observers that write the log, so what they write, at any verbosity, is
already masked. L{scrub} masks, in the text a line would show and in the
event's fields: values of the query parameters in L{SECRET_PARAMS} (their
names percent-decoded, also inside an encoded query such as
C{path=websockify%3Ftoken%3D...}), the token in C{/v1/release/<token>} (and events, session: its
path percent-decoded), C{Authorization}, C{Proxy-Authorization}, C{Cookie} and
C{Set-Cookie} header values (raw or in a dict's repr), and anything shaped
like a reservation token (a UUID). Callers still mask what they know to be a
URI with L{redact} (L{redact_text} for any other text); lines mention a token
by L{nexusws.logs.tag} only.

This module owns what a secret looks like (L{SECRET_PARAMS},
L{SECRET_HEADERS}, the patterns) and how it is masked (L{MASK}; a dict of
options by L{mask_options}, for /v1/status and the state file); it logs
nothing itself and imports nothing of nexusws.
"""

import copy
import re
from urllib.parse import unquote, unquote_plus

from twisted.logger import formatEvent, globalLogBeginner, globalLogPublisher

# --- what a secret looks like ----------------------------------------------------------

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = frozenset(
    {"security_token", "token", "password", "primary_password", "vnc_password", "key", "secret"}
)
#: HTTP headers whose values never reach a log line.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

#: What a masked value is replaced with.
MASK = "***"


def mask_options(options):
    """A copy of C{options} (a reservation's or a service's) with the values of
    the secret ones (L{SECRET_PARAMS}, whatever their case) replaced by L{MASK}."""
    return {name: MASK if name.lower() in SECRET_PARAMS else value for name, value in options.items()}


def _spelled(word):
    """A pattern for C{word} with each character as it is or percent-encoded (any case;
    compile with re.I)."""
    return "".join(
        "(?:" + "|".join(dict.fromkeys([re.escape(c), f"%{ord(c.lower()):02x}", f"%{ord(c.upper()):02x}"])) + ")"
        for c in word)


_SLASH = "(?:/|%2f)"
#: The /v1 calls whose path holds a token (L{nexusws.api.CALLS}: release, events, session, touch, extend).
TOKEN_CALLS = ("release", "events", "session", "touch", "extend")
_TOKEN_CALL = "(?:" + "|".join(_spelled(call) for call in TOKEN_CALLS) + ")"
_RELEASE_PREFIX = rf"({_SLASH}{_spelled('v')}(?:[0-9]|%3[0-9])+{_SLASH}{_TOKEN_CALL}{_SLASH})"
#: /v1/release/<token> (and events, session) in a URI's path (twisted.web routes on the
#: percent-decoded path).
_TOKEN_IN_PATH = re.compile(_RELEASE_PREFIX + r"[^/?#]+", re.I)
#: The same in free text, where the token ends at white space or a quote.
_TOKEN_IN_TEXT = re.compile(_RELEASE_PREFIX + r"""[^/?#\s'"\\]+""", re.I)
#: A query parameter's name and its "=" (maybe percent-encoded, as in a query that is
#: itself a parameter's value), after what may precede a parameter.
_PARAM = re.compile(r"""(?:^|(?<=[?&;\s,(\[{'"])|(?<=%3[fF])|(?<=%26)|(?<=%3[bB]))"""
                    r"((?:[A-Za-z0-9_.~+-]|%(?!23|26|3[bBdDfF])[0-9A-Fa-f]{2})+)(=|%3[dD])")
#: The same, quickly, for text without percent-encoding: a secret name and "=".
_PARAM_NAMES = "|".join(sorted(SECRET_PARAMS, key=len, reverse=True))
_NAME_EQ = re.compile(f"(?:{_PARAM_NAMES})=")  # searched in lower-cased text
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.~+-")
_ANY_PARAM = re.compile(_PARAM_NAMES)
#: A secret parameter's value: up to a separator, white space, an escape sequence
#: such as the \r of a bytes repr, or a quote that closes a repr's string.
_SECRET_VALUE = re.compile(r"""(?:\\(?![rnt])|[^&;#\s\\'"]|['"](?![\s,;)\]}]|$))*""")
_HEADER_NAMES = "|".join(sorted(SECRET_HEADERS, key=len, reverse=True))
#: "Authorization: Bearer X" as a raw header line (in a bytes repr, up to its \r\n).
_HEADER_LINE = re.compile(rf"((?:(?<![\w-])|(?<=\\n))(?:{_HEADER_NAMES})\s*:[ \t]*)((?:\\(?![rn])|[^\r\n\\])*)",
                          re.I)
_KEY_NAMES = "|".join(sorted(SECRET_HEADERS | SECRET_PARAMS, key=len, reverse=True))
#: 'authorization': 'Bearer X', "password": "x", b'cookie': [b'x'] (a dict's repr, JSON).
_QUOTED_KEY = re.compile(
    rf"""(['"])(?:{_KEY_NAMES})\1\s*:\s*(?:\[\s*)?(?:b?(['"])((?:\\.|(?!\2).)*)|([^,}}\]\s]+))""", re.I)
_QUOTED_NAME = re.compile(rf"""['"](?:{_KEY_NAMES})['"]""")  # searched in lower-cased text
#: A reservation token, wherever it appears.
_UUID = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")


# --- masking text: URIs, any line ------------------------------------------------------


def redact(uri):
    """Return C{uri} (str or bytes) as str with the values of secret query parameters masked.

    Parameter names are compared after percent-decoding, as twisted.web
    decodes them before the API sees them: C{security%5Ftoken=...} is masked
    too. Both C{&} and C{;} separate parameters, as in twisted.web's parser.
    The token of C{/v1/release/<token>} (events, session) is masked however the path is
    percent-encoded (C{/v1/%72elease/...} is routed to the release too).
    """
    if isinstance(uri, bytes):
        uri = uri.decode("latin-1")
    path, sep, query = uri.partition("?")
    path = _TOKEN_IN_PATH.sub(r"\1" + MASK, path)
    if not sep:
        return path
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition("=")
        if eq and unquote_plus(name, encoding="latin-1").lower() in SECRET_PARAMS:
            parts[i] = name + "=" + MASK
    return path + "?" + "".join(parts)


def redact_text(text):
    """C{text} (any log line, or a part of one) with every secret L{scrub} knows masked."""
    # Each pattern runs only where its words appear (most lines hold none), and
    # case-sensitively on the lower-cased text where it can: about 2 us a line.
    lowered = text.lower()
    decoded = unquote(text, encoding="latin-1").lower() if "%" in text else lowered
    if any(call in decoded for call in TOKEN_CALLS):
        text = _TOKEN_IN_TEXT.sub(r"\1" + MASK, text)
        lowered = text.lower()
    params = _ANY_PARAM.search(decoded) is not None
    headers = "authorization" in decoded or "cookie" in decoded
    if params and "=" in decoded:
        plain = "%" not in text and len(lowered) == len(text)
        text = _mask_params(text, lowered) if plain else _mask_encoded_params(text)
        lowered = text.lower()
    if headers:
        text = _HEADER_LINE.sub(lambda m: m.group(1) + MASK if m.group(2) else m.group(0), text)
        lowered = text.lower()
    if (params or headers) and _QUOTED_NAME.search(lowered):
        text = _QUOTED_KEY.sub(_mask_quoted, text)
    if text.count("-") >= 4:
        text = _UUID.sub(MASK, text)
    return text


def _mask_params(text, lowered):
    """C{text} (no percent-encoding in it; C{lowered} is it in lower case, as long)
    with the values of secret query parameters masked."""
    # Not the end of another name (mytoken=).
    return _mask_values(text, lowered, _NAME_EQ,
                        lambda m: not (m.start() and lowered[m.start() - 1] in _NAME_CHARS))


def _mask_encoded_params(text):
    """L{_mask_params} for text with percent-encoding, in names or separators (slower)."""
    # Not a secret: its value may be a query of its own (path=websockify%3Ftoken%3D...),
    # so the search goes on inside it.
    return _mask_values(text, text, _PARAM,
                        lambda m: unquote_plus(m.group(1), encoding="latin-1").lower() in SECRET_PARAMS)


def _mask_values(text, haystack, pattern, is_secret):
    """C{text} with the value after each match of C{pattern} in C{haystack} (C{text},
    or it lower-cased) that C{is_secret} masked, up to L{_SECRET_VALUE}'s end."""
    out, last, pos = [], 0, 0
    while (m := pattern.search(haystack, pos)) is not None:
        pos = m.end()
        if is_secret(m):
            end = _SECRET_VALUE.match(text, pos).end()
            out += [text[last:pos], MASK]
            last = pos = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _mask_quoted(m):
    if m.group(3) is not None:  # a quoted value
        start, end = m.span(3)
    else:
        start, end = m.span(4)
    whole = m.group(0)
    offset = m.start()
    return whole[:start - offset] + MASK + whole[end - offset:]


# --- the choke point every published event passes ----------------------------------

#: Event keys that are the log's machinery, never a secret: left as they are.
_MACHINERY = frozenset({"log_logger", "log_source", "log_level", "log_namespace", "log_time",
                        "log_format", "log_failure", "log_trace", "log_id", "log_flattened"})


class MaskedMessage(Exception):
    """The message of an exception a log event carried, with its secrets masked."""


def scrub(event):
    """C{event} itself, or, when what it would show holds a secret (see the module
    docstring), a copy whose text, fields and failure have the secrets masked.

    The copy's C{log_format} is its masked text (braces escaped); its
    C{log_failure} has the same type and traceback and a masked message.
    """
    text = _message(event)
    failure = event.get("log_failure")
    why = _failure_message(failure)
    clean_text = redact_text(text)
    clean_why = redact_text(why) if why else why
    if clean_text == text and clean_why == why:
        return event
    clean = {key: value if key in _MACHINERY else _masked_value(value) for key, value in event.items()}
    clean.pop("log_flattened", None)  # the fields again, for structured observers
    clean["log_format"] = clean_text.replace("{", "{{").replace("}", "}}")
    if clean_why != why:
        masked = copy.copy(failure)
        masked.value = MaskedMessage(clean_why)
        clean["log_failure"] = masked
        if event.get("failure") is failure:  # a legacy log.err event names it twice
            clean["failure"] = masked
    return clean


def _message(event):
    """What the event's line shows before a failure's traceback (as L{nexusws.logs.classic_text}
    makes it)."""
    fmt = event.get("log_format")
    if type(fmt) is str and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:  # Twisted's formatter copes with anything
            pass
    return formatEvent(event)


def _failure_message(failure):
    if failure is None:
        return ""
    try:
        return failure.getErrorMessage()
    except Exception:  # a failure whose message cannot be made shows none
        return ""


def _masked_value(value):
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        text = value.decode("latin-1")
        clean = redact_text(text)
        return value if clean == text else clean.encode("latin-1")
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return tuple(redact_text(item) for item in value)  # a legacy event's "message"
    try:
        text = str(value)
    except Exception:  # an object that cannot be shown shows no secret
        return value
    clean = redact_text(text)
    return value if clean == text else clean


def _scrub_published(event):
    """The global log publisher's first observer: masks secrets in C{event} in place,
    so every observer after it (twistd's log, the log file, stdout) sees them masked."""
    try:
        clean = scrub(event)
    except Exception as e:  # withhold the event rather than let a secret through
        clean = {key: event[key] for key in ("log_level", "log_namespace", "log_time") if key in event}
        clean.update(log_format="a log event was withheld: masking its secrets failed ({error})",
                     error=type(e).__name__)
    if clean is not event:
        event.clear()
        event.update(clean)


_installed = False


def install():
    """Make L{_scrub_published} the global publisher's first observer (once: a
    second call does nothing).

    L{nexusws.logs} calls this when it is imported: twistd imports the plugin's
    options, and the console script that module, before either adds the
    observers that write the log. One observer is there before: the one Twisted
    keeps until logging begins, which buffers events and prints critical ones on
    stderr at once; it is moved behind the scrubber (Twisted offers no public way
    to reach it, so if it is not where this expects, it is left alone).
    """
    global _installed
    if _installed:
        return
    _installed = True
    pending = getattr(globalLogBeginner, "_temporaryObserver", None)
    if pending is not None:
        globalLogPublisher.removeObserver(pending)
    globalLogPublisher.addObserver(_scrub_published)
    if pending is not None:
        globalLogPublisher.addObserver(pending)
