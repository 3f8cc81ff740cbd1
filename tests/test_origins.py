"""The WebSocket origin allow-list (--allowed_origin): the matcher, the bridge in memory,
the option, and a real gateway with a real client."""

import asyncio
import re

import pytest
import websockets
from autobahn.websocket.types import ConnectionDeny
from twisted.python import usage
from websockets.asyncio.client import connect

from nexusws import tap
from nexusws.limits import OriginPattern, OriginPolicy, Refused, parse_origin
from nexusws.routing import Target
from support.bridge import Harness, lines
from support.tcp_peers import Backend

# --- the matcher ----------------------------------------------------------------


def allowed(patterns, origin):
    try:
        OriginPolicy(patterns).check(origin)
    except Refused as e:
        assert e.code == 403
        return False
    return True


@pytest.mark.parametrize("origin, expected", [
    ("https://app.example.com", True),
    ("HTTPS://APP.Example.COM", True),  # scheme and host compare without regard to case
    ("https://app.example.com:443", True),  # the default port is the same origin
    ("https://app.example.com/", True),
    ("http://app.example.com", False),  # another scheme
    ("https://app.example.com:8443", False),  # another port
    ("https://app.example.com.evil.net", False),  # a suffix is not the host
    ("https://evilapp.example.com", False),
    ("https://x.app.example.com", False),  # no wildcard, no subdomains
    ("https://evil.net/app.example.com", False),  # an origin has no path
    ("https://app.example.com@evil.net", False),  # nor user info
    ("null", False),
])
def test_exact_origin_matches_only_itself_case_insensitively_with_its_default_port(origin, expected):
    assert allowed(["https://app.example.com"], origin) is expected


@pytest.mark.parametrize("origin, expected", [
    ("https://a.example.com", True),
    ("https://a.b.example.com", True),  # any depth
    ("https://A.Example.com:443", True),
    ("https://example.com", False),  # the domain itself is not a subdomain
    ("https://evilexample.com", False),
    ("https://a.example.com.evil.net", False),
    ("http://a.example.com", False),
    ("https://a.example.com:444", False),
])
def test_subdomain_wildcard_matches_subdomains_only_on_the_same_scheme_and_port(origin, expected):
    assert allowed(["https://*.example.com"], origin) is expected


@pytest.mark.parametrize("origin, expected", [
    ("http://localhost:3000", True),
    ("http://localhost:8080", True),
    ("http://localhost", True),
    ("https://localhost:3000", False),
    ("http://localhost.evil.net:3000", False),
    ("http://127.0.0.1:3000", False),
])
def test_port_wildcard_matches_any_port_of_that_scheme_and_host(origin, expected):
    assert allowed(["http://localhost:*"], origin) is expected


def test_host_wildcard_matches_any_host_of_the_scheme_and_default_port():
    assert allowed(["https://*"], "https://anything.example")
    assert not allowed(["https://*"], "http://anything.example")
    assert not allowed(["https://*"], "https://anything.example:8443")


def test_ipv6_origins_match_with_brackets():
    assert allowed(["http://[::1]:8080"], "http://[::1]:8080")
    assert not allowed(["http://[::1]:8080"], "http://[::2]:8080")


def test_null_origin_is_refused_unless_listed_and_file_origins_count_as_null():
    """Pages from files or sandboxed frames send 'null' (Chrome: 'file://')."""
    assert not allowed(["https://app.example.com"], "null")
    assert not allowed(["https://app.example.com"], "file://")
    assert allowed(["https://app.example.com", "null"], "null")
    assert allowed(["NULL"], "file://")


def test_a_missing_origin_is_allowed_even_with_a_list():
    """Non-browser clients send no Origin (browsers always do on a WebSocket)."""
    assert allowed(["https://app.example.com"], "")


def test_without_patterns_every_origin_is_allowed_even_unparsable_ones():
    for origin in ("https://evil.net", "null", "", "garbage"):
        assert allowed([], origin)


@pytest.mark.parametrize("origin", ["garbage", "https://", "https://a b.com", "https://x.com:abc",
                                    "https://*.x.com", "https://x.com:*", "https://ex\x1bample.com"])
def test_unparsable_origins_are_refused_when_a_list_is_set(origin):
    assert not allowed(["https://*"], origin)


@pytest.mark.parametrize("pattern", [
    "example.com", "*", "https://a.*.com", "https://*example.com", "https://x.com/path",
    "https://x.com:99999", "https://x.com:0", "https://user@x.com", "https://x.com?q", "*://x.com",
    "https://**.x.com", "",
])
def test_bad_patterns_are_refused_with_a_reason(pattern):
    with pytest.raises(ValueError) as caught:
        OriginPattern(pattern)
    assert repr(pattern) in str(caught.value)


def test_parse_origin_gives_scheme_host_and_port():
    assert parse_origin("HTTPS://App.Example.com") == ("https", "app.example.com", 443)
    assert parse_origin("http://h:81") == ("http", "h", 81)
    assert parse_origin("null") == "null"


# --- the option -----------------------------------------------------------------------


def test_allowed_origin_is_repeatable_and_defaults_to_none():
    options = tap.Options()
    options.parseOptions(["9090", "--allowed_origin", "https://a.example.com",
                          "--allowed-origin=http://localhost:*", "--allowed_origin", "null"])
    assert [str(p) for p in options["allowed_origin"]] == [
        "https://a.example.com", "http://localhost:*", "null"]
    bare = tap.Options()
    bare.parseOptions(["9090"])
    assert bare.get("allowed_origin", []) == []


def test_a_bad_allowed_origin_is_a_usage_error_naming_the_option():
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions(["9090", "--allowed_origin", "https://x.com/app"])
    assert str(caught.value).startswith("--allowed_origin: ")


# --- the bridge, in memory ---------------------------------------------------------


class RecordingRouter:
    """Routes to one address and remembers every request it was asked about."""

    def __init__(self):
        self.requests = []

    def route(self, request):
        self.requests.append(request)
        return Target("127.0.0.1", 5900)


def refused_status(h):
    """The status line of the gateway's answer, for a refused handshake."""
    written = []
    original = h.server_transport.write
    h.server_transport.write = lambda data: (written.append(data), original(data))
    return written


def test_allowed_origin_opens_the_tunnel():
    h = Harness(origin="https://app.example.com", allowed_origins=["https://app.example.com"])
    h.flush()
    h.connect_backend()
    h.flush()
    assert h.client.opened


def test_refused_origin_answers_403_routes_nothing_connects_nothing_and_logs_the_origin(events):
    """Nothing is asked of the router (so nothing is launched) and no backend is dialled."""
    router = RecordingRouter()
    h = Harness(router=router, origin="https://evil.example.net",
                allowed_origins=["https://app.example.com"])
    written = refused_status(h)
    h.flush()
    assert not h.client.opened
    assert b"".join(written).startswith(b"HTTP/1.1 403 origin not allowed\r\n")
    assert router.requests == [] and h.endpoint.attempts == [] and h.targets == []
    refused = [line for line in lines(events) if "tunnel refused" in line]
    assert len(refused) == 1
    assert "403" in refused[0] and "'https://evil.example.net'" in refused[0]
    assert "127.0.0.1:40000" in refused[0]
    assert h.factory.counter.total == 0, "a refused origin holds no tunnel slot"


@pytest.mark.parametrize("origin, control", [
    ("https://ev\x1bil.example\x07.net", "\x1b"),  # C0: Autobahn itself may refuse the header
    ("https://ev\x9bil.example\x85.net", "\x9b"),  # C1 (obs-text on the wire): reaches the origin check
])
def test_an_origin_with_control_characters_is_refused_and_never_logged_raw(events, origin, control):
    """Whoever refuses it (Autobahn's header parser or the origin list), the handshake is
    refused with a 4xx, and no log line holds the control character raw, or a line break."""
    h = Harness(origin=origin, allowed_origins=["https://app.example.com"])
    written = refused_status(h)
    h.flush()
    assert not h.client.opened
    status = b"".join(written).split(b"\r\n", 1)[0]
    assert re.fullmatch(rb"HTTP/1.1 4\d\d .*", status), status
    logged = lines(events)
    assert logged, "the refusal is logged"
    for line in logged:
        assert control not in line and "\x07" not in line and "\x85" not in line and "\n" not in line, line
    assert h.factory.counter.total == 0


def test_a_refused_origin_that_reaches_the_check_is_quoted_in_its_log_line(events):
    """An origin with a C1 control character (legal obs-text in HTTP) is refused by the
    origin list, and its line names it with the character quoted."""
    h = Harness(origin="https://ev\x9bil.example.net", allowed_origins=["https://app.example.com"])
    h.flush()
    refused = [line for line in lines(events) if "tunnel refused" in line]
    assert len(refused) == 1 and "403" in refused[0]
    assert "%C2%9B" in refused[0] or "%9B" in refused[0], refused[0]


def test_refused_origin_launches_no_session():
    """A session route is never asked for: the origin is checked before routing."""

    class LaunchingRouter:
        launched = 0

        def route(self, request):
            self.launched += 1
            raise ConnectionDeny(500, "must not be reached")

    router = LaunchingRouter()
    h = Harness(router=router, origin="https://evil.example.net", allowed_origins=["https://*.example.com"])
    h.flush()
    assert router.launched == 0 and not h.client.opened


def test_null_origin_is_accepted_when_no_list_is_configured():
    """The default keeps pages loaded from files working (Autobahn's allowNullOrigin stays on)."""
    h = Harness(origin="null")
    h.flush()
    h.connect_backend()
    h.flush()
    assert h.client.opened


def test_null_origin_is_refused_with_a_list_unless_null_is_on_it():
    h = Harness(origin="null", allowed_origins=["https://app.example.com"])
    h.flush()
    assert not h.client.opened and h.endpoint.attempts == []
    h = Harness(origin="null", allowed_origins=["https://app.example.com", "null"])
    h.flush()
    h.connect_backend()
    h.flush()
    assert h.client.opened


def test_client_without_origin_is_accepted_with_a_list():
    h = Harness(origin=None, allowed_origins=["https://app.example.com"])
    h.flush()
    h.connect_backend()
    h.flush()
    assert h.client.opened


# --- a real gateway, a real client ---------------------------------------------------------


def test_real_gateway_refuses_a_foreign_origin_with_403_and_logs_it_and_accepts_a_listed_one(gateway):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(["--ws_listen", "tcp:0:interface=127.0.0.1", "--client_hostname", "127.0.0.1",
                          "--client_port", str(backend.port), "--allowed_origin", "https://*.example.com",
                          "--allowed_origin", "http://localhost:*"])
            with pytest.raises(websockets.InvalidStatus) as info:
                async with connect(gw.ws_url, origin="https://evil.example.net"):
                    pass
            assert info.value.response.status_code == 403
            line = gw.wait_for(r"tunnel refused").string
            assert "403" in line and "https://evil.example.net" in line
            assert backend.peers == [], "nothing may be connected for a refused origin"
            for origin in ("https://app.example.com", "http://localhost:3000", None):
                async with connect(gw.ws_url, origin=origin, subprotocols=["binary"]) as ws:
                    await ws.send(b"ping")
                    assert await ws.recv() == b"ping"
    asyncio.run(asyncio.wait_for(scenario(), 60))
