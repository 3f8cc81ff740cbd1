"""The benchmark's TCP backend: source, sink and echo behind the gateways.

    python backend.py            (prints "backend listening on 127.0.0.1:PORT")
    python backend.py --rfb      (prints "rfb backend listening on 127.0.0.1:PORT"; see below)

Every connection starts with one command line; what follows depends on it:

  SRC n    send n bytes (n a multiple of 64 KiB) in 64 KiB writes, then wait for EOF
  PAT n    like SRC, but chunk i starts with i as 8 bytes big-endian (see pattern())
  SINK n   read n bytes, then send b"K" and wait for EOF
  LAT      echo, in a thread of its own with blocking calls (latency)
  ECHO     echo whatever follows the line (asyncio; cheap for thousands of idle tunnels)

SRC, PAT, SINK and LAT run in a thread with a blocking socket, so the bytes
move in C loops (sendall, recv_into) and the backend is not what limits a
tunnel. ECHO stays on the event loop so that 10,000 idle tunnels cost no threads.

With --rfb it is an RFB (VNC) server instead, for figure 10: the server speaks
first, so it has a port of its own. Each connection gets RFB 3.8's handshake
(C{RFB 003.008\n}, the client's version, security type None offered and
chosen, SecurityResult OK, the client's ClientInit, a ServerInit of
RFB_WIDTH x RFB_HEIGHT, 32 bpp), then the client's messages are read one by
one, each FramebufferUpdateRequest answered with an empty FramebufferUpdate
(so that a client knows what it sent has arrived), until a ClientCutText
whose text is C{SINK n}: then n more bytes are sunk without being parsed
(recv_into, as SINK above: flow control is TCP's), a ServerCutText C{K}
acknowledges them, and messages are read as before (another C{SINK n}, or EOF).
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


# --- RFB (--rfb) ----------------------------------------------------------------------

RFB_VERSION = b"RFB 003.008\n"
RFB_WIDTH, RFB_HEIGHT = 1280, 800
RFB_NAME = b"nexusws bench"
#: 32 bpp, depth 24, little-endian, true colour, 8 bits a channel (red at 16): what a
#: 24-bit server announces; its 3 padding bytes make it 16.
RFB_PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
RFB_SERVER_INIT = (struct.pack(">HH", RFB_WIDTH, RFB_HEIGHT) + RFB_PIXEL_FORMAT
                   + struct.pack(">I", len(RFB_NAME)) + RFB_NAME)
#: The answer to a FramebufferUpdateRequest before the sink: a FramebufferUpdate of no rectangle.
RFB_EMPTY_UPDATE = struct.pack(">BxH", 0, 0)
#: The sink's acknowledgement: a ServerCutText of "K".
RFB_ACK = struct.pack(">BxxxI", 3, 1) + b"K"


def _recv_exact(sock, n):
    """Exactly C{n} bytes (never more: what follows stays in the socket), or None at EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _rfb_messages(sock):
    """Read client messages until the ClientCutText C{SINK n}; return n (None at EOF or on
    something unexpected). FramebufferUpdateRequests are answered with an empty update."""
    while True:
        kind = _recv_exact(sock, 1)
        if kind is None:
            return None
        kind = kind[0]
        if kind == 0:  # SetPixelFormat
            rest = _recv_exact(sock, 19)
        elif kind == 2:  # SetEncodings: padding, u16 count, s32 each
            rest = _recv_exact(sock, 3)
            if rest is not None:
                rest = _recv_exact(sock, 4 * int.from_bytes(rest[1:3], "big"))
        elif kind == 3:  # FramebufferUpdateRequest
            rest = _recv_exact(sock, 9)
            if rest is not None:
                sock.sendall(RFB_EMPTY_UPDATE)
        elif kind == 4:  # KeyEvent
            rest = _recv_exact(sock, 7)
        elif kind == 5:  # PointerEvent (the bench never sets the extended buttons' bit)
            rest = _recv_exact(sock, 5)
        elif kind == 6:  # ClientCutText: 3 padding, u32 length, text
            rest = _recv_exact(sock, 7)
            if rest is not None:
                text = _recv_exact(sock, int.from_bytes(rest[3:7], "big"))
                if text is not None and text.startswith(b"SINK "):
                    return int(text[5:])
        else:
            return None
        if rest is None:
            return None


def _rfb_session(sock):
    """One RFB connection (see the module docstring), on a blocking socket, in a thread."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(RFB_VERSION)
        version = _recv_exact(sock, 12)
        if version is None or not version.startswith(b"RFB 003."):
            return
        sock.sendall(b"\x01\x01")  # one security type: None
        if _recv_exact(sock, 1) != b"\x01":
            return
        sock.sendall(struct.pack(">I", 0))  # SecurityResult: OK
        if _recv_exact(sock, 1) is None:  # ClientInit (shared flag)
            return
        sock.sendall(RFB_SERVER_INIT)
        while True:  # a connection may measure more than once
            n = _rfb_messages(sock)
            if n is None:
                return
            buf = bytearray(1 << 20)
            while n > 0:
                got = sock.recv_into(buf, min(n, len(buf)))
                if not got:
                    return
                n -= got
            sock.sendall(RFB_ACK)
    except OSError:
        pass
    finally:
        sock.close()


def rfb_main():
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(256)
    print(f"rfb backend listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_rfb_session, args=(conn,), daemon=True).start()


# --- the command backend (asyncio) -------------------------------------------------------


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
        if sys.argv[1:] == ["--rfb"]:
            rfb_main()
        else:
            asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
