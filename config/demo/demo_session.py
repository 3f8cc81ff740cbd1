"""Demo service script: each session runs its own copy of the demo TCP backend.

A complete example of a nexusws service script (see README.rst, "Writing a
service script"). Per instance it picks a free loopback port, starts
``backend.py`` on it, and tells nexusws to tunnel there once it accepts
connections. nexusws ends the process when the session ends.
"""

import os
import socket
import sys

from nexusws.services import RemoteServiceScript

BACKEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend.py")


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoSession(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        child = self.spawn([sys.executable, BACKEND, str(port)])
        self.log.info("demo session {index} for {user} on port {port}",
                      index=index, user=options.get("user", "anyone"), port=port)
        d = self.wait_for_port("127.0.0.1", port, timeout=20, child=child)
        d.addCallback(lambda _: ("127.0.0.1", port))
        return d

    def stop(self, index):
        # Nothing to do: nexusws terminates what spawn() started for this index.
        return None
