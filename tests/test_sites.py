"""Cross-site pages and DNS rebinding against the /v1 API (nexusws.sites.Sites):
the matcher, the options, the API in memory, and a real gateway with curl-like
and browser-like requests."""

import json
import socket
import urllib.request

import pytest
from twisted.python import usage

from nexusws import tap
from nexusws.sites import Sites, split_host
from support.api import Api
from support.raw_http import exchange, status_of


def refusal(host, origin=None, fetch_site=None, **kw):
    return Sites(**kw).refusal(host, origin, fetch_site)


@pytest.mark.parametrize("host", [
    None, "127.0.0.1", "127.0.0.1:9000", "[::1]:9000", "10.1.2.3", "localhost", "LOCALHOST:9000",
    "localhost.", socket.gethostname(),
])
def test_address_literals_localhost_and_this_hosts_name_are_accepted(host):
    assert refusal(host) is None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9000", "127.0.0.1.nip.io", "localhost.evil"])
def test_another_name_in_host_is_refused_as_dns_rebinding(host):
    assert "not a name of this gateway" in refusal(host)


def test_allowed_host_adds_names_and_star_allows_any():
    assert refusal("nexus.example.com", hosts=["Nexus.Example.com"]) is None
    assert refusal("evil.example", hosts=["nexus.example.com"]) is not None
    assert refusal("evil.example", hosts=["*"]) is None


def test_a_malformed_host_is_refused():
    assert "malformed Host" in refusal("a:b:c")


@pytest.mark.parametrize("host, origin", [
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("localhost:9000", "http://localhost:9000"),
    ("nexus.example.com", "https://nexus.example.com"),  # behind nginx: Host without a port
])
def test_a_same_origin_page_is_accepted(host, origin):
    assert refusal(host, origin, "same-origin", hosts=["nexus.example.com"]) is None


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://127.0.0.1:3000", "http://localhost:9001", "null", "file://",
    "not an origin",
])
def test_a_page_of_another_origin_is_refused(origin):
    assert "may not call the API" in refusal("127.0.0.1:9000", origin, "cross-site")


def test_a_cross_site_or_same_site_request_without_origin_is_refused():
    """An <img src=http://127.0.0.1:9000/v1/stop> on another site, or on another port of
    this host (same-site to a browser): no Origin, but marked."""
    assert "cross-site" in refusal("127.0.0.1:9000", None, "cross-site")
    assert "same-site" in refusal("127.0.0.1:9000", None, "same-site")
    assert "request (Sec-Fetch-Site)" in refusal("127.0.0.1:9000", None, "cross-site, none")
    assert refusal("127.0.0.1:9000", None, "none") is None  # typed into the address bar
    assert refusal("127.0.0.1:9000", None, "same-origin") is None
    assert refusal("127.0.0.1:9000", "http://127.0.0.1:9000", "same-origin") is None


def test_a_listed_origin_may_call_even_cross_site():
    sites = {"origins": ["https://portal.example.com"]}
    assert refusal("127.0.0.1:9000", "https://portal.example.com", "cross-site", **sites) is None
    assert refusal("127.0.0.1:9000", "https://evil.example", "cross-site", **sites) is not None


def test_split_host():
    assert split_host("Example.COM.:8080") == ("example.com", 8080)
    assert split_host("[::1]:9000") == ("[::1]", 9000)
    assert split_host("a:b:c") is None


# --- the options -----------------------------------------------------------------------------


def parse(*args):
    options = tap.Options()
    options.parseOptions([*args, "0"])
    return options


def test_allowed_host_and_origin_and_advertise_url_reach_the_access_policy():
    options = parse("--allowed_host", "nexus.example.com", "--allowed_origin", "https://portal.example.com",
                    "--advertise_url", "wss://node7.example.com/ws")
    sites = options["access"].sites
    assert {"nexus.example.com", "node7.example.com", "localhost"} <= sites.hosts
    assert refusal("x", hosts=["*"]) is None
    assert sites.refusal("node7.example.com", "https://portal.example.com", "cross-site") is None


@pytest.mark.parametrize("value", ["nexus.example.com:80", "", "a b"])
def test_a_bad_allowed_host_is_a_one_line_error(value):
    with pytest.raises(usage.UsageError, match=r"^--allowed_host: "):
        parse("--allowed_host", value)


# --- the API ----------------------------------------------------------------------------------


def test_a_cross_site_page_cannot_stop_the_gateway_or_reserve(tmp_path, events):
    api = Api(tmp_path)
    for call in ("/v1/stop", f"/v1/reserve/{api.services[0].name}"):
        r = api.get(call, headers=[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")])
        assert r.status == 403 and "may not call the API" in r.json()["error"]
        r = api.get(call, headers=[("Sec-Fetch-Site", "cross-site")])
        assert r.status == 403
    api.clock.advance(1)
    assert api.stop_calls == [] and api.live() == {}
    assert any("/v1 refused" in e.get("log_format", "") for e in events)


def test_a_rebound_name_cannot_read_the_tokens(tmp_path):
    api = Api(tmp_path)
    api.reserve()
    r = api.get("/v1/status", headers=[("Host", "evil.example")])
    assert r.status == 403 and "token" not in r.raw.decode("latin-1").split("\r\n\r\n", 1)[1]


def test_curl_and_same_origin_pages_keep_working(tmp_path):
    api = Api(tmp_path)
    assert api.get("/v1/status").status == 200  # no Origin, no Sec-Fetch-Site
    r = api.get("/v1/status", headers=[("Origin", "http://localhost"), ("Sec-Fetch-Site", "same-origin")])
    assert r.status == 200


# --- a real gateway ----------------------------------------------------------------------------


def test_real_gateway_refuses_a_foreign_page_and_a_rebound_name_and_serves_curl(gateway, tmp_path):
    gw = gateway(["--ws_listen", "tcp:0:interface=127.0.0.1", "--http_listen", "tcp:0:interface=127.0.0.1",
                  "--http_directory", str(tmp_path)], http=True)
    stop = (b"GET /v1/stop HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: https://evil.example\r\n"
            b"Sec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n" % gw.http_port)
    assert status_of(exchange(gw.http_port, stop)) == 403
    rebound = b"GET /v1/status HTTP/1.1\r\nHost: evil.example:%d\r\nConnection: close\r\n\r\n" % gw.http_port
    assert status_of(exchange(gw.http_port, rebound)) == 403
    gw.wait_for(r"/v1 refused: 127\.0\.0\.1: Host 'evil.example'")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(gw.http_url + "/v1/status", timeout=10) as response:
        assert response.status == 200 and json.loads(response.read()) == []
    assert gw.proc.poll() is None, "the foreign page stopped the gateway"


@pytest.mark.parametrize("headers", [
    [("Host", "evil.example"), ("Host", "localhost")],
    [("Origin", "https://evil.example"), ("Origin", "http://localhost")],
])
def test_a_header_given_twice_is_judged_by_every_value_not_the_last(tmp_path, headers):
    api = Api(tmp_path)
    assert api.get("/v1/stop", headers=headers).status == 403
    api.clock.advance(1)
    assert api.stop_calls == []
