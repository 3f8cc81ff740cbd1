"""Real TCP backends on 127.0.0.1:0 for integration tests (asyncio)."""

import asyncio
import hashlib


class Peer(asyncio.Protocol):
    """One backend connection: records what it receives; can stall or flood."""

    def __init__(self, server):
        self.server = server
        self.received = bytearray()
        self.digest = hashlib.sha256()
        self.count = 0
        self.eof = asyncio.get_running_loop().create_future()
        self.transport = None
        self.keep = server.keep

    def connection_made(self, transport):
        self.transport = transport
        self.server.peers.append(self)
        if self.server.greeting:
            transport.write(self.server.greeting)
        if self.server.stalled:
            transport.pause_reading()
        self.server.connected.set()

    def data_received(self, data):
        self.count += len(data)
        self.digest.update(data)
        if self.keep:
            self.received += data
        if self.server.echo:
            self.transport.write(data)

    def eof_received(self):
        if not self.eof.done():
            self.eof.set_result(True)
        return False

    def connection_lost(self, exc):
        if not self.eof.done():
            self.eof.set_result(exc is None)


class Backend:
    """A TCP server for tests.

    @param echo: write back what is received.
    @param greeting: bytes sent on connect.
    @param stalled: do not read until L{resume} (a stalled reader).
    @param keep: keep received bytes (else only count and hash them).
    """

    def __init__(self, echo=False, greeting=b"", stalled=False, keep=True):
        self.echo = echo
        self.greeting = greeting
        self.stalled = stalled
        self.keep = keep
        self.peers = []
        self.server = None
        self.connected = asyncio.Event()

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Peer(self), "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc):
        for peer in self.peers:
            if not peer.transport.is_closing():
                peer.transport.abort()
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self):
        return self.server.sockets[0].getsockname()[1]

    async def peer(self, timeout=10):
        await asyncio.wait_for(self.connected.wait(), timeout)
        return self.peers[0]

    def resume(self):
        for peer in self.peers:
            peer.transport.resume_reading()


async def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
