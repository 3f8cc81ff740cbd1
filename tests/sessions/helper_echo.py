"""Runs an echo server per instance with the helpers only (spawn, wait_for_port).

The server starts a sleeping grandchild too; nexusws ends both when the session ends.
"""

import os
import sys

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class HelperEcho(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        child = self.spawn(server_argv(port, options, "--grandchild"))
        d = self.wait_for_port("127.0.0.1", port, timeout=10, child=child)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # nexusws terminates what spawn() started
