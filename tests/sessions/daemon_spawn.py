"""Starts an echo server that daemonizes (double fork, setsid): the spawned process
exits at once and the server lives on in a session of its own."""

import os
import sys

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class DaemonSpawn(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        self.spawn(server_argv(port, options, "--daemonize"))
        d = self.wait_for_port("127.0.0.1", port, timeout=10)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None
