"""An in-memory /v1 API with access rules: an L{ApiRoot} over a Registry of an open service
and a ClusterRendering one, asked from any peer, as any user (test_api_access, test_portal_api)."""

import json

from twisted.internet import defer
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from nexusws import web
from nexusws.api import ApiRoot
from nexusws.auth import Access
from nexusws.groups import GroupsFile
from nexusws.sessions.registry import Registry
from support.api import EPOCH, FakeService
from support.http import Response

SECRET = "s3cr3t-T0KEN"
LOCAL, REMOTE = "127.0.0.1", "203.0.113.9"
#: The peer of a UNIX-socket connection (nginx on the shipped sockets).
UNIX = object()


class Gateway:
    """An ApiRoot over a Registry of an open service and a ClusterRendering one."""

    def __init__(self, tmp_path, security_token=None, registry_options=None, **access):
        groups = tmp_path / "groups.json"
        groups.write_text(json.dumps({"ClusterRendering": ["alice"], "RemoteSession": ["alice", "bob"],
                                      "admins": ["carol"]}))
        self.clock = Clock()
        self.services = [FakeService("open", count=3),
                         FakeService("render", count=3, common_options={"group": "ClusterRendering"})]
        self.services[1].group = "ClusterRendering"
        self.registry = Registry(self.services, self.clock, wallclock=lambda: EPOCH,
                                 wait_for_port=lambda *args: defer.succeed(None), **(registry_options or {}))
        self.access = Access(groups_file=GroupsFile(groups, self.clock), **access)
        self.stops = []
        self.api = root = ApiRoot(security_token, registry=self.registry, stop=lambda: self.stops.append(1),
                                  reactor=self.clock, access=self.access)
        self.site = web.make_site(str(tmp_path), root, reactor=MemoryReactorClock())

    def get(self, target, peer=LOCAL, user=None, forwarded=None, headers=()):
        """GET C{target} from C{peer} (an IPv4 address, or UNIX: a UNIX-socket peer), with
        the user header and X-Forwarded-For if given."""
        return Response(self.send(target, peer, user, forwarded, headers)[1].value(), b"GET")

    def send(self, target, peer=LOCAL, user=None, forwarded=None, headers=(), method=b"GET"):
        """As L{get}, but C{(protocol, transport)}: for an answer that goes on (a stream)."""
        lines = [method + b" " + target.encode() + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
        if user is not None:
            lines.append(b"X-Remote-User: " + user.encode())
        if forwarded is not None:
            lines.append(b"X-Forwarded-For: " + forwarded.encode())
        lines += [f"{n}: {v}".encode() for n, v in headers]
        address = UNIXAddress(None) if peer is UNIX else IPv4Address("TCP", peer, 40000)
        host = UNIXAddress(b"/run/nexusws/http.sock") if peer is UNIX else IPv4Address("TCP", LOCAL, 8080)
        transport = StringTransport(peerAddress=address, hostAddress=host)
        protocol = self.site.buildProtocol(address)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\r\n".join([*lines, b"", b""]))
        self.clock.advance(0)  # /v1/stop calls later
        return protocol, transport

    def reserve(self, service="open", **kwargs):
        """Reserve; return (status, body)."""
        r = self.get(f"/v1/reserve/{service}" + kwargs.pop("query", ""), **kwargs)
        return r.status, r.json()
