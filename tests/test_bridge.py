"""In-memory tests of the WebSocket⇄TCP bridge: iosim pumps, a memory reactor, no sockets.

The key ones (C{@both_paths}) run on both data paths: the library internals and
the public-API fallback (L{nexusws.internals}).
"""

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock

from nexusws.handshake import GATEWAY_MARGIN
from nexusws.routing import NoRouter, Target
from support.bridge import Harness, lines, open_tunnel
from support.data_path import both_paths


def test_101_is_sent_only_after_the_backend_connects():
    """The handshake waits for the backend: no 'open' for a tunnel that cannot work."""
    h = Harness()
    h.flush()
    assert not h.client.opened
    assert h.targets == [Target("127.0.0.1", 5900)]
    h.connect_backend()
    h.flush()
    assert h.client.opened


def test_binary_subprotocol_is_selected_when_offered():
    h = open_tunnel(protocols=("base64", "binary"))
    assert h.client.websocket_protocol_in_use == "binary"


def test_client_offering_no_subprotocol_is_accepted_without_one():
    h = open_tunnel(protocols=())
    assert h.client.websocket_protocol_in_use is None


def test_client_offering_only_unknown_subprotocols_is_refused_with_400(events):
    h = Harness(protocols=("base64",))
    h.flush()
    assert not h.client.opened
    assert h.endpoint.attempts == [], "nothing may be connected for a refused client"
    assert any("400" in line and "base64" in line for line in lines(events))


@both_paths
def test_backend_greeting_is_held_until_open_then_delivered_first():
    h = open_tunnel(greeting=b"RFB 003.008\n")
    assert h.client.messages == [(b"RFB 003.008\n", True)]


@both_paths
def test_bytes_flow_both_ways_exactly_and_in_order():
    h = open_tunnel(greeting=b"")
    for i in range(50):
        h.client.sendMessage(bytes([i]) * (i + 1), isBinary=True)
        h.backend.transport.write(b"%d," % i)
    h.flush()
    assert bytes(h.backend.received) == b"".join(bytes([i]) * (i + 1) for i in range(50))
    assert h.client.received == b"".join(b"%d," % i for i in range(50))
    assert all(binary for _, binary in h.client.messages), "backend data goes out as binary"


@both_paths
def test_text_frames_are_forwarded_as_their_utf8_bytes():
    h = open_tunnel(greeting=b"")
    h.client.sendMessage("héllo".encode(), isBinary=False)
    h.flush()
    assert bytes(h.backend.received) == "héllo".encode()


@both_paths
def test_fragmented_message_is_streamed_frame_by_frame():
    """A message in several frames reaches the backend as the frames arrive."""
    h = open_tunnel(greeting=b"")
    h.client.beginMessage(isBinary=True)
    h.client.sendMessageFrame(b"first-")
    h.flush()
    assert bytes(h.backend.received) == b"first-", "the first frame must not wait for the message end"
    h.client.sendMessageFrame(b"second")
    h.client.endMessage()
    h.flush()
    assert bytes(h.backend.received) == b"first-second"


@both_paths
def test_backend_close_delivers_every_byte_then_closes_1000():
    h = open_tunnel(greeting=b"")
    h.backend.transport.write(b"tail-" * 1000)
    h.backend.transport.loseConnection()
    h.flush()
    assert h.client.received == b"tail-" * 1000
    assert h.client.closed is not None
    assert h.client.closed[1] == 1000


@both_paths
def test_backend_close_waits_for_the_client_buffer_to_drain():
    """While the client's transport is full (producer paused) no close frame is sent."""
    h = open_tunnel(greeting=b"")
    valve = h.server_transport.producer
    valve.pauseProducing()  # the client's socket buffer is full
    h.backend.transport.write(b"x" * 10)
    h.backend.transport.loseConnection()
    h.flush()
    assert h.client.closed is None, "the close frame must wait for queued data"
    valve.resumeProducing()  # the buffer drained
    h.flush()
    assert h.client.received == b"x" * 10
    assert h.client.closed[1] == 1000


@both_paths
def test_a_client_that_never_takes_the_backends_last_data_is_cut_off_after_close_timeout(events):
    """The backend sent its last bytes and closed; the client's buffer stays full: after
    --close_timeout the connection is dropped, which frees its slot."""
    h = open_tunnel(greeting=b"", close_timeout=7)
    h.server_transport.producer.pauseProducing()  # the client's socket buffer is full
    h.backend.transport.write(b"x" * 10)
    h.backend.transport.loseConnection()
    h.flush()
    h.reactor.advance(6.9)
    assert not h.server_transport.disconnecting
    h.reactor.advance(0.2)
    assert h.server_transport.disconnecting
    assert any("did not take the backend's last data within 7 s" in line for line in lines(events))


@both_paths
def test_a_client_that_takes_the_last_data_in_time_is_closed_1000_and_not_cut_off():
    h = open_tunnel(greeting=b"", close_timeout=7)
    valve = h.server_transport.producer
    valve.pauseProducing()
    h.backend.transport.write(b"x" * 10)
    h.backend.transport.loseConnection()
    h.flush()
    h.reactor.advance(5)
    valve.resumeProducing()
    h.flush()
    assert h.client.closed[1] == 1000
    assert not [c for c in h.reactor.getDelayedCalls() if "never_drained" in repr(c.func)]


def test_backend_connection_error_closes_with_1011_and_a_reason():
    h = open_tunnel(greeting=b"")
    h.gateway_backend_transport.disconnectReason = error.ConnectionLost("reset by peer")
    h.backend.transport.loseConnection()
    h.flush()
    assert h.client.closed[1] == 1011
    assert "backend connection lost" in h.client.closed[2]


@both_paths
def test_client_close_delivers_every_byte_to_the_backend_then_eof():
    h = open_tunnel(greeting=b"")
    h.client.sendMessage(b"last words", isBinary=True)
    h.client.sendClose(1000)
    h.flush()
    assert bytes(h.backend.received) == b"last words"
    assert h.backend.lost is not None and h.backend.lost.check(error.ConnectionDone)


def test_backend_that_never_closes_after_eof_is_aborted_after_close_timeout():
    h = Harness(close_timeout=7)
    h.flush()
    h.connect_backend(close_on_eof=False)
    h.flush()
    aborted = []
    h.gateway_backend_transport.abortConnection = lambda: aborted.append(True)
    h.client.sendClose(1000)
    h.flush()
    assert h.backend.eof and h.backend.lost is None
    h.reactor.advance(6.9)
    assert aborted == []
    h.reactor.advance(0.2)
    assert aborted == [True]


@both_paths
def test_after_the_client_closes_the_backend_is_half_closed_and_read_until_it_closes(events):
    """EOF, not a close: the backend's last bytes are read and dropped (never sent to a
    closed WebSocket, never counted), no reset, no error; its close ends the wait."""
    h = Harness(close_timeout=7)
    h.flush()
    h.connect_backend(close_on_eof=False)
    h.flush()
    h.client.sendMessage(b"last words", isBinary=True)
    h.client.sendClose(1000)
    h.flush()
    assert bytes(h.backend.received) == b"last words" and h.backend.eof
    assert h.gateway_backend_transport.write_closed and not h.gateway_backend_transport.disconnecting
    assert not h.gateway_backend_transport.paused, "the backend is read, so it never blocks"
    h.backend.transport.write(b"still talking" * 1000)
    h.flush()
    assert h.client.received == b""
    h.backend.transport.loseConnection()
    h.flush()
    assert h.backend.lost is not None and h.reactor.getDelayedCalls() == []
    assert not [e for e in events if e.get("isError") or e.get("log_failure")]
    closed = [line for line in lines(events) if "tunnel closed" in line]
    assert " 0 bytes down" in closed[0]


@both_paths
def test_backend_data_while_the_websocket_is_closing_is_dropped_without_error(events):
    """The client's close frame is in, the reply not yet sent (its TCP closes later):
    backend data arriving then raises nothing and is not counted as sent."""
    h = open_tunnel(greeting=b"")
    h.client.sendClose(1000)
    h.pump.pump()  # the close reaches the gateway; the backend answers before anything else moves
    assert h.server.state in (h.server.STATE_CLOSING, h.server.STATE_CLOSED)
    h.backend.transport.write(b"late" * 100)
    h.flush()
    assert not [e for e in events if e.get("isError") or e.get("log_failure")]
    assert h.server.bytes_down == 0 and h.client.received == b""


def test_backend_unreachable_is_refused_at_handshake_with_502_and_logged(events):
    h = Harness()
    h.flush()
    h.fail_backend(error.ConnectionRefusedError())
    h.flush()
    assert not h.client.opened
    refused = [line for line in lines(events) if "tunnel refused" in line]
    assert len(refused) == 1
    assert "502" in refused[0] and "127.0.0.1:5900" in refused[0] and "refused" in refused[0]


def test_handshake_response_carries_the_refusal_status():
    h = Harness()
    h.flush()
    written = []
    original = h.server_transport.write
    h.server_transport.write = lambda data: (written.append(data), original(data))
    h.fail_backend(error.ConnectionRefusedError())
    h.flush()
    assert written and written[0].startswith(b"HTTP/1.1 502")


def test_no_router_refuses_with_404_and_connects_nothing(events):
    h = Harness(router=NoRouter())
    h.flush()
    assert not h.client.opened
    assert h.endpoint.attempts == []
    assert any("404" in line and "no backend configured" in line for line in lines(events))


def test_router_may_refuse_with_connection_deny():
    class Router:
        def route(self, request):
            raise ConnectionDeny(403, "not yours")

    h = Harness(router=Router())
    h.flush()
    assert not h.client.opened and h.endpoint.attempts == []


def test_client_leaving_during_backend_connect_drops_the_backend():
    h = Harness()
    h.flush()
    h.client_transport.loseConnection()
    h.flush()
    assert h.endpoint.attempts == [] or h.endpoint.attempts[0][1].called


@both_paths
def test_flow_control_is_wired_both_ways():
    """A full client socket pauses the backend and a full backend socket pauses the client."""
    h = open_tunnel(greeting=b"")
    h.server_transport.producer.pauseProducing()
    assert h.gateway_backend_transport.paused
    h.server_transport.producer.resumeProducing()
    assert not h.gateway_backend_transport.paused
    h.gateway_backend_transport.producer.pauseProducing()
    assert h.server_transport.paused
    h.gateway_backend_transport.producer.resumeProducing()
    assert not h.server_transport.paused


def test_flow_control_pauses_and_resumes_are_logged_once_each_at_verbose_1(events):
    """README's --verbose 1: flow control among the debugging lines; a repeated pause
    (the transport asks again) is not a second line."""
    from nexusws.logs import set_verbosity

    set_verbosity(1)
    try:
        h = open_tunnel(greeting=b"")
        h.server_transport.producer.pauseProducing()
        h.server_transport.producer.pauseProducing()
        h.server_transport.producer.resumeProducing()
        h.gateway_backend_transport.producer.pauseProducing()
        h.gateway_backend_transport.producer.resumeProducing()
    finally:
        set_verbosity(0)
    flow = [line for line in lines(events) if "reading from the" in line]
    assert flow == [
        "127.0.0.1:40000: reading from the backend paused: the client is not taking its data",
        "127.0.0.1:40000: reading from the backend resumed",
        "127.0.0.1:40000: reading from the client paused: the backend is not taking its data",
        "127.0.0.1:40000: reading from the client resumed",
    ]
    set_verbosity(0)
    h.server_transport.producer.pauseProducing()
    h.server_transport.producer.resumeProducing()
    assert len([line for line in lines(events) if "reading from the" in line]) == 4  # not at 0


def test_each_tunnel_logs_one_open_and_one_close_line_with_counts(events):
    h = open_tunnel(greeting=b"12345")
    h.client.sendMessage(b"abc", isBinary=True)
    h.flush()
    h.reactor.advance(2.5)
    h.client.sendClose(1000)
    h.flush()
    text = lines(events)
    opened = [line for line in text if "tunnel open" in line]
    closed = [line for line in text if "tunnel closed" in line]
    assert len(opened) == 1 and len(closed) == 1
    assert "127.0.0.1:40000" in opened[0] and "127.0.0.1:5900" in opened[0]
    assert "3 bytes up" in closed[0] and "5 bytes down" in closed[0] and "2.5" in closed[0]


def test_tokens_in_the_request_never_reach_the_log(events):
    open_tunnel()
    assert not any("SECRET" in line for line in lines(events))
    assert any("token=***" in line for line in lines(events))


@both_paths
def test_close_all_closes_open_tunnels_with_1001():
    h = open_tunnel(greeting=b"")
    d = h.factory.close_all()
    h.flush()
    assert h.client.closed[1] == 1001
    assert d.called
    assert h.factory.tunnels == set()
    assert h.backend.lost is not None


def _silence(client):
    """Make the client a dead peer: it answers no ping."""
    client._onPing = lambda payload: None


@both_paths
def test_ping_keepalive_drops_a_silent_peer_after_the_timeout():
    h = Harness(ping_interval=5, ping_timeout=2)
    h.flush()
    h.connect_backend()
    h.flush()
    _silence(h.client)
    h.reactor.advance(5)  # the ping goes out
    h.flush()
    h.reactor.advance(1.9)
    h.flush()
    assert not h.server_transport.disconnecting, "dropped before the ping timeout"
    h.reactor.advance(0.2)
    h.flush()
    assert h.server_transport.disconnecting or h.server_transport.disconnected
    assert h.backend.lost is not None, "the backend goes with the dead client"


def test_ping_keepalive_keeps_a_live_peer():
    h = Harness(ping_interval=5, ping_timeout=2)
    h.flush()
    h.connect_backend()
    h.flush()
    for _ in range(20):
        h.reactor.advance(1)
        h.flush()
    assert h.client.closed is None and h.backend.lost is None


@both_paths
def test_unsolicited_pongs_while_a_keepalive_ping_is_pending_do_not_fill_the_log(events):
    """Each would be one Autobahn warning: a client could write the log full at will."""
    from twisted.logger import LogLevel

    h = Harness(ping_interval=5, ping_timeout=100)
    h.flush()
    h.connect_backend()
    h.flush()
    h.reactor.advance(5)  # the gateway's ping is on its way
    for _ in range(100):
        h.client.sendPong(b"unasked")
    h.flush()
    noisy = [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.info)
             and "pong" in (e.get("log_format") or "")]
    assert noisy == []
    assert h.client.closed is None


@both_paths
def test_handshake_waiting_on_the_gateway_is_dropped_after_connect_timeout_plus_margin():
    """Once the request is in, the handshake waits for the backend: that wait is bounded by
    connect_timeout + GATEWAY_MARGIN (not the client's --handshake_timeout), on the factory's clock."""
    h = Harness()
    h.flush()  # the backend never connects: the handshake stays pending
    timeout = h.factory.connect_timeout + GATEWAY_MARGIN
    assert timeout > h.factory.openHandshakeTimeout, "the test must tell the two deadlines apart"
    h.reactor.advance(timeout - 0.5)
    h.flush()
    assert not h.server_transport.disconnecting
    h.reactor.advance(1)
    h.flush()
    assert h.server_transport.disconnecting or h.server_transport.disconnected


def test_address_literals_are_connected_to_without_the_resolver():
    from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

    from nexusws.pipes import backend_endpoint

    reactor = MemoryReactorClock()
    assert isinstance(backend_endpoint(reactor, "127.0.0.1", 5900, 10), TCP4ClientEndpoint)
    assert isinstance(backend_endpoint(reactor, "::1", 5900, 10), TCP6ClientEndpoint)
    assert isinstance(backend_endpoint(reactor, "localhost", 5900, 10), HostnameEndpoint)


def test_autobahns_settings_dump_is_formatted_only_when_logged():
    import pprint

    import autobahn.websocket.protocol as protocol
    from twisted.logger import formatEvent

    settings = [("openHandshakeTimeout", 5, "BridgeFactory"), ("autoPingInterval", 0, "BridgeFactory")]
    lazy = protocol.pformat(settings)
    assert not isinstance(lazy, str), "nothing is formatted at the call"
    assert formatEvent({"log_format": "\n{attrs}", "attrs": lazy}) == "\n" + pprint.pformat(settings)


def test_a_close_frame_without_a_code_is_logged_as_1005(events):
    """RFC 6455 7.1.5: no status code in the close frame is 'close 1005', not 'close None'."""
    h = open_tunnel(greeting=b"")
    h.client.sendClose()
    h.flush()
    closed = [line for line in lines(events) if "tunnel closed" in line]
    assert len(closed) == 1 and "close 1005" in closed[0], closed
