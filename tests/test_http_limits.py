"""HTTP limits against slow-loris and oversized requests: --http_max_header_size
and --http_idle_timeout.

Mostly in memory: raw bytes into the real L{web.Site} over a L{StringTransport},
its timeouts driven by a L{MemoryReactorClock}; then a real gateway on loopback.
"""

import socket
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from nexusws import tap, web
from nexusws.api import ApiRoot
from support.http import parse

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
LOOPBACK = "tcp:0:interface=127.0.0.1"




class Connection:
    """One client connection to C{site}, fed raw bytes."""

    def __init__(self, site):
        self.channel = site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 9000))
        self.channel.makeConnection(self.transport)

    def send(self, data):
        self.channel.dataReceived(data)

    @property
    def closed(self):
        return self.transport.disconnecting

    def response(self):
        return parse(self.transport.value())

    def close(self):
        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def site_for(tmp_path, reactor):
    """C{site_for(**limits)}: the real site over an empty directory, with those limits."""
    def make(**limits):
        return web.make_site(str(tmp_path), ApiRoot(None), reactor=reactor, **limits)
    return make


def request_of_size(size, target=b"/"):
    """A GET whose head (request line and header lines, CRLFs not counted) is C{size} bytes."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: test", b"Connection: close"]
    filler = size - sum(map(len, lines)) - len(b"X-Fill: ")
    assert filler >= 0
    lines.append(b"X-Fill: " + b"f" * filler)
    assert sum(map(len, lines)) == size
    return b"\r\n".join(lines) + b"\r\n\r\n"


# --- request head size ---------------------------------------------------------------


def test_request_head_of_exactly_the_limit_is_served_and_one_byte_more_is_431(site_for):
    """--http_max_header_size counts the request line plus header lines: at the limit the
    request is answered; one byte over it, 431 and the connection closes."""
    site = site_for(max_header_size=4096)
    at_limit = Connection(site)
    at_limit.send(request_of_size(4096))
    assert at_limit.response()[0] == 200
    over = Connection(site)
    over.send(request_of_size(4097))
    status, headers, body = over.response()
    assert (status, headers["connection"]) == (431, "close")
    assert b"request head over 4096 bytes" in body
    assert over.closed


def test_default_limit_is_16_kib_and_a_smaller_site_limit_refuses_what_it_accepts(site_for):
    """The default site takes a 10 KiB head; a site built with 8 KiB refuses the same bytes."""
    data = request_of_size(10 * 1024)
    default = Connection(site_for())
    default.send(data)
    assert default.response()[0] == 200
    small = Connection(site_for(max_header_size=8 * 1024))
    small.send(data)
    assert small.response()[0] == 431
    too_big = Connection(site_for())
    too_big.send(request_of_size(16 * 1024 + 1))
    assert too_big.response()[0] == 431


def test_limit_is_per_site_not_a_global_twisted_setting(site_for):
    """A site's limit lives on its own channels: Twisted's HTTPChannel class is untouched
    and another site keeps its own limit."""
    before = (HTTPChannel.totalHeadersSize, HTTPChannel.maxHeaders, HTTPChannel.MAX_LENGTH)
    small, large = site_for(max_header_size=2048), site_for(max_header_size=1024 * 1024)
    assert (HTTPChannel.totalHeadersSize, HTTPChannel.maxHeaders,
            HTTPChannel.MAX_LENGTH) == before
    assert small.buildProtocol(PEER).totalHeadersSize == 2048
    big_head = Connection(large)
    big_head.send(request_of_size(100 * 1024))
    assert big_head.response()[0] == 200


def test_an_unterminated_header_line_is_refused_as_soon_as_it_passes_the_limit(site_for):
    """A header line that never ends is refused with 431 once it is over the limit,
    not buffered while the client keeps sending."""
    connection = Connection(site_for(max_header_size=2048))
    connection.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    for _ in range(3):
        connection.send(b"a" * 1000)
    assert connection.closed
    assert connection.response()[0] == 431
    connection.send(b"a" * 100_000)  # anything more is ignored
    assert connection.transport.value().count(b"HTTP/1.1") == 1


def test_an_oversized_request_line_is_414(site_for):
    """A request line alone over the limit (a huge URL) is answered 414 URI Too Long."""
    connection = Connection(site_for(max_header_size=2048))
    connection.send(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert connection.response()[0] == 414
    unterminated = Connection(site_for(max_header_size=2048))
    unterminated.send(b"GET /" + b"a" * 3000)
    assert unterminated.response()[0] == 414 and unterminated.closed


def test_more_than_100_headers_is_431(site_for):
    """100 headers are accepted; the 101st is refused with 431, well inside the byte limit."""
    def with_headers(n):
        lines = [b"GET / HTTP/1.1", b"Host: test", b"Connection: close"]
        lines += [b"X-H%d: v" % i for i in range(n - 2)]
        return b"\r\n".join(lines) + b"\r\n\r\n"
    ok, refused = Connection(site_for()), Connection(site_for())
    ok.send(with_headers(100))
    refused.send(with_headers(101))
    assert ok.response()[0] == 200
    status, _, body = refused.response()
    assert status == 431 and b"over 100 headers" in body


def test_a_refusal_is_logged_once_with_the_client_address(site_for, events):
    """Each refused head gives one log line naming the client and the status."""
    connection = Connection(site_for(max_header_size=1024))
    connection.send(request_of_size(2000))
    connection.send(request_of_size(2000))
    lines = [e["log_format"].format(**e) for e in events if "refused" in e.get("log_format", "")]
    assert lines == ["http 192.0.2.7 refused: request head over 1024 bytes (431)"]


# --- bodies ------------------------------------------------------------------------------


def test_a_declared_body_over_64_kib_is_413_before_it_is_read(site_for):
    """Nothing in the tree takes a body: a Content-Length over 64 KiB is refused with 413
    at once, so no upload is spooled to disk; a small body still reaches the resource (405)."""
    big = Connection(site_for())
    big.send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n")
    assert big.response()[0] == 413 and big.closed
    small = Connection(site_for())
    small.send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert small.response()[0] == 405


def test_a_chunked_body_is_411(site_for):
    """A chunked body, whose size is not known in advance, is refused with 411."""
    connection = Connection(site_for())
    connection.send(b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert connection.response()[0] == 411 and connection.closed


# --- idle and slow connections --------------------------------------------------------------


def test_a_stalled_half_request_line_is_dropped_with_408_after_the_idle_timeout(site_for, reactor):
    """A client that sends half a request line and stalls is answered 408 and dropped
    after --http_idle_timeout seconds, not before."""
    connection = Connection(site_for(idle_timeout=5))
    connection.send(b"GET /ind")
    reactor.advance(4.9)
    assert not connection.closed
    reactor.advance(0.2)
    assert connection.closed
    status, _, body = connection.response()
    assert status == 408 and b"not complete within 5 s" in body


def test_the_default_idle_timeout_is_60_seconds(site_for, reactor):
    """Without an explicit value a stalled connection is dropped after 60 seconds
    (Twisted's own default would wait 12 hours)."""
    connection = Connection(site_for())
    connection.send(b"GET / HTTP/1.1\r\n")
    reactor.advance(59)
    assert not connection.closed
    reactor.advance(2)
    assert connection.closed


def test_an_idle_keep_alive_connection_is_closed_without_a_response(site_for, reactor):
    """After a complete request, a kept-alive connection idle for the timeout is closed
    silently: there is no request to answer."""
    connection = Connection(site_for(idle_timeout=5))
    connection.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    answered = connection.transport.value()
    assert parse(answered)[0] == 200 and not connection.closed
    reactor.advance(5.1)
    assert connection.closed
    assert connection.transport.value() == answered


def test_a_head_trickled_byte_by_byte_is_cut_at_the_timeout_though_never_idle(site_for, reactor):
    """Slow-loris: a client sending one byte every 2 s is never idle for 5 s, yet its
    request head must be complete within 5 s of its first byte: 408."""
    connection = Connection(site_for(idle_timeout=5))
    for byte in b"GET / HTTP/1.1\r\nHost: test\r\n":
        if connection.closed:
            break
        connection.send(bytes([byte]))
        reactor.advance(2)
    assert connection.closed
    status, _, body = connection.response()
    assert status == 408 and b"not complete within 5 s" in body


def test_a_second_request_on_a_kept_alive_connection_gets_its_own_deadline(site_for, reactor):
    """The head deadline counts from each request's first byte, not from the connection's."""
    connection = Connection(site_for(idle_timeout=5))
    for _ in range(3):
        connection.send(b"GET / HTTP/1.1\r\n")
        reactor.advance(4)
        connection.send(b"Host: test\r\n\r\n")
        reactor.advance(4)
    assert not connection.closed
    assert connection.transport.value().count(b"HTTP/1.1 200 OK") == 3


def test_idle_timeout_0_disables_the_timeouts(site_for, reactor):
    """--http_idle_timeout 0: neither a stalled nor a trickled head is cut."""
    connection = Connection(site_for(idle_timeout=0))
    connection.send(b"GET / HTTP/1.1\r\n")
    reactor.advance(24 * 3600)
    connection.send(b"Host: test\r\n\r\n")
    assert not connection.closed and connection.response()[0] == 200
    assert not reactor.getDelayedCalls()


# --- options ---------------------------------------------------------------------------------


def parse_options(*args):
    options = tap.Options()
    options.parseOptions([*args, "0"])
    return options


def test_options_defaults_and_units():
    """Defaults: 16384 bytes, 60 s, HSTS one year; sizes take K and M suffixes."""
    defaults = parse_options()
    assert (defaults["http_max_header_size"], defaults["http_idle_timeout"], defaults["hsts_max_age"]) == (
        16384, 60.0, 31536000)
    given = parse_options("--http_max_header_size", "32K", "--http_idle_timeout", "2.5", "--hsts_max_age", "0")
    assert (given["http_max_header_size"], given["http_idle_timeout"], given["hsts_max_age"]) == (32768, 2.5, 0)


@pytest.mark.parametrize("option, value, message", [
    ("http_max_header_size", "100", "'100' is not a size in bytes of at least 1K"),
    ("http_max_header_size", "lots", "'lots' is not a size in bytes of at least 1K"),
    ("http_idle_timeout", "-1", "'-1' is not a number of seconds >= 0"),
    ("hsts_max_age", "1.5", "'1.5' is not a whole number of seconds >= 0"),
])
def test_bad_limit_values_are_one_line_errors_naming_the_option(option, value, message):
    """A bad value stops parsing with one line naming the option and the value."""
    with pytest.raises(usage.UsageError) as caught:
        parse_options(f"--{option}", value)
    assert str(caught.value).startswith(f"--{option}: {message}")


def test_make_service_gives_the_http_site_the_options(tmp_path):
    """makeService builds the HTTP site with the parsed limits and HSTS age."""
    options = parse_options("--http_directory", str(tmp_path), "--http_listen", "tcp:0",
                            "--http_max_header_size", "4K", "--http_idle_timeout", "7", "--hsts_max_age", "99")
    site = [c for c in tap.makeService(options, MemoryReactorClock()) if getattr(c, "label", "") == "--http_listen"
            ][0].factory
    assert (site.max_header_size, site.timeOut, site.hsts_max_age) == (4096, 7, 99)


# --- a real gateway ---------------------------------------------------------------------------


def raw_exchange(port, data, timeout=10):
    """Send C{data}; return (everything read until the server closes or resets the
    connection, seconds it took)."""
    started = time.monotonic()
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks), time.monotonic() - started


@pytest.fixture
def limited(gateway, tmp_path):
    (tmp_path / "index.html").write_text("hello")
    return gateway(["--http_directory", str(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                    "--http_max_header_size", "2K", "--http_idle_timeout", "1"], http=True)


def test_real_gateway_refuses_an_oversized_head_and_serves_a_normal_one(limited):
    """Over a real socket: a 3 KiB head gets 431 with --http_max_header_size 2K; a small one 200."""
    refused, _ = raw_exchange(limited.http_port, request_of_size(3000))
    assert parse(refused)[0] == 431
    served, _ = raw_exchange(limited.http_port, request_of_size(500, b"/index.html"))
    assert parse(served)[:3:2] == (200, b"hello")
    limited.wait_for(r"http 127\.0\.0\.1 refused: request head over 2048 bytes \(431\)")


def test_real_gateway_drops_a_stalled_half_request_after_its_idle_timeout(limited):
    """With --http_idle_timeout 1 a client that sends half a request line and stalls gets
    408 and EOF within a few seconds (the default would hold it for a minute)."""
    answer, took = raw_exchange(limited.http_port, b"GET /index")
    assert parse(answer)[0] == 408
    assert 0.9 <= took < 5


def test_real_https_gateway_drops_a_client_that_never_finishes_the_tls_handshake(gateway, tmp_path):
    """The idle timeout runs from the TCP connection: a client that connects to the https
    listener and sends nothing (no ClientHello) is dropped after --http_idle_timeout."""
    from support.tls import make_cert

    cert, key = make_cert(tmp_path)
    gw = gateway(["--cert", str(cert), "--key", str(key), "--http_directory", str(tmp_path),
                  "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK, "--http_idle_timeout", "1"], http=True)
    assert gw.http_scheme == "https"
    answer, took = raw_exchange(gw.http_port, b"")
    assert answer == b"" and 0.9 <= took < 5


def test_a_timed_out_client_that_does_not_take_the_close_is_aborted(site_for, reactor):
    """After the idle timeout the connection is closed; if it is still not gone 15 s later
    (the client reads nothing), it is aborted. A close that completes cancels the abort."""
    stuck = Connection(site_for(idle_timeout=5))
    stuck.send(b"GET /")
    reactor.advance(5.1)
    assert stuck.closed and not stuck.transport.disconnected  # StringTransport: aborted
    reactor.advance(15)
    assert stuck.transport.disconnected
    gone = Connection(site_for(idle_timeout=5))
    reactor.advance(5.1)
    gone.close()
    assert not reactor.getDelayedCalls()


def test_idle_closes_are_not_logged_at_the_default_level(site_for, reactor, events):
    """An idle keep-alive connection closing is routine: nothing is logged at info or above
    (a stalled request head is, once, as a refusal)."""
    connection = Connection(site_for(idle_timeout=5))
    connection.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    del events[:]
    reactor.advance(5.1)
    assert connection.closed
    assert [e for e in events if e["log_level"].name not in ("debug",)] == []
