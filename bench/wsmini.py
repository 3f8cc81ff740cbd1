"""A minimal WebSocket server that is its own source, sink and echo: the client's ceiling;
or, with C{--relay PORT}, the least a gateway can do: the minimal relay.

    python wsmini.py               (prints "wsmini listening on 127.0.0.1:PORT")
    python wsmini.py --relay PORT  (the same line; relays each WebSocket to 127.0.0.1:PORT)

Alone, it speaks the backend's commands (see backend.py) in the first WebSocket
message, with no gateway and no second TCP hop: whatever the bench client
reaches against it is the most the client can measure. One thread per
connection, blocking sockets, pre-built frames.

As a relay it does what every gateway must and nothing else: a thread each
way, blocking sockets; backend to client, a frame header sent with each read
of up to 1 MiB (one sendmsg, no copy); client to backend, messages unmasked (Autobahn's C
code) and sent. No event loop, no flow control, no logging, no limits: what it
reaches through the same backend and client is about the most any Python
gateway can on this machine.
"""

import argparse
import socket
import sys
import threading

from backend import _BLOCK, CHUNK, pattern
from wsproto import Closed, FrameReader, close_frame, frame, header, server_handshake

_SRC_FRAME = frame(_BLOCK, mask=False)
READ = 1 << 20  # the relay's read size: nexusws's largest (nexusws.pipes.READ_MAX)


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


def relay(sock, backend_port):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _, rest = server_handshake(sock)
        backend = socket.create_connection(("127.0.0.1", backend_port))
        backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        return

    def down():
        try:
            while data := backend.recv(READ):
                head = header(len(data))
                sent = sock.sendmsg([head, data])
                if sent < len(head) + len(data):
                    sock.sendall((head + data)[sent:])
            sock.sendall(close_frame(mask=False))
        except OSError:
            pass

    t = threading.Thread(target=down, daemon=True)
    t.start()
    reader = FrameReader(sock, leftover=rest)
    try:
        while True:
            backend.sendall(reader.message())
    except (Closed, OSError):
        pass
    try:
        backend.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    t.join()
    backend.close()
    sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", type=int, metavar="PORT", help="relay to 127.0.0.1:PORT")
    args = ap.parse_args()
    handler, extra = (serve, ()) if args.relay is None else (relay, (args.relay,))
    threading.stack_size(256 * 1024)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    print(f"wsmini listening on 127.0.0.1:{lsock.getsockname()[1]}", flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=handler, args=(conn, *extra), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
