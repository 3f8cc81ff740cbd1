"""A script that starts a process but returns an address that never accepts connections."""

import socket
import sys

from nexusws.services import RemoteServiceScript


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NeverOpens(RemoteServiceScript):
    def start(self, index, options):
        self.spawn([sys.executable, "-c", "import time; time.sleep(300)",
                    options.get("marker", "unmarked")])
        return ("127.0.0.1", free_port())  # nothing will ever listen there

    def stop(self, index):
        return None
