"""Limits against abuse: handshake timeout, frame and message sizes (1009), tunnel caps
(503 in total, 429 per address), reservation quotas (429), in memory and on a real gateway.

The cap on session start-up time (--start_timeout) is pinned elsewhere:
tests/test_reservations.py::test_a_port_that_never_opens_times_out_at_start_timeout_and_is_cleaned_up
and ::test_a_start_that_never_returns_times_out_too (in memory), and
tests/test_sessions.py::test_port_never_opening_closes_1011_after_start_timeout_and_stops_what_started
(a real gateway: the session exceeding it is stopped, its processes gone).
"""

import asyncio
import re
import socket
import time

import pytest
import websockets
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.python.failure import Failure
from websockets.asyncio.client import connect

from nexusws import limits, tap
from nexusws.api import ApiRoot
from nexusws.limits import QuotaExceeded, Refused, TunnelCounter
from support.api import SECRET, Api, FakeService
from support.bridge import Harness, Transport, lines
from support.sessions import gateway_args, get
from support.tcp_peers import Backend
from support.waiting import wait_until_async

MiB = 1024 * 1024
REQUEST = (b"GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --- options ----------------------------------------------------------------------------


def test_limit_options_have_sensible_defaults():
    options = tap.Options()
    options.parseOptions(["9090"])
    assert options["handshake_timeout"] == 10.0
    assert options["max_frame_size"] == options["max_message_size"] == 16 * MiB
    assert (options["max_tunnels"], options["max_tunnels_per_address"]) == (256, 32)
    assert options["max_reservations_per_user"] == 8
    assert options["start_timeout"] == 30.0


@pytest.mark.parametrize("args, key, value", [
    (["--handshake_timeout", "2.5"], "handshake_timeout", 2.5),
    (["--max_frame_size", "65536"], "max_frame_size", 65536),
    (["--max_frame_size", "64K"], "max_frame_size", 65536),
    (["--max_message_size", "16MiB"], "max_message_size", 16 * MiB),
    (["--max_message_size", "1g"], "max_message_size", 1024 * MiB),
    (["--max_message_size", "0"], "max_message_size", 0),
    (["--max_tunnels", "0"], "max_tunnels", 0),
    (["--max_tunnels_per_address", "4"], "max_tunnels_per_address", 4),
    (["--max_reservations_per_user", "2"], "max_reservations_per_user", 2),
])
def test_limit_options_arrive_typed(args, key, value):
    options = tap.Options()
    options.parseOptions(["9090", *args])
    assert options[key] == value


@pytest.mark.parametrize("args", [
    ["--handshake_timeout", "-1"], ["--handshake_timeout", "soon"], ["--max_frame_size", "-5"],
    ["--max_frame_size", "16T"], ["--max_message_size", "1.5M"], ["--max_tunnels", "-1"],
    ["--max_tunnels_per_address", "many"], ["--max_reservations_per_user", "2.0"],
])
def test_bad_limit_values_are_usage_errors_naming_the_option(args):
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions(["9090", *args])
    assert str(caught.value).startswith(args[0] + ": ")


def test_make_service_hands_the_limits_to_the_bridge_and_the_api(tmp_path):
    options = tap.Options()
    options.parseOptions(["--http_directory", str(tmp_path), "--http_port", "0", "--client_port", "1",
                          "--handshake_timeout", "3", "--max_frame_size", "1K", "--max_message_size",
                          "2K", "--max_tunnels", "5", "--max_tunnels_per_address", "2",
                          "--max_reservations_per_user", "3", "--allowed_origin", "null", "0"])
    top = tap.makeService(options, MemoryReactorClock())
    (bridge,) = [c.factory for c in top if getattr(c, "label", None) == "--ws_listen"]
    assert (bridge.openHandshakeTimeout, bridge.maxFramePayloadSize, bridge.maxMessagePayloadSize) == (
        3, 1024, 2048)
    assert (bridge.counter.max_total, bridge.counter.max_per_address) == (5, 2)
    assert [str(p) for p in bridge.origins.patterns] == ["null"]
    assert bridge.allowNullOrigin, "Autobahn's own check must keep letting null through"
    (site,) = [c.factory for c in top if getattr(c, "label", None) == "--http_listen"]
    api = site.resource.children[b"v1"]
    assert isinstance(api, ApiRoot) and api.max_reservations_per_user == 3


# --- frame and message sizes, in memory --------------------------------------------------


def test_a_frame_beyond_max_frame_size_closes_1009_and_none_of_it_reaches_the_backend(events):
    h = Harness(max_frame_size=1000, max_message_size=0)
    h.flush()
    h.connect_backend()
    h.flush()
    h.client.sendMessage(b"a" * 1000, isBinary=True)  # at the limit: passes
    h.flush()
    assert bytes(h.backend.received) == b"a" * 1000 and h.client.closed is None
    h.client.sendMessage(b"b" * 1001, isBinary=True)
    h.flush()
    assert h.client.closed is not None and h.client.closed[1] == 1009
    assert bytes(h.backend.received) == b"a" * 1000, "no byte of the oversized frame is forwarded"
    assert h.backend.lost is not None, "the backend connection ends with the tunnel"
    closed = [line for line in lines(events) if "tunnel closed" in line]
    assert len(closed) == 1 and "close 1009" in closed[0]


def test_a_message_growing_beyond_max_message_size_closes_1009_at_the_frame_that_crosses():
    """Frames stream through as they come; the frame that would cross the limit is refused."""
    h = Harness(max_frame_size=0, max_message_size=1000)
    h.flush()
    h.connect_backend()
    h.flush()
    h.client.beginMessage(isBinary=True)
    h.client.sendMessageFrame(b"x" * 600)
    h.flush()
    assert bytes(h.backend.received) == b"x" * 600
    h.client.sendMessageFrame(b"y" * 401)
    h.flush()
    assert h.client.closed is not None and h.client.closed[1] == 1009
    assert bytes(h.backend.received) == b"x" * 600


def test_a_fragmented_message_of_exactly_max_message_size_passes():
    h = Harness(max_frame_size=0, max_message_size=1000)
    h.flush()
    h.connect_backend()
    h.flush()
    for _ in range(3):
        h.client.beginMessage(isBinary=True)
        h.client.sendMessageFrame(b"x" * 500)
        h.client.sendMessageFrame(b"y" * 500)
        h.client.endMessage()
    h.flush()
    assert h.client.closed is None and len(h.backend.received) == 3000


def test_backend_data_beyond_max_message_size_reaches_the_client_in_pieces_within_it():
    """Autobahn applies the message limit to what it sends too: the bridge cuts backend
    data into messages no larger than the limit, so nothing is refused or lost."""
    h = Harness(max_message_size=1000)
    h.flush()
    h.connect_backend()
    h.flush()
    data = bytes(range(256)) * 10
    h.backend.transport.write(data)
    h.flush()
    assert h.client.received == data and h.client.closed is None
    assert max(len(p) for p, _ in h.client.messages) <= 1000


# --- tunnel caps, in memory ------------------------------------------------------------------


def refusal_status(h):
    """Record what the gateway writes to this client; returns the list it fills."""
    written = []
    original = h.server_transport.write
    h.server_transport.write = lambda data: (written.append(data), original(data))
    return written


def opened(h):
    h.flush()
    h.connect_backend()
    h.flush()
    assert h.client.opened
    return h


def test_beyond_max_tunnels_the_handshake_is_refused_503_connects_nothing_and_is_logged(events):
    first = opened(Harness(max_tunnels=2, peer=("10.0.0.1", 1)))
    opened(Harness(like=first, peer=("10.0.0.2", 2)))
    third = Harness(like=first, peer=("10.0.0.3", 3))
    written = refusal_status(third)
    third.flush()
    assert not third.client.opened
    assert b"".join(written).startswith(b"HTTP/1.1 503 ")
    assert len(first.targets) == 2 and first.endpoint.attempts == [], "nothing dialled for the third"
    refused = [line for line in lines(events) if "tunnel refused" in line]
    assert len(refused) == 1 and "10.0.0.3:3" in refused[0] and "503" in refused[0]
    assert "--max_tunnels 2" in refused[0]
    first.client.sendClose(1000)
    first.flush()
    opened(Harness(like=first, peer=("10.0.0.4", 4)))  # the slot was given back


def test_beyond_max_tunnels_per_address_the_handshake_is_refused_429_other_addresses_pass(events):
    first = opened(Harness(max_tunnels_per_address=2, peer=("10.0.0.1", 1)))
    opened(Harness(like=first, peer=("10.0.0.1", 2)))
    third = Harness(like=first, peer=("10.0.0.1", 3))
    written = refusal_status(third)
    third.flush()
    assert not third.client.opened and b"".join(written).startswith(b"HTTP/1.1 429 ")
    assert first.endpoint.attempts == [] and len(first.targets) == 2
    opened(Harness(like=first, peer=("10.0.0.2", 4)))
    refused = [line for line in lines(events) if "tunnel refused" in line]
    assert len(refused) == 1 and "429" in refused[0] and "10.0.0.1:3" in refused[0]


def test_a_handshake_waiting_for_its_backend_already_holds_a_slot():
    """Counting starts at the request, so pending handshakes cannot pile up past the cap."""
    first = Harness(max_tunnels=1)
    first.flush()  # the backend connect is pending
    second = Harness(like=first, peer=("10.0.0.9", 9))
    second.flush()
    assert not second.client.opened and len(first.targets) == 1


def test_tunnel_slots_are_always_given_back_many_cycles_of_every_ending():
    """Opened then closed by either side, refused (502, 400, 403, 503), abandoned during the
    backend connect, timed out mid-request: after 40 rounds of each, no slot is held."""
    base = Harness(max_tunnels=3, max_tunnels_per_address=3, allowed_origins=["https://ok.example"],
                   handshake_timeout=2)
    counter = base.factory.counter
    port = iter(range(1000, 100000))

    def client(**kw):
        return Harness(like=base, peer=("10.0.0.1", next(port)), **kw)

    for _ in range(40):
        h = opened(client())
        h.client.sendClose(1000)  # the client closes
        h.flush()
        h = opened(client())
        h.backend.transport.loseConnection()  # the backend closes
        h.flush()
        h = client()
        h.flush()
        h.fail_backend(error.ConnectionRefusedError())  # 502
        h.flush()
        h = client(protocols=("base64",))  # 400
        h.flush()
        client(origin="https://evil.example").flush()  # 403
        h = client()
        h.flush()
        h.client_transport.loseConnection()  # gone during the backend connect
        h.flush()
        if base.endpoint.attempts:
            base.fail_backend(error.ConnectingCancelledError(None))
        held = [opened(client()) for _ in range(3)]
        extra = client()  # 503/429 while full
        extra.flush()
        assert not extra.client.opened
        for h in held:
            h.client_transport.loseConnection()  # dropped without a close handshake
            h.flush()
        silent = base.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", next(port)))
        silent.makeConnection(Transport(silent, True, peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
        silent.dataReceived(REQUEST[:20])  # then nothing: the handshake times out
        base.reactor.advance(2.5)
        base.flush()
        assert (counter.total, counter.by_address) == (0, {}), "a slot leaked"
    assert base.factory.tunnels == set()
    opened(client())


def test_tunnel_counter_release_is_idempotent():
    counter = TunnelCounter(max_total=1)
    release = counter.acquire("a")
    release()
    release()
    assert (counter.total, counter.by_address) == (0, {})
    counter.acquire("b")
    with pytest.raises(Refused) as caught:
        counter.acquire("c")
    assert caught.value.code == 503


# --- handshake timeout, in memory -----------------------------------------------------------


def silent_client(factory, host="127.0.0.1", port=40000):
    peer = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(peer)
    transport = Transport(protocol, True, peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_client_that_sends_nothing_is_dropped_after_handshake_timeout_and_logged(events):
    h = Harness(handshake_timeout=3)
    protocol, transport = silent_client(h.factory)
    h.reactor.advance(2.9)
    assert not transport.disconnecting and not transport.disconnected
    h.reactor.advance(0.2)
    assert transport.disconnecting or transport.disconnected
    protocol.connectionLost(Failure(error.ConnectionAborted()))  # what the reactor then does
    timeouts = [line for line in lines(events) if line.startswith("handshake timeout")]
    assert timeouts == ["handshake timeout: 127.0.0.1:40000 dropped: no complete request within 3 s"]


def test_a_slow_loris_trickling_its_request_is_dropped_at_handshake_timeout():
    """Bytes arriving do not extend the deadline: it runs from the TCP connection."""
    h = Harness(handshake_timeout=3)
    protocol, transport = silent_client(h.factory)
    for i in range(29):
        protocol.dataReceived(REQUEST[i:i + 1])
        h.reactor.advance(0.1)
    assert not transport.disconnecting
    protocol.dataReceived(REQUEST[29:30])
    h.reactor.advance(0.15)
    assert transport.disconnecting or transport.disconnected
    assert h.endpoint.attempts == [] and h.factory.counter.total == 0


def test_handshake_timeout_does_not_cut_a_slow_backend_connect():
    """Once the request is in, the backend gets --connect_timeout, even beyond the handshake timeout."""
    h = Harness(handshake_timeout=2)
    h.flush()
    h.reactor.advance(8)  # longer than the handshake timeout, shorter than connect_timeout + margin
    h.flush()
    assert not h.server_transport.disconnecting
    h.connect_backend()
    h.flush()
    assert h.client.opened


def test_handshake_timeout_zero_means_none():
    h = Harness(handshake_timeout=0)
    _, transport = silent_client(h.factory)
    h.reactor.advance(3600)
    assert not transport.disconnecting


# --- reservation quotas -------------------------------------------------------------------


@pytest.fixture
def quota_api(make_quota_api):
    return make_quota_api()


@pytest.fixture
def make_quota_api(tmp_path, monkeypatch):
    def make(limit=2, **kwargs):
        monkeypatch.setattr(ApiRoot, "max_reservations_per_user", limit)
        return Api(tmp_path, [FakeService(count=10)], **kwargs)
    return make


def check_quota(registry, user, address, limit):
    """What /v1/reserve does: the registry counts, limits decides."""
    limits.check_reservation_quota(registry.outstanding(user, address), user, address, limit)


def test_check_reservation_quota_counts_users_everywhere_and_anonymous_clients_by_address(quota_api):
    registry = quota_api.registry
    registry.reserve("demo", user="alice", client="10.0.0.1")
    registry.reserve("demo", user="alice", client="10.0.0.2")
    registry.reserve("demo", client="10.0.0.3")
    registry.reserve("demo", client="10.0.0.3")
    assert registry.outstanding("alice", "10.0.0.9") == 2
    with pytest.raises(QuotaExceeded, match="user 'alice' already holds 2"):
        check_quota(registry, "alice", "10.0.0.9", 2)
    check_quota(registry, "bob", "10.0.0.1", 2)  # another user, same address
    with pytest.raises(QuotaExceeded, match="address 10.0.0.3 already holds 2"):
        check_quota(registry, None, "10.0.0.3", 2)
    assert registry.outstanding(None, "10.0.0.1") == 0  # alice's are not anonymous ones
    check_quota(registry, None, "10.0.0.1", 2)
    check_quota(registry, "alice", "10.0.0.1", 0)  # 0: no quota
    check_quota(registry, None, None, 1)  # nobody to count
    limits.check_reservation_quota(5, None, None, 1)


def test_ended_reservations_no_longer_count(quota_api):
    registry = quota_api.registry
    r = registry.reserve("demo", client="10.0.0.3")
    with pytest.raises(QuotaExceeded):
        check_quota(registry, None, "10.0.0.3", 1)
    registry.release(r.token)
    check_quota(registry, None, "10.0.0.3", 1)


def test_active_reservations_count_and_stopping_ones_do_not(quota_api):
    registry, service = quota_api.registry, quota_api.registry.services[0]
    service.stopping = defer.Deferred()  # its stop takes a while
    r = registry.reserve("demo", user="alice")
    registry.activate(r.token)
    assert r.state == "active" and registry.outstanding("alice", None) == 1
    registry.release(r.token)
    assert r.state == "stopping" and registry.outstanding("alice", None) == 0
    service.stopping.callback(None)


def test_reserve_beyond_the_quota_answers_429_and_reserves_nothing(quota_api, events):
    first, second = quota_api.reserve(), quota_api.reserve()
    r = quota_api.get("/v1/reserve/demo")
    assert r.status == 429 and "already holds 2" in r.json()["error"]
    assert len(quota_api.live()) == 2
    assert any("/v1/reserve refused" in line and "already holds 2" in line for line in lines(events))
    assert quota_api.get(f"/v1/release/{first}").status == 200
    assert quota_api.get("/v1/reserve/demo").status == 200, "a released reservation frees quota"
    assert second in quota_api.live()


def test_reserve_quota_is_per_address_for_anonymous_clients(quota_api, monkeypatch):
    import support.api

    quota_api.reserve()
    quota_api.reserve()
    assert quota_api.get("/v1/reserve/demo").status == 429
    monkeypatch.setattr(support.api, "PEER", IPv4Address("TCP", "127.0.0.2", 40000))
    assert quota_api.get("/v1/reserve/demo").status == 200


def test_reserve_quota_is_per_user_behind_the_trusted_proxy(make_quota_api, monkeypatch):
    """Users named by the proxy's header are counted apart though they share its address.
    (A proxy's users are no local callers: they reserve under --allow_remote_api.)"""
    import functools

    from nexusws import api, auth

    monkeypatch.setattr(api, "Access", functools.partial(auth.Access, allow_remote_api=True))
    quota_api = make_quota_api()
    alice = [("X-Remote-User", "alice")]
    for _ in range(2):
        assert quota_api.get("/v1/reserve/demo", headers=alice).status == 200
    assert quota_api.get("/v1/reserve/demo", headers=alice).status == 429
    assert quota_api.get("/v1/reserve/demo", headers=[("X-Remote-User", "bob")]).status == 200


def test_with_the_security_token_only_named_users_are_counted(make_quota_api):
    """The operator's calls (security token, no user) are not limited; a user they name is."""
    api = make_quota_api(limit=1, security_token=SECRET)
    for _ in range(3):
        assert api.get(f"/v1/reserve/demo?security_token={SECRET}").status == 200
    assert api.get(f"/v1/reserve/demo?security_token={SECRET}&user=carol").status == 200
    assert api.get(f"/v1/reserve/demo?security_token={SECRET}&user=carol").status == 429


# --- a real gateway ------------------------------------------------------------------------


def basic(port, *extra):
    return ["--ws_listen", "tcp:0:interface=127.0.0.1", "--client_hostname", "127.0.0.1",
            "--client_port", str(port), *extra]


@pytest.mark.parametrize("limit_args, size", [
    (["--max_message_size", "64K"], 64 * 1024),
    (["--max_frame_size", "64K", "--max_message_size", "0"], 64 * 1024),
])
def test_real_gateway_closes_1009_on_a_message_or_frame_beyond_the_limit(gateway, limit_args, size):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port, *limit_args))
            async with connect(gw.ws_url, subprotocols=["binary"], max_size=None) as ws:
                await ws.send(b"a" * size)  # at the limit: echoed back
                got = b""
                while len(got) < size:
                    got += await ws.recv()
                await ws.send(b"b" * (size + 1))
                with pytest.raises(websockets.ConnectionClosedError) as info:
                    while True:
                        await ws.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            line = gw.wait_for(r"tunnel closed").string
            assert "close 1009" in line
            peer = await backend.peer()
            assert peer.count == size, "nothing of the oversized message reached the backend"
    run(scenario())


async def refused_with(url, **kw):
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(url, subprotocols=["binary"], **kw):
            pass
    return info.value.response.status_code


def test_real_gateway_refuses_503_beyond_max_tunnels_and_429_beyond_the_per_address_cap(gateway):
    """Addresses 127.0.0.1-3 are distinct clients (all loopback on Linux)."""
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port, "--max_tunnels", "2", "--max_tunnels_per_address", "1"))
            src = {n: {"local_addr": (f"127.0.0.{n}", 0)} for n in (1, 2, 3)}
            async with connect(gw.ws_url, subprotocols=["binary"], **src[1]):
                assert await refused_with(gw.ws_url, **src[1]) == 429
                async with connect(gw.ws_url, subprotocols=["binary"], **src[2]) as ws:
                    assert await refused_with(gw.ws_url, **src[3]) == 503
                    await ws.send(b"still fine")
                    assert await ws.recv() == b"still fine"
            assert "429" in gw.wait_for(r"tunnel refused: 127\.0\.0\.1:").string
            assert "503" in gw.wait_for(r"tunnel refused: 127\.0\.0\.3:").string
            # A tunnel's close is logged once its slot is given back.
            await wait_until_async(lambda: all(re.search(rf"tunnel closed: 127\.0\.0\.{n}:", gw.log) for n in (1, 2)),
                                   10, "both tunnels closed")
            for n in (1, 3):  # both slots came back
                async with connect(gw.ws_url, subprotocols=["binary"], **src[n]) as ws:
                    await ws.send(b"again")
                    assert await ws.recv() == b"again"
    run(scenario())


def test_real_gateway_gives_slots_back_over_many_open_close_cycles(gateway):
    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port, "--max_tunnels", "2"))
            for i in range(30):
                async with connect(gw.ws_url, subprotocols=["binary"]) as ws:
                    await ws.send(b"%d" % i)
                    assert await ws.recv() == b"%d" % i
                if i % 3 == 0:  # and some clients that vanish mid-handshake
                    _, writer = await asyncio.open_connection("127.0.0.1", gw.ws_port)
                    writer.write(REQUEST[:40])
                    writer.transport.abort()
            # A tunnel's close is logged once its slot is given back (a client that vanished
            # mid-handshake never held one: a slot is taken on a complete request).
            await wait_until_async(lambda: gw.log.count("tunnel closed: ") == 30, 10, "the 30 tunnels closed")
            async with connect(gw.ws_url, subprotocols=["binary"]), \
                    connect(gw.ws_url, subprotocols=["binary"]) as ws:
                await ws.send(b"two at once")
                assert await ws.recv() == b"two at once"
    run(scenario())


def test_real_gateway_drops_a_silent_tcp_client_after_the_handshake_timeout(gateway):
    gw = gateway(basic(9, "--handshake_timeout", "1"))
    with socket.create_connection(("127.0.0.1", gw.ws_port), timeout=10) as sock:
        began = time.monotonic()
        try:
            assert sock.recv(1) == b"", "the gateway must send nothing"
        except ConnectionResetError:
            pass  # dropped with a reset: that is what Autobahn's timeout does
        waited = time.monotonic() - began
    assert 0.8 <= waited < 5, waited
    line = gw.wait_for(r"handshake timeout: ").string
    assert "no complete request within 1 s" in line


def test_real_gateway_answers_429_when_a_client_exceeds_its_reservation_quota(gateway, tmp_path):
    gw = gateway(gateway_args(tmp_path, "--max_reservations_per_user", "1"), http=True)
    status, body = get(f"{gw.http_url}/v1/reserve/echo")
    assert status == 200
    status, refused = get(f"{gw.http_url}/v1/reserve/echo")
    assert status == 429 and "already holds 1" in refused["error"]
    assert get(f"{gw.http_url}/v1/release/{body['token']}")[0] == 200
    assert get(f"{gw.http_url}/v1/reserve/echo")[0] == 200
