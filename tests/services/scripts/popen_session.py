"""A service script that starts a daemonizing server with subprocess.Popen.

The server double-forks, so the process Popen knows exits at once; the
daemon survives its script's stop unless nexusws ends it.
"""

import os
import socket
import subprocess
import sys

from nexusws.services import RemoteServiceScript

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tcp_server.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PopenSession(RemoteServiceScript):
    def __init__(self, common_options):
        super().__init__(common_options)
        self._popen = {}

    def start(self, index, options):
        port = free_port()
        self._popen[index] = subprocess.Popen(
            [sys.executable, SERVER, "--port", str(port), "--greeting", f"popen {index}",
             "--tag", options["tag"], "--daemonize"]
        )
        d = self.wait_for_port("127.0.0.1", port, timeout=20)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        proc = self._popen.pop(index, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if proc is not None:
            proc.wait()
