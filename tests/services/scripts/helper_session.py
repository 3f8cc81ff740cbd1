"""A service script that uses the helpers only, and leaves the stopping to nexusws.

Its server also starts a grandchild, which nexusws must end too.
"""

import os
import socket
import sys

from nexusws.services import RemoteServiceScript

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tcp_server.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HelperSession(RemoteServiceScript):
    async def start(self, index, options):
        port = free_port()
        self.spawn([sys.executable, SERVER, "--port", str(port), "--greeting", f"helper {index}",
                    "--tag", options["tag"], "--grandchild"])
        await self.wait_for_port("127.0.0.1", port, timeout=20)
        return ("127.0.0.1", port)

    def stop(self, index):
        pass
