"""Starts its echo server with subprocess.Popen and forgets it (stop() does nothing)."""

import os
import socket
import subprocess
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


class PopenSpawn(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        subprocess.Popen(server_argv(port, options), stdin=subprocess.DEVNULL)
        d = self.wait_for_port("127.0.0.1", port, timeout=10)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # forgets its server on purpose
