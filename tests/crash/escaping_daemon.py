"""A helper child that daemonizes a server (double fork, new session) which clears
its environment -- NEXUSWS_INSTANCE too -- while other instances start; the
server is what the instance tunnels to."""

import socket
import sys

from nexusws.services import RemoteServiceScript

DAEMON = r"""
import os, socket, sys, time
port, marker = int(sys.argv[1]), sys.argv[2]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.environ.clear()  # the marker with it
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.execve(sys.executable, [sys.executable, "-c", '''
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    while data:
        c.sendall(data); data = c.recv(65536)
    c.close()
''', str(port), marker], {})
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EscapingDaemon(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        self.spawn([sys.executable, "-c", DAEMON, str(port), options["marker"]])
        delay = float(options.get("delay", "0"))
        d = self.wait_for_port("127.0.0.1", port, timeout=20)
        if delay:  # stay "starting" a while: other instances' starts overlap this one
            from twisted.internet import task

            d.addCallback(lambda _: task.deferLater(self.reactor, delay, lambda: None))
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None
