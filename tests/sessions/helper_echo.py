"""Runs an echo server per instance with the helpers only (spawn, wait_for_port).

The server starts a sleeping grandchild too; nexusws ends both when the session ends.
"""

import os
import socket
import sys

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


class HelperEcho(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        child = self.spawn(server_argv(port, options, "--grandchild"))
        d = self.wait_for_port("127.0.0.1", port, timeout=10, child=child)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # nexusws terminates what spawn() started
