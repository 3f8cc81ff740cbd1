"""Log lines: secrets never reach them (redact, printable), and they are Twisted's classic text, made cheaply."""

import io
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, Logger, formatEventAsClassicLogText, textFileLogObserver
from twisted.python.failure import Failure

from nexusws.logs import classic_text, printable, redact, text_file_observer


def test_release_tokens_in_the_path_are_masked():
    assert redact("/v1/release/5121d252-ce4c-4172-a1ca-9cbb2e8f026c") == "/v1/release/***"
    assert redact(b"/v1/release/abc?security_token=k") == "/v1/release/***?security_token=***"


def test_other_paths_are_left_alone():
    assert redact("/v1/status") == "/v1/status"
    assert redact("/files/release/notes.txt") == "/files/release/notes.txt"


def test_secret_query_values_are_masked_under_any_spelling_of_their_name():
    assert redact("/ws?token=T&path=websockify") == "/ws?token=***&path=websockify"
    assert redact("/x?t%6Fken=T;password=p") == "/x?t%6Fken=***;password=***"


def test_printable_keeps_one_line():
    assert "\n" not in printable("a\nb\r\x1b[31m")
    assert len(printable("x" * 1000)) <= 203


# --- the log line: Twisted's format, made cheaply ---------------------------------

T = 1795000000.25


def ev(fmt, **fields):
    return {"log_format": fmt, "log_namespace": "nexusws.x", "log_level": LogLevel.info,
            "log_time": T, **fields}


def failure():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        return Failure()


EVENTS = [
    ev("plain"),
    ev("http {client} \"{uri}\" {code} {length}", client="127.0.0.1", uri="/v1/x", code=200,
       length="-"),
    ev("{a!r} {b:>6} {c:.2f} {d!s}", a="x'y", b="r", c=1 / 3, d=b"raw"),
    ev("{o.name} {l[1]} {m[k]}", o=types.SimpleNamespace(name="n"), l=[1, 2], m={"k": "v"}),
    ev("{{literal}} {x}", x="{not a field}"),
    ev("two\nlines {x}", x="and\nthree"),
    ev("called {f()}", f=lambda: "yes"),  # Twisted's extension: not str.format's
    ev("missing {nope}"),
    ev("bad spec {x:Q}", x=5),
    ev("positional {}"),
    ev(""),
    ev(b"bytes {x}", x=1),
    ev(None),
    ev("system {x}", x=1, log_system="custom"),
    ev("system {x}", x=1, log_system=42),
    ev("no level", log_level=None),
    {"log_format": "no namespace, no time", "log_level": LogLevel.warn},
    ev("no time", log_time=None),
    ev("failure {x}", x=1, log_failure=failure()),
    ev("flat", log_flattened={"x!:": "1"}),
    ev("unicode {x}", x="é∂\u2028"),
    ev("negative time", log_time=-1.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_a_log_line_is_twisteds_classic_text_exactly(event):
    assert classic_text(dict(event)) == formatEventAsClassicLogText(dict(event))


@given(st.floats(0, 4e9), st.text(), st.text())
def test_any_time_and_text_make_twisteds_line(when, text, system):
    event = ev("{text}", text=text, log_time=when)
    assert classic_text(event) == formatEventAsClassicLogText(event)
    event = ev("x", log_time=when, log_system=system)
    assert classic_text(event) == formatEventAsClassicLogText(event)


def test_the_gateways_observer_writes_what_twisteds_text_observer_writes():
    ours, theirs = io.StringIO(), io.StringIO()
    log = Logger(namespace="nexusws.t", observer=lambda e: (
        text_file_observer(ours)(e), textFileLogObserver(theirs)(e)))
    log.info("reservation {label}: {old} -> {new}", label="abc... demo#0", old="new", new="reserved")
    log.warn("odd {x!r}", x={"k": [1]})
    log.failure("it failed", failure())
    assert ours.getvalue() == theirs.getvalue() and ours.getvalue().count("\n") > 3


@given(st.text() | st.text(alphabet=[chr(c) for c in range(32, 127)]))
def test_printable_quotes_exactly_what_is_not_printable_ascii(text):
    from urllib.parse import quote
    expected = quote(text, safe=" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert printable(text, limit=10**6) == expected
