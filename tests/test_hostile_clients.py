"""Hostile and unlucky WebSocket clients against a real gateway process, with raw
sockets on 127.0.0.1 port 0: what a conformance run and an attack review found.

Each test names the behaviour it pins; the gateway's log must stay free of
unhandled errors (the C{gateway} fixture checks every log at teardown).
"""

import asyncio
import hashlib
import os
import select
import socket
import struct
import time

from websockets.asyncio.client import connect

from support.tcp_peers import Backend
from support.tunnels import basic, reset_peak, run, warm_up

MiB = 1024 * 1024
KEY_HEADERS = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
MASK = b"\x01\x02\x03\x04"


def frame(opcode, payload=b"", fin=True, rsv=0):
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def raw_open(port):
    """A raw socket with a completed WebSocket handshake (101 read, nothing after it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + KEY_HEADERS + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(1)
        assert data, f"closed during the handshake: {head!r}"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def closed_within(s, seconds):
    """Whether the peer closes C{s} within C{seconds} (reading and dropping what comes)."""
    deadline = time.monotonic() + seconds
    s.setblocking(False)
    while (left := deadline - time.monotonic()) > 0:
        select.select([s], [], [], left)
        try:
            if not s.recv(65536):
                return True
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_the_tail_of_an_8_mib_upload_reaches_the_backend_with_eof_while_the_backend_floods(gateway):
    """The client sends 8 MiB and closes while the backend, a slow reader, is still
    sending: the backend gets every byte, then EOF, never a reset (the gateway
    half-closes, then reads and drops what the backend still sends until it closes)."""
    total = 8 * MiB
    payload = os.urandom(total)

    async def scenario():
        async with Backend(keep=False, stalled=True) as backend:
            gw = gateway(basic(backend.port))
            async with connect(gw.ws_url, subprotocols=["binary"], max_size=None, max_queue=1) as ws:
                peer = await backend.peer()
                done = asyncio.Event()

                async def flood():  # never stops sending until the gateway closes
                    while not done.is_set() and not peer.transport.is_closing():
                        if peer.transport.get_write_buffer_size() < MiB:
                            peer.transport.write(b"f" * 65536)
                        await asyncio.sleep(0.001)

                async def read_slowly():  # a few hundred KiB a second
                    while not done.is_set():
                        peer.transport.resume_reading()
                        await asyncio.sleep(0.0005)
                        peer.transport.pause_reading()
                        await asyncio.sleep(0.01)
                    peer.transport.resume_reading()

                tasks = [asyncio.create_task(flood()), asyncio.create_task(read_slowly())]
                for i in range(0, total, 256 * 1024):
                    await ws.send(payload[i:i + 256 * 1024])
                closing = asyncio.create_task(ws.close())
                clean_eof = await asyncio.wait_for(asyncio.shield(peer.eof), 60)
                done.set()
                await asyncio.gather(*tasks)
                await closing
            assert peer.count == total, f"{total - peer.count} bytes of the upload lost"
            assert peer.digest.hexdigest() == hashlib.sha256(payload).hexdigest()
            assert clean_eof, "the backend saw a reset, not EOF"
            peer.transport.close()  # the backend answers the EOF by closing
            gw.wait_for(r"tunnel closed: .* 8388608 bytes up")
    run(scenario())


def test_clients_closing_mid_echo_leave_no_unhandled_error(gateway):
    """Fifty clients each send a burst and close at once while its echo is arriving:
    the gateway logs fifty closes and no error (the fixture fails on any)."""
    async def one(url, i):
        async with connect(url, subprotocols=["binary"], max_size=None) as ws:
            await ws.send(os.urandom(200_000 + i))

    async def scenario():
        async with Backend(echo=True, keep=False) as backend:
            gw = gateway(basic(backend.port))
            for batch in range(5):
                await asyncio.gather(*(one(gw.ws_url, batch * 10 + i) for i in range(10)))
            deadline = time.monotonic() + 20
            while gw.log.count("tunnel closed") < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert gw.log.count("tunnel closed") == 50
    run(scenario())


def test_a_connection_failed_for_a_protocol_error_is_dropped_within_seconds(gateway):
    """A frame with reserved bits fails the connection (1002); a client that never answers
    the close is dropped after the failed-close timeout, not --close_timeout (30 s)."""
    async def scenario():
        async with Backend() as backend:
            gw = gateway(basic(backend.port, "--close_timeout", "30"))
            s = raw_open(gw.ws_port)
            started = time.monotonic()
            s.sendall(frame(2, b"bad", rsv=4))
            closed = await asyncio.to_thread(closed_within, s, 6)
            took = time.monotonic() - started
            s.close()
            assert closed, "the gateway still holds the failed connection after 6 s"
            gw.wait_for(r"tunnel closed: .* close 1002")
            print(f"\nfailed connection dropped after {took:.2f} s")
    run(scenario())


def test_four_hundred_thousand_unread_pings_cost_less_than_32_mib(gateway):
    """A client that sends pings and never reads its pongs is read no more once its
    replies queue up: the gateway's memory stays bounded, and it serves others."""
    ping = frame(9, b"p" * 125)
    count = 400_000

    async def scenario():
        async with Backend(echo=True) as backend:
            gw = gateway(basic(backend.port))
            await warm_up(gw, backend)
            baseline = gw.rss_kib()
            reset_peak(gw)
            s = raw_open(gw.ws_port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sent = await asyncio.to_thread(send_until_blocked, s, ping, count)
            growth = gw.hwm_kib() - baseline
            print(f"\n{sent} pings sent of {count}; gateway grew {growth} KiB")
            assert growth < 32 * 1024, f"grew {growth} KiB for {sent} unread pings"
            async with connect(gw.ws_url, subprotocols=["binary"]) as ws:  # others are served
                await ws.send(b"still here")
                assert await ws.recv() == b"still here"
            s.close()
    run(scenario())


def send_until_blocked(s, message, count, stall=2.0, budget=60.0):
    """Send C{message} C{count} times; stop early once sending has been blocked for
    C{stall} seconds (the gateway stopped reading). Returns how many were sent."""
    s.setblocking(False)
    batch = message * 512
    sent_bytes, total = 0, len(message) * count
    blocked_since, deadline = None, time.monotonic() + budget
    while sent_bytes < total and time.monotonic() < deadline:
        chunk = batch[: min(len(batch), total - sent_bytes)]
        offset = sent_bytes % len(batch)
        chunk = (batch[offset:] + batch[:offset])[: len(chunk)]
        try:
            n = s.send(chunk)
        except BlockingIOError:
            n = 0
        if n:
            sent_bytes += n
            blocked_since = None
            continue
        blocked_since = blocked_since or time.monotonic()
        if time.monotonic() - blocked_since > stall:
            break
        select.select([], [s], [], 0.1)
    return sent_bytes // len(message)


def test_a_megabyte_request_head_is_refused_with_431_after_the_limit(gateway):
    """Request headers that never end are refused once they pass --http_max_header_size
    (16 KiB by default): a 431 and a close, long before a megabyte is taken in."""
    async def scenario():
        async with Backend() as backend:
            gw = gateway(basic(backend.port))
            s = socket.create_connection(("127.0.0.1", gw.ws_port), timeout=10)
            s.sendall(b"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + KEY_HEADERS)
            line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
            answer, sent = b"", 0
            s.setblocking(False)
            while sent < MiB and not answer:
                try:
                    sent += s.send(line)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
                readable, _, _ = select.select([s], [], [], 0.001)
                if readable:
                    try:
                        answer = s.recv(65536) or b"<closed>"
                    except ConnectionResetError:
                        answer = b"<reset>"
            s.close()
            assert answer.startswith(b"HTTP/1.1 431"), (sent, answer[:80])
            assert sent < 512 * 1024, f"{sent} bytes taken before the refusal"
            gw.wait_for(r"handshake refused: .*request head over 16384 bytes")
            assert backend.peers == []
    run(scenario())
