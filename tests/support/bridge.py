"""The in-memory bridge harness: a WebSocket client, the gateway and a backend joined by iosim pumps on a memory reactor."""

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from nexusws.bridge import BridgeFactory
from nexusws.routing import FixedRouter, Target


class Transport(iosim.FakeTransport):
    """An iosim transport that remembers whether it was paused and half-closed."""

    paused = False
    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    @property
    def connected(self):
        return not self.disconnected


@implementer(IHalfCloseableProtocol)
class Backend(Protocol):
    """The TCP service behind the gateway: records what it gets; closes on EOF
    (as most servers do) unless C{close_on_eof} is false."""

    def __init__(self, greeting=b"", close_on_eof=True):
        self.greeting = greeting
        self.close_on_eof = close_on_eof
        self.received = bytearray()
        self.eof = False
        self.lost = None

    def readConnectionLost(self):
        self.eof = True
        if self.close_on_eof:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class ControlledEndpoint:
    """A client endpoint whose connection attempts the test completes by hand."""

    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append((factory, d))
        return d


class Client(WebSocketClientProtocol):
    """A WebSocket client that records what happens to it."""

    def __init__(self):
        super().__init__()
        self.messages = []
        self.opened = False
        self.closed = None

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        self.closed = (wasClean, code, reason)

    @property
    def received(self):
        return b"".join(p for p, _ in self.messages)


class Harness:
    """One client, the gateway, and (once connected) one backend, all in memory."""

    def __init__(self, router=None, protocols=("binary",), close_timeout=30.0, ping_interval=0.0,
                 ping_timeout=None, origin=None, peer=("127.0.0.1", 40000), like=None,
                 url="ws://127.0.0.1:9090/websockify?token=SECRET", headers=None, reactor=None, **factory_options):
        """C{origin}: the client's Origin header; C{peer}: its address; C{like}: another
        Harness whose gateway (factory, reactor, backend endpoint) this client joins;
        C{url}: the one the client asks for; C{headers}: more request headers; C{reactor}:
        the MemoryReactorClock of a new gateway (a registry's clock, say);
        C{factory_options}: more L{BridgeFactory} arguments."""
        if like is not None:
            self.reactor, self.endpoint, self.targets = like.reactor, like.endpoint, like.targets
        else:
            self.reactor = MemoryReactorClock() if reactor is None else reactor
            self.endpoint = ControlledEndpoint()
            self.targets = []
        endpoint = self.endpoint
        targets = self.targets

        class Factory(BridgeFactory):
            def backend_endpoint(self, target):
                targets.append(target)
                return endpoint

        self.factory = like.factory if like is not None else Factory(
            router or FixedRouter(Target("127.0.0.1", 5900)), self.reactor, close_timeout=close_timeout,
            ping_interval=ping_interval, ping_timeout=ping_timeout, **factory_options,
        )
        client_factory = WebSocketClientFactory(
            url, protocols=list(protocols), reactor=self.reactor, origin=origin, headers=headers,
        )
        client_factory.protocol = Client
        peer = IPv4Address("TCP", *peer)
        self.server = self.factory.buildProtocol(peer)
        self.client = client_factory.buildProtocol(None)
        self.server_transport = Transport(self.server, True, peerAddress=peer)
        self.client_transport = Transport(self.client, False)
        self.pump = iosim.connect(
            self.server, self.server_transport, self.client, self.client_transport,
            greet=False, clock=self.reactor,
        )
        self.backend = None
        self.backend_pump = None

    def connect_backend(self, greeting=b"", close_on_eof=True):
        factory, d = self.endpoint.attempts.pop(0)
        gateway_side = factory.buildProtocol(None)
        self.backend = Backend(greeting, close_on_eof)
        self.backend_transport = Transport(self.backend, True)
        self.gateway_backend_transport = Transport(gateway_side, False)
        self.backend_pump = iosim.connect(
            self.backend, self.backend_transport, gateway_side, self.gateway_backend_transport,
            greet=False, clock=self.reactor,
        )
        d.callback(gateway_side)

    def fail_backend(self, exc):
        _, d = self.endpoint.attempts.pop(0)
        d.errback(Failure(exc))

    def flush(self):
        for _ in range(1000):
            moved = self.pump.pump()
            if self.backend_pump is not None:
                moved = self.backend_pump.pump() or moved
                moved = self._deliver_eof() or moved
            if not moved:
                return
        raise AssertionError("pumps never settled")

    def _deliver_eof(self):
        """The gateway half-closed its backend connection and all it wrote has arrived:
        the backend reads EOF (iosim itself knows no half-close)."""
        gateway_side = self.gateway_backend_transport
        if gateway_side.write_closed and not self.backend.eof and not gateway_side.stream:
            self.backend.readConnectionLost()
            return True
        return False


def lines(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def open_tunnel(greeting=b"RFB 003.008\n", **kw):
    h = Harness(**kw)
    h.flush()
    h.connect_backend(greeting)
    h.flush()
    assert h.client.opened
    return h
