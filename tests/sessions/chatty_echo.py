"""An echo server greeting with its pid, beside a Python program that prints a line every
50 ms for as long as it lives (--keep_sessions: it must outlive the gateway's pipes)."""

import os
import sys

from nexusws.services import RemoteServiceScript

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import free_port, server_argv

TICKER = "import sys, time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"


class ChattyEcho(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        child = self.spawn(server_argv(port, options, "--hello"))
        self.spawn([sys.executable, "-c", TICKER, options.get("marker", "unmarked"), "ticker"])
        d = self.wait_for_port("127.0.0.1", port, timeout=10, child=child)
        return d.addCallback(lambda _: ("127.0.0.1", port))

    def stop(self, index):
        return None  # nexusws terminates what spawn() started
