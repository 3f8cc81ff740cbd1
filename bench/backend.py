"""The benchmark's TCP backend: source, sink and echo behind the gateways.

    python backend.py            (prints "backend listening on 127.0.0.1:PORT")

Every connection starts with one command line; what follows depends on it:

  SRC n    send n bytes (n a multiple of 64 KiB) in 64 KiB writes, then wait for EOF
  PAT n    like SRC, but chunk i starts with i as 8 bytes big-endian (see pattern())
  SINK n   read n bytes, then send b"K" and wait for EOF
  LAT      echo, in a thread of its own with blocking calls (latency)
  ECHO     echo whatever follows the line (asyncio; cheap for thousands of idle tunnels)

SRC, PAT, SINK and LAT run in a thread with a blocking socket, so the bytes
move in C loops (sendall, recv_into) and the backend is not what limits a
tunnel. ECHO stays on the event loop so that 10,000 idle tunnels cost no threads.
"""

import asyncio
import os
import socket
import struct
import sys
import threading

CHUNK = 64 * 1024
_BLOCK = bytes((i * 131 + 7) & 0xFF for i in range(CHUNK))


def pattern(i):
    """Chunk C{i} of a PAT stream: its index, then a fixed block (64 KiB in all)."""
    return struct.pack(">Q", i) + _BLOCK[8:]


def _run_blocking(sock, command, early):
    """SRC/PAT/SINK/LAT on a blocking socket; C{early}: bytes already read past the line."""
    try:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        verb, _, arg = command.partition(" ")
        if verb == "SRC":
            n = int(arg)
            for _ in range(n // CHUNK):
                sock.sendall(_BLOCK)
            _drain(sock)
        elif verb == "PAT":
            n = int(arg)
            for i in range(n // CHUNK):
                sock.sendall(pattern(i))
            _drain(sock)
        elif verb == "SINK":
            n = int(arg) - len(early)
            buf = bytearray(1 << 20)
            while n > 0:
                got = sock.recv_into(buf)
                if not got:
                    return
                n -= got
            sock.sendall(b"K")
            _drain(sock)
        elif verb == "LAT":
            if early:
                sock.sendall(early)
            buf = bytearray(65536)
            view = memoryview(buf)
            while True:
                got = sock.recv_into(buf)
                if not got:
                    return
                sock.sendall(view[:got])
    except OSError:
        pass
    finally:
        sock.close()


def _drain(sock):
    """Wait for the peer's EOF (read and drop anything it sends)."""
    buf = bytearray(65536)
    while sock.recv_into(buf):
        pass


class Connection(asyncio.Protocol):
    def __init__(self):
        self.head = b""
        self.echo = False

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        if self.echo:
            self.transport.write(data)
            return
        self.head += data
        line, sep, rest = self.head.partition(b"\n")
        if not sep:
            if len(self.head) > 256:
                self.transport.abort()
            return
        command = line.decode("ascii", "replace").strip()
        if command == "ECHO":
            self.echo = True
            if rest:
                self.transport.write(rest)
            return
        # Hand the socket to a thread: a duplicate descriptor, the transport closed.
        self.transport.pause_reading()
        fd = os.dup(self.transport.get_extra_info("socket").fileno())
        self.transport.abort()
        sock = socket.socket(fileno=fd)
        threading.Thread(target=_run_blocking, args=(sock, command, rest), daemon=True).start()

    def connection_lost(self, exc):
        pass


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"backend listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    threading.stack_size(256 * 1024)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
