"""Range requests on the file server: L{nexusws.ranges.plan_ranges} and L{nexusws.ranges.FileProducer}.

Twisted's own multi-range producer crashes on many small or overlapping
ranges ("read length must be non-negative"): the response then stalls for
ever, holding its connection and file descriptor past the idle timeout. And a
short header can declare a multipart answer thousands of times the file.

The rules in memory first (raw bytes into the real Site over a
L{StringTransport}, static.File's pull producer driven by a Clock), then
over real sockets against a gateway on 127.0.0.1 port 0.
"""

import io
import os
import re
import socket
import time

import pytest
from twisted.internet import _producer_helpers, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web import resource

from nexusws import web
from nexusws.api import ApiRoot
from nexusws.files import ConfinedFile
from nexusws.ranges import MAX_RANGE_SPECS, MAX_RANGES, plan_ranges
from support.http import parse

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
LOOPBACK = "tcp:0:interface=127.0.0.1"
MIB = 1024 * 1024
#: 1 MiB in which every 4-byte word is its own offset: any slice shows where it came from.
CONTENT = b"".join(i.to_bytes(4, "big") for i in range(0, MIB, 4))
#: Many tiny overlapping ranges: Twisted's producer reads a negative length when a
#: part separator takes it past its 64 KiB buffer; the shapes land that differently.
#: (ranges, length of the one part they merge into)
OVERLAPPING = [
    (",".join(["0-0", "5-15", "0-10"] * 340), 16),
    (",".join(["0-0"] * 1000), 1),
    (",".join(["0-1"] * 1000), 2),
]


# --- plan_ranges ---------------------------------------------------------------------


@pytest.mark.parametrize("header, parts", [
    (b"bytes=30-38", [(30, 9)]),
    (b"bytes=-6", [(294, 6)]),
    (b"bytes=297-", [(297, 3)]),
    (b"bytes=290-999", [(290, 10)]),
    (b"bytes=-1000", [(0, 300)]),
    (b"bytes=0-", [(0, 300)]),
    (b"bytes = 1 - 2 , , 10-11", [(1, 2), (10, 2)]),
    (b"Bytes=1-2", [(1, 2)]),
])
def test_plan_of_single_and_disjoint_ranges_is_offset_and_length(header, parts):
    assert plan_ranges(header, 300) == parts


@pytest.mark.parametrize("header, parts", [
    (b"bytes=0-10,5-15", [(0, 16)]),
    (b"bytes=0-9,10-19", [(0, 20)]),  # adjacent
    (b"bytes=100-109,0-9", [(100, 10), (0, 10)]),  # disjoint: the header's order
    (b"bytes=200-209,0-9,5-14", [(200, 10), (0, 15)]),
    (b"bytes=0-9,200-209,5-14", [(0, 15), (200, 10)]),  # a merged part sits where its first range was
    (b"bytes=50-59,0-9,-250", [(50, 250), (0, 10)]),
    (b"bytes=0-0,0-0,0-0", [(0, 1)]),
])
def test_plan_merges_overlapping_and_adjacent_ranges_keeping_first_appearance_order(header, parts):
    assert plan_ranges(header, 300) == parts


@pytest.mark.parametrize("header", [b"bytes=300-400", b"bytes=-0", b"bytes=300-,400-500", b"bytes=1000-"])
def test_plan_of_no_satisfiable_range_is_empty_for_416(header):
    assert plan_ranges(header, 300) == []


def test_plan_drops_unsatisfiable_ranges_among_satisfiable_ones():
    assert plan_ranges(b"bytes=0-1,300-400,-0", 300) == [(0, 2)]


def test_plan_of_an_empty_file_is_always_unsatisfiable():
    assert plan_ranges(b"bytes=0-", 0) == plan_ranges(b"bytes=-5", 0) == []


@pytest.mark.parametrize("header", [
    b"items=0-1", b"bytes", b"bytes=", b"bytes=,", b"bytes=5-1", b"bytes=a-b", b"bytes=-", b"bytes=1-2-3",
    b"bytes=+1-2", b"bytes=0x1-2", b"bytes=0-" + b"9" * 5000, "bytes=\u0661-2".encode(),
], ids=["unit", "no-equals", "empty", "only-comma", "reversed", "letters", "bare-dash", "two-dashes",
        "plus", "hex", "huge-number", "non-ascii-digit"])
def test_plan_ignores_a_malformed_header_whole_file(header):
    assert plan_ranges(header, 300) is None


def test_plan_allows_max_ranges_disjoint_parts_and_ignores_one_more():
    ranges = [f"{i * 10}-{i * 10}" for i in range(MAX_RANGES + 1)]
    assert len(plan_ranges(("bytes=" + ",".join(ranges[:-1])).encode(), 300)) == MAX_RANGES == 16
    assert plan_ranges(("bytes=" + ",".join(ranges)).encode(), 300) is None


def test_plan_counts_parts_after_merging():
    """A thousand ranges that merge into one part are one part."""
    for ranges, length in OVERLAPPING:
        assert plan_ranges(("bytes=" + ranges).encode(), MIB) == [(0, length)]


@pytest.mark.parametrize("header", [b"bytes=0-,0-", b"bytes=0-199,100-299", b"bytes=" + b",".join([b"0-0"] * 301)])
def test_plan_ignores_ranges_asking_for_more_bytes_than_the_file_holds(header):
    assert plan_ranges(header, 300) is None


def test_plan_ignores_more_than_max_range_specs_unread():
    assert plan_ranges(("bytes=" + ",".join(["0-0"] * MAX_RANGE_SPECS)).encode(), MIB) == [(0, 1)]
    assert plan_ranges(("bytes=" + ",".join(["0-0"] * (MAX_RANGE_SPECS + 1))).encode(), MIB) is None


# --- in memory -----------------------------------------------------------------------


#: The Clock time of one step of a pull producer (one 64 KiB chunk of a file).
STEP = 0.001


@pytest.fixture
def clock(monkeypatch):
    """Drive twisted.web's pull producers with a Clock, one step per L{STEP}.

    HTTPChannel runs pull producers through L{task.cooperate}; there is no
    public hook, so the name its helper module uses is replaced (as in
    tests/test_web.py, there with every step at once).
    """
    clock = task.Clock()
    cooperator = task.Cooperator(
        terminationPredicateFactory=lambda: (lambda: True),
        scheduler=lambda step: clock.callLater(STEP, step),
    )
    monkeypatch.setattr(_producer_helpers, "cooperate", cooperator.cooperate)
    return clock


@pytest.fixture
def reactor():
    """The site's reactor: its idle timeout and the response watchdog."""
    return MemoryReactorClock()


@pytest.fixture
def www(tmp_path):
    (tmp_path / "big.bin").write_bytes(CONTENT)
    return tmp_path


class Connection:
    def __init__(self, site):
        self.channel = site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 9000))
        self.channel.makeConnection(self.transport)

    def get(self, target, *headers):
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: test", *headers, b"", b""]
        self.channel.dataReceived(b"\r\n".join(lines))


def pump(clock, steps=10_000):
    """Run the producers until none is left (at most C{steps} steps)."""
    for _ in range(steps):
        if not clock.getDelayedCalls():
            return
        clock.advance(STEP)




def multipart(headers, body):
    """[(content-range, bytes)] of a multipart/byteranges body."""
    boundary = re.fullmatch(r'multipart/byteranges; boundary="([^"]+)"', headers["content-type"]).group(1).encode()
    pieces = body.split(b"\r\n--" + boundary)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        head, _, data = piece.partition(b"\r\n\r\n")
        parts.append((re.search(rb"Content-range: (\S+ \S+)", head).group(1).decode(), data))
    return parts


def open_descriptors(path):
    """How many of this process's descriptors are open on C{path}."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return count


def test_overlapping_ranges_are_one_merged_part_and_disjoint_ones_a_multipart(clock, reactor, www):
    """bytes=0-9,5-14,100-109: 206 multipart/byteranges with two parts, 0-14 and 100-109."""
    site = web.make_site(str(www), ApiRoot(None), reactor=reactor)
    connection = Connection(site)
    connection.get(b"/big.bin", b"Range: bytes=0-9,5-14,100-109", b"Connection: close")
    pump(clock)
    status, headers, body = parse(connection.transport.value())
    assert status == 206
    assert int(headers["content-length"]) == len(body)
    assert multipart(headers, body) == [(f"bytes 0-14/{MIB}", CONTENT[:15]), (f"bytes 100-109/{MIB}", CONTENT[100:110])]


@pytest.mark.parametrize("ranges, length", OVERLAPPING, ids=["mixed", "0-0", "0-1"])
def test_many_tiny_overlapping_ranges_complete_without_an_error_in_the_log(clock, reactor, www, events, ranges, length):
    site = web.make_site(str(www), ApiRoot(None), reactor=reactor)
    connection = Connection(site)
    connection.get(b"/big.bin", b"Range: bytes=" + ranges.encode())
    pump(clock)
    status, headers, body = parse(connection.transport.value())
    assert (status, headers["content-range"], body) == (206, f"bytes 0-{length - 1}/{MIB}", CONTENT[:length])
    assert not clock.getDelayedCalls() and not connection.transport.disconnecting  # done, kept alive
    assert [e for e in events if e["log_level"].name in ("error", "critical")] == []
    assert open_descriptors(www / "big.bin") == 0


class _FailingFile(io.FileIO):
    """A file whose reads fail as a bad disk would."""

    def read(self, size=-1):
        raise OSError(5, "Input/output error")


class _FailingConfinedFile(ConfinedFile):
    def openForReading(self):
        return _FailingFile(self.path)


@pytest.mark.errors_expected
def test_a_file_that_fails_to_read_aborts_the_connection_and_is_closed(clock, reactor, www, events):
    """Twisted's producers leave such a response hanging (the connection, the file);
    ours log the failure once and abort the connection."""
    top = resource.Resource()
    top.putChild(b"big.bin", _FailingConfinedFile(str(www / "big.bin"), root=str(www)))
    connection = Connection(web.Site(top, requestFactory=web.Request, reactor=reactor))
    connection.get(b"/big.bin")
    pump(clock)
    assert connection.transport.disconnected  # aborted (StringTransport)
    assert not clock.getDelayedCalls()
    assert [e["log_level"].name for e in events if e["log_level"].name in ("warn", "error", "critical")] == ["error"]
    assert [e for e in events if "reading" in e.get("log_format", "") and "connection aborted" in e["log_format"]]
    assert not reactor.getDelayedCalls()


def test_a_file_cut_short_while_served_aborts_the_kept_alive_connection(clock, reactor, www):
    """The head promised 1 MiB; when the file ends before that, the connection cannot
    carry another request: it is aborted, not finished short."""
    site = web.make_site(str(www), ApiRoot(None), reactor=reactor)
    connection = Connection(site)
    connection.get(b"/big.bin")
    clock.advance(STEP)
    os.truncate(www / "big.bin", 100_000)
    pump(clock)
    assert connection.transport.disconnected
    assert open_descriptors(www / "big.bin") == 0


@pytest.mark.parametrize("range_header", [(), (b"Range: bytes=0-9,100-",)], ids=["whole", "multipart"])
def test_a_response_is_aborted_after_the_idle_timeout_without_progress_and_only_then(
        clock, reactor, www, range_header):
    """The idle timeout is off while a response is sent; a client that stops reading
    (the transport pauses the response) is cut after it all the same, its file closed.
    Pauses shorter than the timeout, however many, do not cut a response."""
    site = web.make_site(str(www), ApiRoot(None), reactor=reactor, idle_timeout=5)
    slow = Connection(site)
    slow.get(b"/big.bin", *range_header, b"Connection: close")
    clock.advance(STEP)
    for _ in range(3):  # paused three times, 4 s each: 12 s in all, never 5 s without progress
        slow.channel.pauseProducing()  # what a full transport buffer does
        reactor.advance(4)
        slow.channel.resumeProducing()
        clock.advance(STEP)
    pump(clock)
    status, headers, body = parse(slow.transport.value())
    assert status in (200, 206) and int(headers["content-length"]) == len(body) > MIB - 100
    assert slow.transport.disconnecting and not slow.transport.disconnected  # closed, not aborted
    assert not reactor.getDelayedCalls()

    stuck = Connection(site)
    stuck.get(b"/big.bin", *range_header)
    clock.advance(STEP)
    stuck.channel.pauseProducing()
    reactor.advance(4.9)
    assert not stuck.transport.disconnecting and open_descriptors(www / "big.bin") == 1
    reactor.advance(0.2)
    assert stuck.transport.disconnected
    assert open_descriptors(www / "big.bin") == 0
    pump(clock)
    assert not reactor.getDelayedCalls()


# --- a real gateway ------------------------------------------------------------------


@pytest.fixture
def served(gateway, www):
    """A gateway serving www/ with a 2 s idle timeout: a stall outlasts it visibly."""
    return gateway(["--http_directory", str(www), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                    "--http_idle_timeout", "2"], http=True)


def read_response(sock, limit=2 * MIB):
    """(head, body) of one response read by its Content-Length; the body at most C{limit}."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"closed before the head ended: {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    assert length <= limit, f"a {length}-byte answer: {head.decode('latin-1')}"
    while len(body) < length:
        body += sock.recv(65536) or pytest.fail("closed before the body ended")
    return head, body


def descriptors_on(pid, path):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == str(path)
        except OSError:
            pass
    return count


def assert_nothing_went_wrong(gw, path):
    deadline = time.monotonic() + 5
    while descriptors_on(gw.proc.pid, path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descriptors_on(gw.proc.pid, path) == 0, "the file is still open"
    assert not re.search(r"#(error|critical)\]|Traceback", gw.log), gw.log


def test_real_gateway_answers_many_overlapping_ranges_and_keeps_the_connection(served, www):
    """Against Twisted's producer these requests stall past the idle timeout with the file
    open and a critical traceback logged; here each is answered on one kept-alive connection."""
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=6) as s:
        for ranges, length in OVERLAPPING:
            s.sendall(f"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={ranges}\r\n\r\n".encode())
            try:
                head, body = read_response(s)
            except TimeoutError:
                pytest.fail(f"the response stalled (2 s idle timeout); log:\n{served.log}")
            assert head.startswith(b"HTTP/1.1 206 ") and body == CONTENT[:length]
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=8-11\r\nConnection: close\r\n\r\n")
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 206 ") and body == CONTENT[8:12] and s.recv(1) == b""
    assert_nothing_went_wrong(served, www / "big.bin")


@pytest.mark.parametrize("ranges", [
    ["0-"] * 5000,
    ["0-1048575"] * 1000,
    [f"{i}-{i + 500_000}" for i in range(0, 1800, 2)],
], ids=["whole-file-5000-times", "explicit-whole-1000-times", "shifted-halves-900-times"])
def test_real_gateway_answers_a_15_kb_range_header_with_at_most_the_file(served, www, ranges):
    """A Range header of thousands of ranges gets the whole file (200), not a multipart
    answer thousands of times its size."""
    header = "bytes=" + ",".join(ranges)
    assert 9_000 < len(header) < 16_000
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as s:
        s.sendall(f"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: {header}\r\nConnection: close\r\n\r\n".encode())
        head, body = read_response(s, limit=MIB + 4096)
    assert head.startswith(b"HTTP/1.1 200 ") and body == CONTENT
    assert_nothing_went_wrong(served, www / "big.bin")


@pytest.mark.parametrize("if_range, partial", [
    (None, True),
    ("current", True),  # the file's own Last-Modified
    ("Mon, 01 Jan 2001 00:00:00 GMT", False),  # another version
    ('"some-etag"', False),  # no ETag is sent, so none matches
    ("garbage", False),
])
def test_if_range_gets_the_range_only_for_this_version_of_the_file(clock, reactor, www, if_range, partial):
    """RFC 9110 13.1.5: a Range with an If-Range that does not name the current version
    is answered with the whole file (200)."""
    from twisted.web.http import datetimeToString

    site = web.make_site(str(www), ApiRoot(None), reactor=reactor)
    connection = Connection(site)
    headers = [b"Range: bytes=0-9", b"Connection: close"]
    if if_range == "current":
        headers.append(b"If-Range: " + datetimeToString(int((www / "big.bin").stat().st_mtime)))
    elif if_range is not None:
        headers.append(b"If-Range: " + if_range.encode())
    connection.get(b"/big.bin", *headers)
    pump(clock)
    status, _, body = parse(connection.transport.value())
    assert (status, body) == ((206, CONTENT[:10]) if partial else (200, CONTENT))
