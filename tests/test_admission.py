"""--max_connections_per_address: a cap, per listener, on the TCP connections one
address holds open in any state (before, during and after its handshake).

In memory (a MemoryReactorClock, fake transports and addresses): counting, the
429 and the close, release on close, the exemption of explicit trusted proxies
(not of the default loopback trust), UNIX peers, TLS listeners, the log's rate
limit. Then a real gateway on 127.0.0.1: idle connections fill the cap on both
listeners, the next is refused, and a closed one makes room.
"""

import itertools
import socket

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.http import HTTPChannel

from nexusws import tap
from nexusws.admission import LOG_INTERVAL, ConnectionCap
from nexusws.bridge import BridgeFactory, BridgeProtocol
from support.bridge import Transport, lines
from support.proc_sockets import accepted_peers
from support.tls import make_cert
from support.waiting import wait_until

LOOPBACK = "tcp:0:interface=127.0.0.1"
TOO_MANY = b"HTTP/1.1 429 Too Many Requests\r\n"


class RecordingTransport(Transport):
    """An iosim transport that tells an abort from an orderly close."""

    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


def listeners(tmp_path, *args):
    """The factories makeService gives the ws and http listeners, by option label."""
    options = tap.Options()
    options.parseOptions(["--ws_listen", LOOPBACK, "--http_listen", LOOPBACK,
                          "--http_directory", str(tmp_path), "--client_port", "9", *args])
    top = tap.makeService(options, MemoryReactorClock())
    return {c.label: c.factory for c in top if getattr(c, "label", None)}


_ports = itertools.count(40000)


def accept(factory, host="203.0.113.5", address=None):
    """What the reactor does on accept: build the protocol, connect it to a transport."""
    peer = address or (IPv6Address if ":" in host else IPv4Address)("TCP", host, next(_ports))
    protocol = factory.buildProtocol(peer)
    transport = RecordingTransport(protocol, True, peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def written(transport):
    return b"".join(transport.stream)


def close(protocol):
    """What the reactor does once the connection is gone."""
    protocol.connectionLost(Failure(error.ConnectionDone()))


def refused(transport):
    return transport.disconnecting and written(transport).startswith(TOO_MANY)


class Plain(Protocol):
    lost = 0

    def connectionLost(self, reason):
        self.lost += 1


# --- the option ---------------------------------------------------------------------------


def test_max_connections_per_address_defaults_to_64_and_arrives_typed():
    options = tap.Options()
    options.parseOptions(["9090"])
    assert options["max_connections_per_address"] == 64
    options = tap.Options()
    options.parseOptions(["9090", "--max_connections_per_address", "3"])
    assert options["max_connections_per_address"] == 3


@pytest.mark.parametrize("value", ["-1", "many", "2.5", ""])
def test_a_bad_max_connections_per_address_is_a_one_line_error_naming_the_option(value):
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions(["9090", "--max_connections_per_address", value])
    message = str(caught.value)
    assert message.startswith("--max_connections_per_address: ") and "\n" not in message
    assert "whole number" in message


def test_zero_means_no_cap_and_no_wrapper(tmp_path):
    factories = listeners(tmp_path, "--max_connections_per_address", "0")
    assert isinstance(factories["--ws_listen"], BridgeFactory), "nothing between the port and the bridge"
    held = [accept(factories["--http_listen"], "203.0.113.5") for _ in range(200)]
    assert not any(t.disconnecting for _, t in held)


# --- counting, in memory --------------------------------------------------------------------


@pytest.mark.parametrize("label", ["--ws_listen", "--http_listen"])
def test_beyond_the_cap_a_connection_gets_429_and_is_closed_while_the_held_ones_stay(tmp_path, label):
    """Idle connections count from their accept; the next one from that address
    is answered 429 (for a WebSocket too: its handshake is HTTP) and closed;
    another address is not affected."""
    factory = listeners(tmp_path, "--max_connections_per_address", "3")[label]
    held = [accept(factory, "203.0.113.5") for _ in range(3)]
    assert not any(t.disconnecting for _, t in held) and all(written(t) == b"" for _, t in held)
    _, fourth = accept(factory, "203.0.113.5")
    assert refused(fourth) and not fourth.aborted
    answer = written(fourth)
    assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b"too many connections from this address\n")
    _, other = accept(factory, "203.0.113.6")
    assert not other.disconnecting, "the cap is per address"
    assert not any(t.disconnecting for _, t in held), "the held connections stay open"


def test_each_listener_has_its_own_count(tmp_path):
    factories = listeners(tmp_path, "--max_connections_per_address", "2")
    for _ in range(2):
        accept(factories["--ws_listen"], "203.0.113.5")
    _, http = accept(factories["--http_listen"], "203.0.113.5")
    assert not http.disconnecting, "a full ws listener leaves the address its HTTP connections"


def test_a_closed_connection_gives_its_place_back_once(tmp_path):
    factory = listeners(tmp_path, "--max_connections_per_address", "2")["--ws_listen"]
    (first, _), _ = accept(factory), accept(factory)
    assert refused(accept(factory)[1])
    close(first)
    assert "connectionLost" not in vars(first), "the release hook removes itself"
    again, transport = accept(factory)
    assert not transport.disconnecting, "the closed connection's place is free again"
    close(first)  # a second connectionLost must not give back a second place
    assert refused(accept(factory)[1])
    close(again)
    assert not accept(factory)[1].disconnecting


def test_the_wrapped_protocol_still_runs_its_own_connection_lost():
    inner = Factory.forProtocol(Plain)
    capped = ConnectionCap("--test", 1, Clock()).wrap(inner)
    protocol, _ = accept(capped)
    close(protocol)
    assert protocol.lost == 1


def test_the_cap_hands_out_the_listeners_own_protocols_so_the_data_path_is_untouched(tmp_path):
    """No wrapper between the transport and the bridge or the HTTP channel: a read
    or a write costs what it did without the cap."""
    factories = listeners(tmp_path, "--max_connections_per_address", "3")
    bridge, transport = accept(factories["--ws_listen"])
    assert type(bridge) is BridgeProtocol and bridge.transport is transport
    channel, transport = accept(factories["--http_listen"])
    assert isinstance(channel, HTTPChannel) and channel.transport is transport
    for protocol in (bridge, channel):
        assert set(vars(protocol)) & {"dataReceived", "write"} == set()
    assert factories["--ws_listen"].logPrefix() == "BridgeFactory", "the port's log line is unchanged"
    assert factories["--ws_listen"].openHandshakeTimeout == 10, "the bridge's settings still show"


def test_an_http_exchange_through_the_cap_works_and_gives_the_place_back(tmp_path):
    """iosim: a request through the capped HTTP listener is answered by the site;
    when the connection ends the address's count is back to zero."""
    factory = listeners(tmp_path, "--max_connections_per_address", "1")["--http_listen"]
    peer = IPv4Address("TCP", "203.0.113.7", 40001)
    server = factory.buildProtocol(peer)
    client = Protocol()
    got = []
    client.dataReceived = got.append
    pump = iosim.connect(server, iosim.FakeTransport(server, True, peerAddress=peer),
                         client, iosim.FakeTransport(client, False))
    assert factory.cap.by_address == {"203.0.113.7": 1}
    client.transport.write(b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    pump.flush()
    assert b"".join(got).startswith(b"HTTP/1.1 404 "), "the site answers, not the cap"
    assert factory.cap.by_address == {}


# --- who is not counted -----------------------------------------------------------------------


@pytest.mark.parametrize("trust, host, exempt", [
    ([], "127.0.0.1", True),                                      # default trust: nginx on this host
    ([], "10.0.0.9", False),
    (["--trusted_proxy", "none"], "127.0.0.1", False),
    (["--trusted_proxy", "10.0.0.9"], "10.0.0.9", True),          # a front proxy: all its users
    (["--trusted_proxy", "10.0.0.9"], "127.0.0.1", False),
    (["--trusted_proxy", "127.0.0.1"], "127.0.0.1", True),        # nginx on this host, as config/nginx
    (["--trusted_proxy", "10.0.0.0/8"], "::ffff:10.1.2.3", True),  # dual-stack listener
    (["--trusted_proxy", "2001:db8::/32"], "2001:db8::7", True),
])
def test_trusted_proxies_are_exempt_the_default_loopback_trust_too(tmp_path, trust, host, exempt):
    factories = listeners(tmp_path, "--max_connections_per_address", "3", *trust)
    for label, factory in factories.items():
        results = [accept(factory, host)[1] for _ in range(10)]
        assert [t.disconnecting for t in results] == [False] * 10 if exempt else [False] * 3 + [True] * 7, label


def test_unix_socket_peers_are_not_counted():
    """Every UNIX peer would be the same "address": the cap would be a total."""
    capped = ConnectionCap("--test", 1, Clock()).wrap(Factory.forProtocol(Plain))
    held = [accept(capped, address=UNIXAddress(None)) for _ in range(10)]
    assert not any(t.disconnecting for _, t in held)
    assert capped.cap.by_address == {}


# --- TLS ----------------------------------------------------------------------------------


def test_a_tls_listener_counts_tcp_connections_and_refuses_them_without_a_handshake(tmp_path):
    """With --cert the count wraps the TLS layer: the protocol counted is the TLS
    connection, and a refused one is aborted at once, before any TLS byte."""
    cert, key = make_cert(tmp_path)
    factories = listeners(tmp_path, "--max_connections_per_address", "2", "--cert", str(cert), "--key", str(key))
    for label, factory in factories.items():
        held = [accept(factory) for _ in range(2)]
        assert all(isinstance(p, TLSMemoryBIOProtocol) for p, _ in held), label
        protocol, fourth = accept(factory)
        assert not isinstance(protocol, TLSMemoryBIOProtocol)
        assert fourth.aborted and written(fourth) == b"", label
        close(held[0][0])
        assert not accept(factory)[1].disconnecting, label


def test_an_ssl_endpoint_listener_refuses_without_a_word_too(tmp_path):
    cert, key = make_cert(tmp_path)
    options = tap.Options()
    options.parseOptions(["--ws_listen", f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}",
                          "--max_connections_per_address", "1"])
    (factory,) = [c.factory for c in tap.makeService(options, MemoryReactorClock())
                  if getattr(c, "label", None) == "--ws_listen"]
    accept(factory)
    _, second = accept(factory)
    assert second.aborted and written(second) == b""


# --- the log ---------------------------------------------------------------------------------


def test_refusals_are_logged_once_per_address_and_minute_then_summed_up(events):
    clock = Clock()
    capped = ConnectionCap("--ws_listen", 1, clock).wrap(Factory.forProtocol(Plain))
    accept(capped, "203.0.113.5")
    accept(capped, "203.0.113.6")
    for _ in range(1000):  # a flood
        assert refused(accept(capped, "203.0.113.5")[1])
    accept(capped, "203.0.113.6")
    logged = [line for line in lines(events) if "refused" in line]
    assert logged == [
        "--ws_listen refused a connection from 203.0.113.5: it holds 1 (--max_connections_per_address 1); "
        f"further refusals of this address are logged at most every {LOG_INTERVAL:g} s",
        "--ws_listen refused a connection from 203.0.113.6: it holds 1 (--max_connections_per_address 1); "
        f"further refusals of this address are logged at most every {LOG_INTERVAL:g} s",
    ]
    clock.advance(LOG_INTERVAL - 1)
    accept(capped, "203.0.113.5")
    assert len([line for line in lines(events) if "refused" in line]) == 2
    clock.advance(1)
    accept(capped, "203.0.113.5")
    logged = [line for line in lines(events) if "refused" in line]
    assert logged[2:] == ["--ws_listen refused 1001 connection(s) from 203.0.113.5 in the last 60 s "
                          "(it holds 1, --max_connections_per_address 1)"]
    assert capped.cap.refused == 1003


def test_the_log_rate_limit_forgets_old_addresses_so_it_stays_bounded(monkeypatch):
    from nexusws import admission

    monkeypatch.setattr(admission, "NOTED_ADDRESSES", 10)
    clock = Clock()
    cap = ConnectionCap("--test", 1, clock)
    capped = cap.wrap(Factory.forProtocol(Plain))
    for n in range(10):
        accept(capped, f"203.0.113.{n}")
        accept(capped, f"203.0.113.{n}")
    clock.advance(LOG_INTERVAL)
    accept(capped, "198.51.100.1")
    accept(capped, "198.51.100.1")
    assert list(cap._noted) == ["198.51.100.1"]


# --- a real gateway ---------------------------------------------------------------------------


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_real_gateway_caps_idle_connections_from_one_address_on_both_listeners(gateway, tmp_path):
    """3 idle connections from 127.0.0.1 hold each listener's cap: the 4th gets 429
    and is closed, the 3 stay usable, one refusal line per listener for all the
    refusals, and closing one makes room for a working connection."""
    (tmp_path / "index.html").write_text("hello")
    with socket.socket() as backend:  # a backend that accepts (its backlog is enough)
        backend.bind(("127.0.0.1", 0))
        backend.listen(8)
        gw = gateway(["--ws_listen", LOOPBACK, "--http_listen", LOOPBACK, "--http_directory", str(tmp_path),
                      "--client_hostname", "127.0.0.1", "--client_port", str(backend.getsockname()[1]),
                      "--max_connections_per_address", "3", "--handshake_timeout", "60",
                      "--trusted_proxy", "none"], http=True)  # loopback, trusted by default, is exempt
        ws_request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        http_request = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
        for label, port, request, ok in [("--ws_listen", gw.ws_port, ws_request, b"HTTP/1.1 101 "),
                                         ("--http_listen", gw.http_port, http_request, b"HTTP/1.1 200 ")]:
            held = [connect(port) for _ in range(3)]
            mine = {sock.getsockname()[1] for sock in held}
            wait_until(lambda mine=mine, port=port: mine <= accepted_peers(gw.proc.pid, port), 10,
                       f"{label}: the gateway accepted the 3 (not only the kernel)")
            for _ in range(5):
                with connect(port) as extra:
                    extra.sendall(request)  # a client that sends at once still reads the answer
                    answer = read_all(extra)
                assert answer.startswith(TOO_MANY) and b"Connection: close" in answer, (label, answer)
            held[0].sendall(request)
            assert held[0].recv(65536).startswith(ok), f"{label}: a held connection still works"
            gone = held.pop()
            gone_port = gone.getsockname()[1]
            gone.close()
            # The gateway gives the count back as it closes its end (in one call).
            wait_until(lambda gone_port=gone_port, port=port: gone_port not in accepted_peers(gw.proc.pid, port),
                       10, f"{label}: the gateway closed its end of the closed connection")
            with connect(port) as again:
                again.sendall(request)
                assert again.recv(65536).startswith(ok), f"{label}: the closed one made room"
            for sock in held:
                sock.close()
    for label in ("--ws_listen", "--http_listen"):
        gw.wait_for(f"{label} refused")  # logged before its first 429 went out: wait until it is read
        refusals = [line for line in gw.lines if f"{label} refused" in line]
        assert len(refusals) == 1 and "from 127.0.0.1: it holds 3 (--max_connections_per_address 3)" in refusals[0]
