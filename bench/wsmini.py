"""A minimal WebSocket server that is its own source, sink and echo: the client's ceiling.

    python wsmini.py            (prints "wsmini listening on 127.0.0.1:PORT")

It speaks the backend's commands (see backend.py) in the first WebSocket
message, with no gateway and no second TCP hop: whatever the bench client
reaches against it is the most the client can measure. One thread per
connection, blocking sockets, pre-built frames.
"""

import socket
import sys
import threading

from backend import _BLOCK, CHUNK, pattern
from wsproto import Closed, FrameReader, close_frame, frame, server_handshake

_SRC_FRAME = frame(_BLOCK, mask=False)


def serve(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _, rest = server_handshake(sock)
        reader = FrameReader(sock, leftover=rest)
        first = reader.message()
        line, _, extra = first.partition(b"\n")
        verb, _, arg = line.decode().strip().partition(" ")
        if verb == "SRC":
            for _ in range(int(arg) // CHUNK):
                sock.sendall(_SRC_FRAME)
        elif verb == "PAT":
            for i in range(int(arg) // CHUNK):
                sock.sendall(frame(pattern(i), mask=False))
        elif verb == "SINK":
            reader.read(int(arg) - len(extra))
            sock.sendall(frame(b"K", mask=False))
        elif verb in ("LAT", "ECHO"):
            if extra:
                sock.sendall(frame(extra, mask=False))
            while True:
                sock.sendall(frame(reader.message(), mask=False))
        reader.until_close()
        sock.sendall(close_frame(mask=False))
    except Closed:
        try:
            sock.sendall(close_frame(mask=False))
        except OSError:
            pass
    except OSError:
        pass
    finally:
        sock.close()


def main():
    threading.stack_size(256 * 1024)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    print(f"wsmini listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
