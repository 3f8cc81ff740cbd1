"""What the echo-server session scripts share (imported by them, not a script itself)."""

import os
import socket
import sys

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_server.py")


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(port, options, *flags):
    """The echo server's command line, marked with the reservation's C{marker} option."""
    return [sys.executable, SERVER, str(port), options.get("marker", "unmarked"), *flags]
