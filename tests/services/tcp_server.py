"""A small TCP program for service tests: greets every connection, runs until killed.

    tcp_server.py --port P [--greeting TEXT] [--tag TAG] [--daemonize] [--grandchild]
                  [--ignore-term]

--daemonize: double fork (the parent exits at once), like a classic daemon.
--grandchild: also start a long sleeping child process (a descendant to track).
--tag: ignored; it marks the command line so a test can find leftovers in /proc.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--greeting", default="RFB 003.008")
    parser.add_argument("--tag", default="")
    parser.add_argument("--daemonize", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.daemonize:
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(8)
    if args.grandchild:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--tag", args.tag])
    print(f"listening on {args.port} pid {os.getpid()}", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.sendall(args.greeting.encode() + b"\n")
        conn.close()


if __name__ == "__main__":
    main()
