"""Starts its echo server with plain reactor.spawnProcess and forgets it.

No helper, no process group of its own, nothing in stop(): nexusws alone must
find the server (a descendant of the gateway) and end it.
"""

import os
import socket
import sys

from twisted.internet.protocol import ProcessProtocol

from nexusws.services import RemoteServiceScript

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_server.py")


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(port, options, *flags):
    """The echo server's command line, marked with the reservation's C{marker} option."""
    return [sys.executable, SERVER, str(port), options.get("marker", "unmarked"), *flags]


class PlainSpawn(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        argv = server_argv(port, options, "--grandchild")
        self.reactor.spawnProcess(ProcessProtocol(), argv[0], argv, env=os.environ)
        d = self.wait_for_port("127.0.0.1", port, timeout=10)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # forgets its server on purpose
