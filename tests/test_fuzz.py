"""Property-based tests (hypothesis) of what strangers control: REST requests,
service configuration files and WebSocket handshakes.

The properties: nothing raises out of nexusws, every answer is a clear 4xx/2xx
(never a 500), every error is one line, and no reservation or tunnel is left
behind by a request that did not succeed.
"""

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from nexusws.bridge import BridgeFactory
from nexusws.errors import StartupError
from nexusws.routing import FixedRouter, Target
from support.api import Api
from support.bridge import ControlledEndpoint, Transport
from support.services import config_services

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
CALLS = st.sampled_from(["reserve", "release", "status", "status_view", "stop", "", "v1", "x"])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


class Errors:
    """Collects error and critical log events (a traceback logged is a bug)."""

    def __enter__(self):
        self.events = []
        globalLogPublisher.addObserver(self._seen)
        return self

    def _seen(self, event):
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("log_failure"):
            self.events.append(event)

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self._seen)


def target_of(call, segments, params):
    path = "/v1/" + "/".join([call, *[quote(s, safe="") for s in segments]])
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return path + ("?" + query if query else "")


@SETTINGS
@given(call=CALLS, segments=st.lists(TEXT, max_size=3),
       params=st.lists(st.tuples(TEXT, TEXT), max_size=4))
def test_any_v1_request_gets_a_clear_answer_and_leaves_no_reservation_behind(tmp_path, call, segments,
                                                                              params):
    api = Api(tmp_path)
    with Errors() as errors:
        r = api.get(target_of(call, segments, params))
        assert r.status in (200, 400, 401, 403, 404, 405, 429, 503), r.raw
        if r.status >= 400:
            assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]
        if r.status == 200 and call == "reserve":
            token = r.json()["token"]
            assert api.get(f"/v1/release/{token}").status == 200
    assert errors.events == []
    assert api.live() == {}, "nothing may stay reserved"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


def load(path):
    """The config file's services, built, or the one-line StartupError message."""
    try:
        return config_services(str(path), MemoryReactorClock(), launcher=None)
    except StartupError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
        return message


@SETTINGS
@given(document=JSON_VALUES)
def test_any_json_document_as_service_config_loads_or_fails_in_one_line(tmp_path, document):
    path = tmp_path / "services.json"
    path.write_text(json.dumps(document))
    load(path)


@SETTINGS
@given(count=JSON_VALUES | st.integers(min_value=-10**30, max_value=10**30),
       options=JSON_VALUES, name=TEXT)
def test_a_service_with_any_count_and_options_loads_only_if_they_are_valid(tmp_path, count, options, name):
    script = tmp_path / "ok.py"
    script.write_text("from nexusws.services import RemoteServiceScript\n"
                      "class S(RemoteServiceScript):\n"
                      "    def start(self, index, options):\n"
                      "        return ('127.0.0.1', 1)\n")
    path = tmp_path / "services.json"
    path.write_text(json.dumps({name: {"script": "ok.py", "count": count, "options": options}}))
    result = load(path)
    valid = (isinstance(count, int) and not isinstance(count, bool) and count > 0
             and isinstance(options, dict) and name.strip() != "")
    if not isinstance(result, str):
        assert valid and [s.count for s in result] == [count]


@SETTINGS
@given(raw=st.sampled_from([
    b"GET /websockify?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"",
]), mutation=st.binary(max_size=200), position=st.integers(min_value=0, max_value=300))
def test_any_handshake_bytes_never_raise_and_leave_no_tunnel(raw, mutation, position):
    reactor = MemoryReactorClock()
    endpoint = ControlledEndpoint()

    class Factory(BridgeFactory):
        def backend_endpoint(self, target):
            return endpoint

    factory = Factory(FixedRouter(Target("127.0.0.1", 5900)), reactor)
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = factory.buildProtocol(peer)
    transport = Transport(protocol, True, peerAddress=peer)  # like TCP: unregistering is lenient
    protocol.makeConnection(transport)
    data = raw[:position] + mutation + raw[position:]
    with Errors() as errors:
        for i in range(0, len(data), 7):
            protocol.dataReceived(data[i:i + 7])
        reactor.advance(60)  # every handshake has timed out by now
        protocol.connectionLost(Failure(ConnectionDone()))
    assert errors.events == []
    assert factory.tunnels == set()
    assert all(d.called for _, d in endpoint.attempts), "no backend connection left pending"


@SETTINGS
@given(document=JSON_VALUES)
def test_any_json_document_as_groups_file_parses_or_fails_in_one_line(document):
    from nexusws.groups import GroupsError, parse_groups

    try:
        groups = parse_groups(json.dumps(document).encode())
    except GroupsError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(document, dict)
    for group, members in groups.items():
        assert isinstance(group, str) and all(isinstance(m, str) for m in members)


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_groups_file_parse_or_fail_in_one_line(raw):
    from nexusws.groups import GroupsError, parse_groups

    try:
        parse_groups(raw)
    except GroupsError as e:
        assert "\n" not in str(e) and str(e)
