"""The in-memory /v1 API harness: an L{ApiRoot} on a real Site and Registry of fake services, on a Clock."""

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from nexusws import web
from nexusws.api import ApiRoot
from nexusws.sessions.registry import Registry
from support.http import PEER, Response

SECRET = "s3cr3t-T0KEN"
EPOCH = 1767225600.0  # what the wall clock reads at Clock time 0: 2026-01-01T00:00:00Z
ADDRESS = ("127.0.0.1", 5900)
JSON_TYPE = "application/json; charset=utf-8"


class FakeService:
    """A service in the shape L{Registry} expects; records start/stop calls."""

    def __init__(self, name="demo", count=1, aliases=(), common_options=None):
        self.name, self.count, self.aliases = name, count, tuple(aliases)
        self.common_options = {"sizes": ["1024x768"]} if common_options is None else common_options
        self.group, self.origin = None, "test"
        self.starts, self.stops = [], []  # (index, options); index
        self.stopping = None  # what stop() returns: None (stopped at once) or a Deferred

    def start(self, index, options):
        self.starts.append((index, dict(options)))
        return ADDRESS

    def stop(self, index):
        self.stops.append(index)
        return self.stopping

    def pids(self, index):
        return []


class Exchange:
    """One request on its own connection; its response may come later."""

    def __init__(self, site, target, method, headers, transport=None):
        if isinstance(target, str):
            target = target.encode("ascii")
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: localhost"]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
        self.method = method
        self.transport = transport if transport is not None else StringTransport(
            peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.protocol = site.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(b"\r\n".join([*lines, b"Connection: close", b"", b""]))

    @property
    def finished(self):
        """The whole response is written (with C{Connection: close}, the server then hangs up)."""
        return self.transport.disconnecting

    def response(self):
        assert self.finished, "the response is not complete"
        return Response(self.transport.value(), self.method)

    def hang_up(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Api:
    """An L{ApiRoot} mounted at /v1 of a real Site, over a real Registry and a Clock.

    @ivar stop_calls: one entry per call of the stop callable: whether each
        request sent so far had its complete answer written at that moment.
    """

    def __init__(self, directory, services=None, security_token=None, with_registry=True, **registry_options):
        self.clock = Clock()
        self.services = [FakeService()] if services is None else services
        self.registry = Registry(
            self.services, self.clock, wallclock=lambda: EPOCH + self.clock.seconds(),
            wait_for_port=lambda reactor, host, port, timeout: defer.succeed(None), **registry_options,
        ) if with_registry else None
        self.exchanges, self.stop_calls = [], []
        root = ApiRoot(security_token, registry=self.registry, stop=self._stop, reactor=self.clock)
        self.site = web.make_site(str(directory), root, reactor=MemoryReactorClock())

    def _stop(self):
        self.stop_calls.append([e.finished for e in self.exchanges])

    def send(self, target, method=b"GET", headers=(), transport=None):
        exchange = Exchange(self.site, target, method, headers, transport)
        self.exchanges.append(exchange)
        return exchange

    def get(self, target, method=b"GET", headers=()):
        """Send a request whose answer must be complete at once; return it."""
        return self.send(target, method, headers).response()

    def reserve(self, query=""):
        r = self.get(f"/v1/reserve/{self.services[0].name}{query}")
        assert r.status == 200, r.raw
        return r.json()["token"]

    def live(self):
        """The instances in the registry's own status: {token: (service, index, state)}."""
        return {i["token"]: (s["name"], i["index"], i["state"])
                for s in self.registry.status() for i in s["instances"]}
