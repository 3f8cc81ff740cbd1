"""An echo server per instance whose start reports two steps (RemoteServiceScript.progress),
each after a short delay, before its port opens."""

import os
import sys

from twisted.internet import task

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv


class ProgressEcho(RemoteServiceScript):
    async def start(self, index, options):
        await task.deferLater(self.reactor, 0.05, lambda: None)
        self.progress("preparing the server")
        port = free_port()
        child = self.spawn(server_argv(port, options))
        await task.deferLater(self.reactor, 0.05, lambda: None)
        self.progress(f"waiting for port {port}")
        await self.wait_for_port("127.0.0.1", port, timeout=10, child=child)
        return ("127.0.0.1", port)

    def stop(self, index):
        return None  # nexusws terminates what spawn() started
