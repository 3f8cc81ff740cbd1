"""A service script that starts its server with plain reactor.spawnProcess and forgets it.

The server ignores SIGTERM, so nexusws has to escalate to SIGKILL.
"""

import os
import socket
import sys

from twisted.internet.protocol import ProcessProtocol

from nexusws.services import RemoteServiceScript

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tcp_server.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpawnProcessSession(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        argv = [sys.executable, SERVER, "--port", str(port), "--greeting", f"spawnprocess {index}",
                "--tag", options["tag"], "--ignore-term", "--grandchild"]
        self.reactor.spawnProcess(ProcessProtocol(), sys.executable, argv, env=os.environ)
        d = self.wait_for_port("127.0.0.1", port, timeout=20)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        pass  # forgets its server: nexusws must find and end it
