"""A small, fast WebSocket client (and the frame code the bench's own WS server shares).

Raw blocking sockets; frames are parsed in a large buffer through memoryviews,
so the per-byte work is C (recv_into, sendall, zlib.crc32) and Python only
touches each frame header. Client frames are pre-masked once and re-sent.
"""

import base64
import hashlib
import os
import socket
import struct
import time

try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - the bench venv has websockets
    _c_apply_mask = None

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Closed(Exception):
    """The peer sent a close frame or closed the connection."""


def apply_mask(data, mask):
    if _c_apply_mask is not None:
        return _c_apply_mask(bytes(data), mask)
    import numpy
    n = len(data)
    pad = (-n) % 4
    arr = numpy.frombuffer(bytes(data) + b"\0" * pad, dtype="<u4")
    out = numpy.bitwise_xor(arr, numpy.frombuffer(mask, dtype="<u4")[0]).tobytes()
    return out[:n]


def header(n, opcode=OP_BINARY, mask=False, fin=True):
    """The header of a frame of C{n} payload bytes, without the mask key."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        return struct.pack("!BB", b0, mbit | n)
    if n < 65536:
        return struct.pack("!BBH", b0, mbit | 126, n)
    return struct.pack("!BBQ", b0, mbit | 127, n)


def frame(payload, opcode=OP_BINARY, mask=True, fin=True):
    """One WebSocket frame; masked (client to server) unless C{mask} is False."""
    head = header(len(payload), opcode, mask, fin)
    if not mask:
        return head + bytes(payload)
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_frame(code=1000, mask=True):
    return frame(struct.pack("!H", code), OP_CLOSE, mask=mask)


class FrameReader:
    """Incremental frame parser over a socket, payloads handed out as memoryviews.

    C{read(n, on_payload)} consumes data-frame payload until C{n} bytes went by
    (C{on_payload(view)} sees each piece, if given). Control frames: ping is
    answered (client side), close raises L{Closed} (its code in args).
    """

    def __init__(self, sock, size=1 << 20, leftover=b"", unmask=False):
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.pos = 0
        self.end = len(leftover)
        self.buf[: self.end] = leftover
        self.rem = 0  # payload bytes left in the current data frame
        self.unmask = unmask  # server side: payloads are masked (we only count them)
        self.key = None
        self.masked_off = 0

    def _fill(self):
        if self.pos == self.end:
            self.pos = self.end = 0
        elif self.end == len(self.buf):
            tail = self.end - self.pos
            self.buf[:tail] = self.view[self.pos:self.end]
            self.pos, self.end = 0, tail
        got = self.sock.recv_into(self.view[self.end:])
        if not got:
            raise Closed(None, "EOF")
        self.end += got

    def _header(self):
        """Parse one frame header at pos; return (fin, opcode, length) or None if incomplete."""
        avail = self.end - self.pos
        if avail < 2:
            return None
        b0, b1 = self.buf[self.pos], self.buf[self.pos + 1]
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            hl = 4
        elif n == 127:
            hl = 10
        masked = b1 & 0x80
        if masked:
            hl += 4
        if avail < hl:
            return None
        if n == 126:
            n = struct.unpack_from("!H", self.buf, self.pos + 2)[0]
        elif n == 127:
            n = struct.unpack_from("!Q", self.buf, self.pos + 2)[0]
        self.key = bytes(self.buf[self.pos + hl - 4: self.pos + hl]) if masked else None
        self.masked_off = 0
        self.pos += hl
        return b0 & 0x80, b0 & 0x0F, n

    def _control(self, opcode, n):
        while self.end - self.pos < n:
            self._fill()
        payload = bytes(self.view[self.pos:self.pos + n])
        self.pos += n
        if self.key is not None:
            payload = apply_mask(payload, self.key)
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            raise Closed(code, payload[2:])
        if opcode == OP_PING and self.key is None:
            self.sock.sendall(frame(payload, OP_PONG))

    def read(self, n, on_payload=None):
        """Consume C{n} bytes of data payload."""
        while n > 0:
            if self.rem:
                take = min(self.rem, self.end - self.pos, n)
                if take:
                    if on_payload is not None:
                        on_payload(self.view[self.pos:self.pos + take])
                    self.pos += take
                    self.rem -= take
                    n -= take
                    continue
                self._fill()
                continue
            h = self._header()
            if h is None:
                self._fill()
                continue
            _, opcode, length = h
            if opcode >= 8:
                self._control(opcode, length)
            else:
                self.rem = length

    def read_bytes(self, n):
        out = bytearray()
        self.read(n, out.extend)
        return bytes(out)

    def message(self):
        """The next whole data message (server side: unmasked), as bytes."""
        out = bytearray()
        while True:
            h = self._header()
            if h is None:
                self._fill()
                continue
            fin, opcode, length = h
            if opcode >= 8:
                self._control(opcode, length)
                continue
            key = self.key
            while self.end - self.pos < length:
                self._fill()
            piece = bytes(self.view[self.pos:self.pos + length])
            self.pos += length
            out += apply_mask(piece, key) if key is not None else piece
            if fin:
                return bytes(out)

    def until_close(self, limit=1 << 30):
        """Skip data until the peer's close frame (its code) or EOF (None)."""
        try:
            while True:
                self.read(limit)  # data skipped, control frames handled, until Closed
        except Closed as e:
            return e.args[0]
        except OSError:
            return None


class WSClient:
    """One client WebSocket on a blocking socket."""

    def __init__(self, host, port, path="/", timeout=30.0, subprotocol="binary", bufsize=1 << 20):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = self.sock.recv(4096)
            if not got:
                raise ConnectionError(f"handshake: EOF after {head[:200]!r}")
            head += got
        head, _, rest = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"handshake refused: {status.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        if accept not in head:
            raise ConnectionError("handshake: bad Sec-WebSocket-Accept")
        self.reader = FrameReader(self.sock, size=bufsize, leftover=rest)

    def send(self, payload, opcode=OP_BINARY):
        self.sock.sendall(frame(payload, opcode))

    def send_raw(self, data):
        self.sock.sendall(data)

    def read(self, n, on_payload=None):
        self.reader.read(n, on_payload)

    def read_bytes(self, n):
        return self.reader.read_bytes(n)

    def close(self, wait=True):
        """Close handshake: send 1000, wait for the peer's close (or EOF), close the socket."""
        try:
            self.sock.sendall(close_frame())
            if wait:
                return self.reader.until_close()
        except OSError:
            return None
        finally:
            self.sock.close()

    def abort(self):
        self.sock.close()


class TCPClient:
    """Plain TCP with the same interface (no framing): the reference rows."""

    def __init__(self, host, port, timeout=30.0, bufsize=1 << 20):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)

    def send(self, payload, opcode=OP_BINARY):
        self.sock.sendall(payload)

    send_raw = send

    def read(self, n, on_payload=None):
        view = self.view
        while n > 0:
            got = self.sock.recv_into(view[: min(n, len(view))])
            if not got:
                raise Closed(None, "EOF")
            if on_payload is not None:
                on_payload(view[:got])
            n -= got

    def read_bytes(self, n):
        out = bytearray()
        self.read(n, lambda v: out.extend(v))
        return bytes(out)

    def close(self, wait=True):
        try:
            self.sock.shutdown(socket.SHUT_WR)
            if wait:
                while self.sock.recv_into(self.view):
                    pass
        except OSError:
            pass
        finally:
            self.sock.close()

    abort = close


def server_handshake(sock, timeout=10.0):
    """Server side of the opening handshake on C{sock}; return the request path and leftover."""
    sock.settimeout(timeout)
    head = b""
    while b"\r\n\r\n" not in head:
        got = sock.recv(4096)
        if not got:
            raise Closed(None, "EOF in handshake")
        head += got
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    answer = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
              b"Sec-WebSocket-Accept: " + accept]
    if "binary" in headers.get("sec-websocket-protocol", ""):
        answer.append(b"Sec-WebSocket-Protocol: binary")
    sock.sendall(b"\r\n".join(answer) + b"\r\n\r\n")
    sock.settimeout(None)
    return path, rest


def now():
    return time.perf_counter()
