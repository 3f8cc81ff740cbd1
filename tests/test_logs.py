"""Log lines: secrets never reach them, whoever logs them and at any --verbose (redact,
redact_text, the scrubber every published event passes, a real gateway at --verbose 3);
a token is named by its tag; a refused handshake is one line; the log file is private and
holds each line once; and lines are Twisted's classic text, made cheaply."""

import ast
import hashlib
import io
import json
import os
import re
import stat
import time
import types
import urllib.request
from pathlib import Path

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error
from twisted.logger import (
    Logger,
    LogLevel,
    eventAsText,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from nexusws import logs
from nexusws.logs import classic_text, printable, tag, text_file_observer
from nexusws.scrub import MASK, redact, redact_text, scrub


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


# --- secrets: masked in every line, whoever logs it -------------------------------------

TOKEN = "4f7d2c1e-9b3a-4e6f-8a05-d2c6b1e93f70"

#: Lines as Autobahn (--verbose 2 and above), twisted.web and others write them, and
#: what they become. Each secret is a different word, so a leak says which.
FREE_TEXT = [
    # Autobahn: the raw request (a bytes repr), its status line, its headers (a dict).
    ("received HTTP request:\n\n\tb'GET /websockify?token=TOKSECRET&password=PWSECRET HTTP/1.1\\r\\n"
     "Host: h:1\\r\\nAuthorization: Bearer BEARERSECRET\\r\\nCookie: sid=COOKIESECRET\\r\\nUser-Agent: x\\r\\n\\r\\n'",
     "received HTTP request:\n\n\tb'GET /websockify?token=***&password=*** HTTP/1.1\\r\\n"
     "Host: h:1\\r\\nAuthorization: ***\\r\\nCookie: ***\\r\\nUser-Agent: x\\r\\n\\r\\n'"),
    ("received HTTP status line in opening handshake : GET /ws?x=1&security_token=SECSECRET;vnc_password=V HTTP/1.1",
     "received HTTP status line in opening handshake : GET /ws?x=1&security_token=***;vnc_password=*** HTTP/1.1"),
    ("received HTTP headers in opening handshake : {'host': 'h', 'authorization': 'Bearer BEARERSECRET', "
     "'cookie': 'sid=COOKIESECRET', 'proxy-authorization': 'Basic PROXYSECRET', 'user-agent': 'x'}",
     "received HTTP headers in opening handshake : {'host': 'h', 'authorization': '***', "
     "'cookie': '***', 'proxy-authorization': '***', 'user-agent': 'x'}"),
    # twisted.web's Headers repr; JSON; a raw response header
    ("Headers({b'authorization': [b'Bearer BEARERSECRET'], b'x': [b'y']})",
     "Headers({b'authorization': [b'***'], b'x': [b'y']})"),
    ('options {"password": "PWSECRET", "size": "800x600", "primary_password": 1234}',
     'options {"password": "***", "size": "800x600", "primary_password": ***}'),
    ("HTTP/1.1 200 OK\nSet-Cookie: s=COOKIESECRET; HttpOnly\nServer: x",
     "HTTP/1.1 200 OK\nSet-Cookie: ***\nServer: x"),
    # names in any case or percent-encoded; a query inside a parameter (noVNC's vnc.html)
    ("GET /p?T%6Fken=TOKSECRET&PASSWORD=PWSECRET&tokenish=ok&mytoken=ok",
     "GET /p?T%6Fken=***&PASSWORD=***&tokenish=ok&mytoken=ok"),
    ("GET /vnc.html?path=websockify%3Ftoken%3DTOKSECRET%26x%3D1&autoconnect=1",
     "GET /vnc.html?path=websockify%3Ftoken%3D***&autoconnect=1"),
    # the release path, however encoded
    ("GET /v1/release/TOKSECRET?security_token=SECSECRET HTTP/1.1",
     "GET /v1/release/***?security_token=*** HTTP/1.1"),
    ('"GET /v1/%72elease/TOKSECRET HTTP/1.1" 200', '"GET /v1/%72elease/*** HTTP/1.1" 200'),
    ("GET /n1/v2/REL%45ASE/TOKSECRET", "GET /n1/v2/REL%45ASE/***"),
    ("GET /v1/release%2FTOKSECRET", "GET /v1/release%2F***"),
    ('"GET /v1/session/e502%2d249c HTTP/1.1" 200 139 "http://h/v1/events/aa4f%2Dbf7e" "curl/7"',
     '"GET /v1/session/*** HTTP/1.1" 200 139 "http://h/v1/events/***" "curl/7"'),
    # a reservation token wherever it stands, in any words
    (f"start failed for {TOKEN}: boom", "start failed for ***: boom"),
    (f"path=websockify%253Ftoken%253D{TOKEN.upper()}", "path=websockify%253Ftoken%253D***"),
]


@pytest.mark.parametrize("text, expected", FREE_TEXT, ids=range(len(FREE_TEXT)))
def test_every_kind_of_secret_is_masked_in_free_text(text, expected):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "http 127.0.0.1 \"GET /counting.txt?a=1 HTTP/1.1\" 200 300 \"-\" \"curl/8\"",
    "reservation #1a2b3c4d demo#0: reserved -> starting",
    "x=token%3Dc and /files/release/notes.txt and Sec-WebSocket-Key: abc== and key",
    "tunnel closed: 127.0.0.1:5 -> localhost:6: 5 bytes up, 5 bytes down, 0.004s, close 1000 ",
])
def test_lines_without_secrets_are_left_as_they_are(text):
    assert redact_text(text) == text


@pytest.mark.parametrize("uri, shown", [
    ("/v1/%72elease/5121d252-ce4c-4172-a1ca-9cbb2e8f026c", "/v1/%72elease/***"),
    ("/v1/session/5121d252%2dce4c%2d4172%2da1ca%2d9cbb2e8f026c", "/v1/session/***"),
    ("/v1/%73ession/%35%31%32%31", "/v1/%73ession/***"),
    ("/v1/events/5121d252%2Dce4c?last_event_id=3", "/v1/events/***?last_event_id=3"),
    ("/v1/%72%65%6c%65%61%73%65/abc?x=1", "/v1/%72%65%6c%65%61%73%65/***?x=1"),
    ("/v1/RELEASE/abc", "/v1/RELEASE/***"),
    ("/%76%31/release/abc", "/%76%31/release/***"),
    ("/v1%2Frelease%2Fabc", "/v1%2Frelease%2F***"),
    ("/n1/v1/release/abc", "/n1/v1/release/***"),
])
def test_release_tokens_are_masked_in_percent_encoded_paths_too(uri, shown):
    """twisted.web routes on the percent-decoded path: /v1/%72elease/T releases T."""
    assert redact(uri) == shown


def test_a_release_through_an_encoded_path_works_and_logs_no_token(tmp_path):
    """/v1/%72elease/<token> releases the reservation (twisted.web decodes the path),
    and no log line, nor any field of any event, holds the token."""
    from support.api import Api

    api = Api(tmp_path)
    token = api.reserve()
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        r = api.get(f"/v1/%72elease/{token}")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert r.status == 200 and api.live() == {}
    text = "\n".join(eventAsText(e) for e in seen)
    assert '"GET /v1/%72elease/*** HTTP/1.1" 200' in text
    assert token not in text and token[:8] not in text
    assert not [e for e in seen if any(token in repr(v) for v in e.values())]


def test_a_token_is_named_by_its_tag_only():
    assert tag(TOKEN) == "#" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8] == tag(TOKEN)
    assert tag(TOKEN) != tag(TOKEN.replace("4f7d", "4f7e")) and len(tag("x")) == 9


def test_unknown_token_errors_carry_no_token_material():
    from twisted.internet.task import Clock

    from nexusws.sessions.registry import Registry, UnknownToken

    registry = Registry([], Clock())
    with pytest.raises(UnknownToken) as caught:
        registry.activate(TOKEN)
    assert tag(TOKEN) in str(caught.value) and TOKEN[:4] not in str(caught.value)


def test_an_event_without_secrets_is_passed_on_untouched():
    event = ev("http {client} \"{uri}\" {code}", client="127.0.0.1", uri="/a?b=1", code=200)
    assert scrub(event) is event


def test_an_event_with_secrets_is_masked_in_its_text_and_every_field():
    event = ev("{kind} {uri} from {peer!r}", kind="handshake", uri="/ws?token=TOKSECRET&a=1",
               peer={"authorization": "Bearer BEARERSECRET"}, raw=b"GET /?password=PWSECRET",
               message=("/v1/release/TOKSECRET",), code=7)
    clean = scrub(event)
    assert "SECRET" in repr(event)  # the emitter's own dict is not changed by scrub()
    assert classic_text(clean) == classic_text(event).replace("TOKSECRET", MASK).replace(
        "Bearer BEARERSECRET", MASK)
    assert "SECRET" not in repr(clean) and "SECRET" not in formatEventAsClassicLogText(clean)
    assert clean["code"] == 7 and clean["log_level"] is LogLevel.info


@pytest.mark.errors_expected  # it logs a failure on purpose
def test_every_published_event_is_masked_whoever_logs_it(events, capfd):
    """Autobahn's loggers, Twisted's legacy log and a failure's message: every observer
    added after nexusws.logs was imported (the log file, twistd's log, stdout) sees them
    masked, and so does stderr, where Twisted prints critical events until logging begins."""
    autobahn = Logger(namespace="autobahn.twisted.websocket.WebSocketServerProtocol")
    autobahn.debug("received HTTP request:\n\n{data}\n\n",
                   data=b"GET /?token=TOKSECRET HTTP/1.1\r\nAuthorization: Bearer BEARERSECRET\r\n\r\n")
    legacy_log.msg("GET /v1/release/TOKSECRET?password=PWSECRET")
    password = "PW" + "SECRET"  # not in the traceback's source line
    try:
        raise ValueError(f"cannot open vnc://?rfb_port=1&primary_password={password} for {TOKEN}")
    except ValueError:
        Logger(namespace="nexusws.x").failure("starting failed")
    assert len(events) == 3
    text = "\n".join(formatEventAsClassicLogText(e) for e in events)
    assert not re.search("SECRET|" + TOKEN, text) and "SECRET" not in repr(events), text
    stderr = capfd.readouterr().err
    if "starting failed" in stderr:  # logging has not begun in this process: Twisted printed it
        assert "primary_password=*** for ***" in stderr and password not in stderr and TOKEN not in stderr
    assert "ValueError: cannot open vnc://?rfb_port=1&primary_password=*** for ***" in text
    assert events[2]["log_failure"].check(ValueError) and "Traceback" in text
    assert "Authorization: ***" in text and "release/***?password=***" in text


# --- a refused handshake: one line ---------------------------------------------------------


def _refusals(events):
    """The gateway's lines about refusals at --verbose 0 (not the in-memory client's)."""
    return [formatEvent(e) for e in events
            if e.get("log_level") not in (None, LogLevel.debug)
            and "ClientProtocol" not in e.get("log_namespace", "")
            and re.search("refused|failing|dropping|unreachable", formatEvent(e))]


def test_a_refused_handshake_is_one_line_ours_with_the_os_message(events):
    """A backend refusing the connection: one line at --verbose 0, 'Connection refused', not '111';
    Autobahn's 'failing WebSocket opening handshake' and 'dropping connection' are debug lines."""
    from support.bridge import Harness

    logs.set_verbosity(0)
    h = Harness()
    h.flush()
    h.fail_backend(error.ConnectionRefusedError(111, "Connection refused"))
    h.flush()
    assert not h.client.opened
    assert _refusals(events) == [
        "tunnel refused: 127.0.0.1:40000 /websockify?token=*** -> 127.0.0.1:5900: 502 "
        "backend 127.0.0.1:5900 unreachable: Connection refused"]


def test_a_handshake_autobahn_refuses_itself_is_one_line_ours_too(events):
    """A request without the Upgrade header (Autobahn's own check): one line, ours."""
    from support.bridge import Harness

    logs.set_verbosity(0)
    h = Harness()
    server, transport = h.server, h.server_transport
    server.dataReceived(b"GET /ws?token=TOKSECRET HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    assert _refusals(events) == ["handshake refused: 127.0.0.1:40000: 426 HTTP Upgrade header missing"]
    assert transport.disconnecting or transport.disconnected


def test_autobahns_refusal_lines_are_debug_lines_at_verbose_2(events):
    from support.bridge import Harness

    logs.set_verbosity(2)
    try:
        h = Harness()
        h.flush()
        h.fail_backend(error.ConnectionRefusedError(111, "Connection refused"))
        h.flush()
    finally:
        logs.set_verbosity(0)
    autobahn = [(e["log_level"], formatEvent(e)) for e in events
                if e.get("log_namespace", "").startswith("autobahn.twisted.websocket.WebSocketServer")
                and re.search("failing|dropping", formatEvent(e))]
    assert [level for level, _ in autobahn] == [LogLevel.debug, LogLevel.debug], autobahn
    assert len(_refusals(events)) == 1


# --- the log file ---------------------------------------------------------------------------

LOOPBACK = ["--ws_listen", "tcp:0:interface=127.0.0.1"]
VIAS = pytest.mark.parametrize("via", ["cli", "twistd"])


@pytest.fixture
def umask_022():
    """The usual umask, so that a file created without an explicit mode would be 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@VIAS
def test_the_log_file_is_created_private_and_holds_each_line_once(gateway, echo_port, tmp_path, umask_022, via):
    path = tmp_path / "gw.log"
    gw = gateway([*LOOPBACK, "--client_port", str(echo_port), "--log_file", str(path)], via=via, wait=False)
    for _ in range(300):
        if path.exists() and "listening on" in path.read_text():
            break
        assert gw.proc.poll() is None, gw.log
        time.sleep(0.05)
    assert gw.stop() == 0
    text = path.read_text()
    lines = ("nexusws 0.1.0 starting", "Autobahn NVX acceleration", "--ws_listen listening on", "nexusws stopping")
    assert (oct(stat.S_IMODE(path.stat().st_mode)), [text.count(line) for line in lines]) == (
        oct(0o600), [1, 1, 1, 1]), text


def test_an_existing_log_file_keeps_its_mode(gateway, echo_port, tmp_path):
    path = tmp_path / "gw.log"
    path.write_text("before\n")
    path.chmod(0o640)
    gw = gateway([*LOOPBACK, "--client_port", str(echo_port), "--log_file", str(path)], wait=False)
    for _ in range(300):
        if "listening on" in path.read_text():
            break
        time.sleep(0.05)
    gw.stop()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text().startswith("before\n")


# --- a real gateway at --verbose 3: no secret anywhere in its log -------------------------------

DEMO = Path(__file__).resolve().parent.parent / "config" / "demo"


@VIAS
def test_no_secret_reaches_the_log_of_a_real_gateway_at_verbose_3(gateway, echo_port, tmp_path, via):
    """WebSockets with ?token=...&password=..., Authorization and Cookie headers (basic
    mode and a session), a reservation with a password, a release by a percent-encoded
    path, status calls with the security token: the console script's stdout, twistd's
    log and its --log_file show none of the secrets; a token is named by its tag."""
    from websockets.sync.client import connect

    (tmp_path / "www").mkdir()
    (tmp_path / "sessions.json").write_text(json.dumps(
        {"Demo Session": {"script": str(DEMO / "demo_session.py"), "count": 2, "options": {}}}))
    security = "SECURITYSECRET-0123"
    token_file = tmp_path / "token"
    token_file.write_text(security + "\n")
    log_file = tmp_path / "gw.log"
    gw = gateway(["--verbose", "3", *LOOPBACK, "--http_listen", "tcp:0:interface=127.0.0.1",
                  "--http_directory", str(tmp_path / "www"), "--client_port", str(echo_port),
                  "--remote_session_config", str(tmp_path / "sessions.json"),
                  "--state_file", str(tmp_path / "state.json"), "--security_token_file", str(token_file),
                  # the console script logs to stdout or to the file; twistd to both
                  *(["--log_file", str(log_file)] if via == "twistd" else [])], via=via, http=True)
    bearer = {"Authorization": f"Bearer {security}"}
    secrets = {security, "PWSECRET", "TOKSECRET", "BEARERSECRET", "COOKIESECRET", "PW2SECRET"}

    headers = {"Authorization": "Bearer BEARERSECRET", "Cookie": "sid=COOKIESECRET"}
    with pytest.raises(websockets.InvalidStatus):  # an unknown token: refused
        connect(f"{gw.ws_url}/websockify?token=TOKSECRET&password=PWSECRET", additional_headers=headers,
                open_timeout=10)
    gw.wait_for("tunnel refused")
    with connect(f"{gw.ws_url}/websockify?password=PWSECRET", additional_headers=headers, open_timeout=10) as ws:
        ws.send(b"basic mode")
        assert ws.recv(timeout=10) == b"basic mode"

    def call(path, headers=bearer):
        request = urllib.request.Request(gw.http_url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    kept = call("/v1/reserve/Demo%20Session?password=PW2SECRET")["token"]
    used = call(f"/v1/reserve/Demo%20Session?security_token={security}&password=PW2SECRET", {})["token"]
    secrets |= {kept, used}
    with connect(f"{gw.ws_url}/any/path?token={used}&password=PW2SECRET", additional_headers=headers,
                 open_timeout=15) as ws:
        assert ws.recv(timeout=10).startswith(b"hello from the nexusws demo")
    # Kept for the grace (--reconnect_grace, 60 s): its lines and its release are logged too.
    gw.wait_for(re.escape(f"reservation {tag(used)} Demo Session#1: active -> detached"))
    assert call(f"/v1/release/{used}?password=PW2SECRET") == {"released": used}
    gw.wait_for(re.escape(f"reservation {tag(used)} Demo Session#1: stopping -> released"))
    assert call(f"/v1/%72elease/{kept}") == {"released": kept}
    call(f"/v1/status?security_token={security}", {"Cookie": "sid=COOKIESECRET"})
    assert gw.stop() == 0

    outputs = [("the gateway's output", gw.log)]
    if via == "twistd":
        outputs.append(("--log_file", log_file.read_text()))
    for name, text in outputs:
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{leaked} in {name}:\n{text}"
        pieces = {t[i:i + 8] for t in (kept, used) for i in range(len(t) - 7)}
        assert not [p for p in pieces if p in text], name
        assert "[autobahn.twisted.websocket.WebSocketServerProtocol#debug] received HTTP request" in text
        assert "/v1/%72elease/***" in text and f"reservation {tag(kept)} Demo Session#0" in text
    assert "PW2SECRET" not in (tmp_path / "state.json").read_text()


# --- logger namespaces: one scheme, checked ----------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "nexusws"


def _logger_calls():
    """Every call of C{logger(...)} in the package, subpackages included: (where, the call)."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                if name == "logger":
                    calls.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node))
    return calls


def _area(call):
    """The area a call's namespace names: None for the root 'nexusws', 'service.' for a
    service's own; raises AssertionError for anything else."""
    assert len(call.args) == 1 and not call.keywords, "logger(namespace), one literal argument"
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        namespace = arg.value
        if namespace == "nexusws":
            return None
        assert namespace.startswith("nexusws."), namespace
        if namespace.startswith(logs.SERVICE_PREFIX) and len(namespace) > len(logs.SERVICE_PREFIX):
            return "service."
        assert namespace[len("nexusws."):] in logs.AREAS, f"{namespace}: an area not in nexusws.logs.AREAS"
        return namespace[len("nexusws."):]
    # f"nexusws.service.{name}": a service's own logger
    assert isinstance(arg, ast.JoinedStr), "a namespace this scan cannot read: write it as a literal"
    head, *rest = arg.values
    assert isinstance(head, ast.Constant) and head.value == logs.SERVICE_PREFIX and rest, ast.unparse(arg)
    return "service."


def test_every_logger_in_the_package_uses_the_one_namespace_scheme():
    """Each logger(...) call names 'nexusws', 'nexusws.<area>' with an area of logs.AREAS,
    or 'nexusws.service.<name>'; and every area of the table is in use (it is the list)."""
    calls = _logger_calls()
    assert len(calls) >= 15 and any(where.startswith("nexusws/bridge.py:") for where, _ in calls), calls
    used, wrong = set(), []
    for where, call in calls:
        try:
            used.add(_area(call))
        except AssertionError as e:
            wrong.append(f"{where}: {ast.unparse(call)}: {e}")
    assert not wrong, "\n".join(wrong)
    assert None in used and "service." in used
    assert logs.AREAS == used - {None, "service."}, "areas no module uses"


@pytest.mark.parametrize("namespace", ["nexusws", "nexusws.bridge", "nexusws.balancer.mail",
                                       "nexusws.service.Demo Session"])
def test_logger_takes_a_namespace_of_the_scheme(namespace):
    assert logs.logger(namespace).namespace == namespace


@pytest.mark.parametrize("namespace", ["", "nexus", "nexusws.", "nexusws.nope", "nexusws.Bridge",
                                       "nexusws.bridge.more", "nexusws.service", "nexusws.service.",
                                       "other.bridge", "nexuswsbridge", None])
def test_logger_refuses_a_namespace_outside_the_scheme(namespace):
    with pytest.raises(ValueError, match="AREAS"):
        logs.logger(namespace)


def test_the_tunnels_lines_keep_their_namespace():
    """The tunnel's logger is a class attribute: Twisted names its lines after the class."""
    from nexusws.bridge import BridgeProtocol

    assert BridgeProtocol._log.namespace == "nexusws.bridge.BridgeProtocol"
