"""A Twisted TCP server transport over a real loopback socket (the C{pair} fixture), and reading its peer."""

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor


class Recorder(Protocol):
    lost = None

    def connectionLost(self, reason):
        self.lost = reason


@pytest.fixture
def pair():
    """A Twisted TCP server transport over a loopback socket, and the raw socket at its other end."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    reactor, protocol = MemoryReactor(), Recorder()
    transport = tcp.Server(ours, protocol, ours.getpeername(), None, 1, reactor)
    protocol.makeConnection(transport)
    yield transport, peer, reactor
    peer.close()
    ours.close()


def receive(sock, n, timeout=5.0):
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
