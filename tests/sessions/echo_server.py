"""A per-session TCP echo server for the session tests.

    echo_server.py PORT MARKER [--daemonize] [--grandchild]

It echoes every byte it receives on 127.0.0.1:PORT. MARKER only marks its
command line, so a test finds it (and its leftovers) in /proc.
--daemonize: double fork and setsid, stdio to /dev/null (a classic daemon):
the process its launcher started exits at once.
--grandchild: also start a sleeping child carrying MARKER (a descendant to end too).
--hello: greet each connection with "pid N\n" (N: this server's pid) before echoing.
It exits on its own after 300 s, so a failed test cannot leak it for ever.
"""

import os
import socket
import subprocess
import sys
import threading

LIFETIME = 300.0


def serve(conn, hello):
    with conn:
        try:
            if hello:
                conn.sendall(f"pid {os.getpid()}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError as e:  # the peer reset the connection: its business, one line
            print(f"echo_server: connection ended: {e}", file=sys.stderr, flush=True)


def main(argv):
    port, marker, flags = int(argv[0]), argv[1], set(argv[2:])
    if "--daemonize" in flags:
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    threading.Timer(LIFETIME, os._exit, (3,)).start()
    if "--grandchild" in flags:
        subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({LIFETIME})", marker])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, "--hello" in flags), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
