"""The bench's session service (figures 8 and 9): a trivial program per instance.

Before spawning it, the script notes the time (time.monotonic, one clock for
every process on the machine) and hands it to the program, which writes that
time and the time it started listening to the record file. The bench
subtracts the program's own start-up from the launch time it measures.
"""

import os
import socket
import sys
import time

from nexusws.services import RemoteServiceScript

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trivial_service.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchSession(RemoteServiceScript):
    def start(self, index, options):
        port = free_port()
        record = self._common_options["record"]
        sample = options.get("sample", "-")
        spawned = time.monotonic()
        child = self.spawn([sys.executable, "-S", PROGRAM, str(port), record, sample, repr(spawned)])
        d = self.wait_for_port("127.0.0.1", port, timeout=20, child=child)
        d.addCallback(lambda _: ("127.0.0.1", port))
        return d

    def stop(self, index):
        return None
