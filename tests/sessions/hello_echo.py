"""An echo server per instance that greets each connection with its pid (--hello):
a client that reconnects can tell it reached the same process."""

import os
import sys

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class HelloEcho(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        child = self.spawn(server_argv(port, options, "--hello"))
        d = self.wait_for_port("127.0.0.1", port, timeout=10, child=child)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # nexusws terminates what spawn() started
