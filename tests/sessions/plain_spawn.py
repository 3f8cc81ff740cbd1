"""Starts its echo server with plain reactor.spawnProcess and forgets it.

No helper, no process group of its own, nothing in stop(): nexusws alone must
find the server (a descendant of the gateway) and end it.
"""

import os
import sys

from twisted.internet.protocol import ProcessProtocol

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class PlainSpawn(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        argv = server_argv(port, options, "--grandchild")
        self.reactor.spawnProcess(ProcessProtocol(), argv[0], argv, env=os.environ)
        d = self.wait_for_port("127.0.0.1", port, timeout=10)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # forgets its server on purpose
