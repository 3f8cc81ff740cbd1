"""Spawns a long-running child, then takes its time to start (its result never fires):
the gateway can be killed while the instance is starting, its child just spawned."""

import sys

from twisted.internet import defer

from nexusws.services import RemoteServiceScript


class SlowStart(RemoteServiceScript):
    def start(self, index, options):
        self.spawn([sys.executable, "-c", "import time; time.sleep(300)", options["marker"]])
        return defer.Deferred()  # still starting

    def stop(self, index):
        return None
