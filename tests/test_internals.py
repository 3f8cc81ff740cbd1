"""The library internals the data path uses (L{nexusws.internals}): the start-up check,
and the tunnel's behaviour on the public-API fallback it switches to.

The key bridge and pipes tests (bytes flow exactly both ways, flow control, the
close rules) run on the fallback too: they carry C{@both_paths}
(L{support.data_path}) in test_bridge and test_pipes.
"""

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract
from twisted.logger import LogLevel, formatEvent

from nexusws import internals, pipes
from nexusws.gateway import check_internals
from support.bridge import open_tunnel
from support.events import events_of
from support.pipes import receive


@pytest.fixture(autouse=True)
def _restore():
    yield
    assert internals.check() == [], "the installed libraries' internals again"


@pytest.fixture
def public_apis():
    """The module switched to its public-API fallback, as when an internal is missing."""
    internals.set_fast(False)
    yield


# --- the check ----------------------------------------------------------------


def test_the_installed_twisted_and_autobahn_have_every_internal_used():
    """Fails when an upstream release renames or retypes one (and names it)."""
    assert internals.check() == []
    assert internals.FAST
    assert internals.raw_receive is WebSocketServerProtocol._dataReceived


def test_with_every_internal_there_the_start_up_check_logs_nothing():
    ok, events = events_of(check_internals)
    assert ok is True and events == []


def _without_inside_message(monkeypatch):
    on_open = WebSocketServerProtocol._onOpen

    def opened(self):  # as if Autobahn had renamed it
        del self.inside_message
        return on_open(self)

    monkeypatch.setattr(WebSocketServerProtocol, "_onOpen", opened)


@pytest.mark.parametrize("remove, name", [
    (lambda mp: mp.delattr(abstract.FileDescriptor, "_writeDisconnected"), "tcp.Server._writeDisconnected"),
    (lambda mp: mp.setattr(abstract.FileDescriptor, "dataBuffer", []), "tcp.Server.dataBuffer"),
    (lambda mp: mp.delattr(WebSocketProtocol, "processControlFrame"), "WebSocketServerProtocol.processControlFrame"),
    (lambda mp: mp.delattr(WebSocketProtocol, "_fail_connection"), "WebSocketServerProtocol._fail_connection"),
    (_without_inside_message, "WebSocketServerProtocol.inside_message"),
])
def test_a_missing_internal_is_named_and_the_public_apis_are_used(monkeypatch, remove, name):
    """Missing, or of another type: named, and the module falls back."""
    remove(monkeypatch)
    assert internals.check() == [name]
    assert not internals.FAST
    assert internals.raw_receive is not WebSocketServerProtocol._dataReceived


def test_the_start_up_warning_is_one_line_naming_what_is_missing_and_the_versions(monkeypatch):
    monkeypatch.delattr(abstract.FileDescriptor, "_writeDisconnected")
    _without_inside_message(monkeypatch)
    ok, events = events_of(check_internals)
    assert ok is False
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    line = formatEvent(events[0])
    assert "\n" not in line
    assert "tcp.Server._writeDisconnected, WebSocketServerProtocol.inside_message" in line
    assert internals.versions() in line and "public APIs" in line


def test_a_probe_that_fails_outright_is_reported_not_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("changed\nupstream")

    monkeypatch.setattr(internals.tcp, "Server", broken)
    missing = internals.check()
    assert missing == ["twisted probe (RuntimeError: changed upstream)"]
    assert not internals.FAST


# --- the fallback -------------------------------------------------------------


def test_on_the_public_apis_a_write_is_an_ordinary_twisted_write(public_apis, pair):
    transport, peer, reactor = pair
    internals.write_now(transport, b"data", b"HEAD")
    assert transport in reactor.getWriters(), "queued for the reactor, not sent behind its back"
    transport.doWrite()
    assert receive(peer, 8) == b"HEADdata"


def test_on_the_public_apis_queued_is_unknown_and_the_client_is_taken_not_to_keep_up(public_apis):
    h = open_tunnel(greeting=b"")
    assert internals.queued(h.server.transport) is None
    assert not h.server.client_keeps_up()
    backend = h.server.backend
    backend.dataReceived(b"x" * backend.transport.bufferSize)
    assert backend.transport.bufferSize == pipes.READ_MIN, "reads do not grow"


def test_on_the_public_apis_every_frame_goes_through_autobahn(public_apis, monkeypatch):
    """No frame fast path either way: client frames are parsed by Autobahn, backend
    data is sent with sendMessage."""
    monkeypatch.setattr(pipes, "simple_frames", None)  # called: a TypeError
    h = open_tunnel(greeting=b"")
    sent = []
    send_message = h.server.sendMessage
    h.server.sendMessage = lambda payload, isBinary: sent.append(payload) or send_message(payload, isBinary)
    h.client.sendMessage(b"up" * 1000, isBinary=True)
    h.backend.transport.write(b"down")
    h.flush()
    assert bytes(h.backend.received) == b"up" * 1000
    assert h.client.received == b"down" and sent == [b"down"]


# --- the balancer's HTTP pool -------------------------------------------------------


def test_the_balancers_pool_is_persistent_and_its_connections_log_no_factory_lines():
    from twisted.internet.task import Clock
    from twisted.web.client import HTTPConnectionPool

    pool = internals.quiet_http_pool(Clock())
    assert isinstance(pool, HTTPConnectionPool) and pool.persistent
    assert pool._factory.noisy is False and HTTPConnectionPool._factory.noisy is True


def test_without_twisteds_pool_factory_the_balancer_gets_a_plain_pool(monkeypatch):
    import types

    from twisted.internet.task import Clock
    from twisted.web.client import HTTPConnectionPool

    monkeypatch.setattr(internals, "client", types.SimpleNamespace())  # a Twisted without it
    pool = internals.quiet_http_pool(Clock())
    assert type(pool) is HTTPConnectionPool and pool.persistent
