"""Starts its echo server with subprocess.Popen and forgets it (stop() does nothing)."""

import os
import subprocess
import sys

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class PopenSpawn(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        subprocess.Popen(server_argv(port, options), stdin=subprocess.DEVNULL)
        d = self.wait_for_port("127.0.0.1", port, timeout=10)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # forgets its server on purpose
