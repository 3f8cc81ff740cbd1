"""Build and start a whole gateway on a MemoryReactorClock; print what it touched as JSON.

Run as `python memory_gateway.py DIR`: DIR gets a service config and its script.
A process of its own, so that "no global reactor was installed" means something:
the test suite's own process has one.
"""

import json
import os
import sys

from twisted.internet.testing import MemoryReactorClock

from nexusws import tap

SCRIPT = """\
from nexusws.services import RemoteServiceScript


class Probe(RemoteServiceScript):
    def __init__(self, options):
        super().__init__(options)
        self.reactor_at_init = self.reactor  # the helpers work from __init__ on

    def start(self, index, options):
        return ("127.0.0.1", 1)
"""


def main(directory):
    with open(os.path.join(directory, "probe.py"), "w") as f:
        f.write(SCRIPT)
    with open(os.path.join(directory, "services.json"), "w") as f:
        json.dump({"probe": {"script": "probe.py", "count": 2, "options": {"group": "g"}}}, f)
    with open(os.path.join(directory, "groups"), "w") as f:
        json.dump({"g": ["alice"]}, f)
    options = tap.Options()
    options.parseOptions([
        "--http_directory", directory, "--http_port", "0",
        "--remote_session_config", os.path.join(directory, "services.json"),
        "--state_file", os.path.join(directory, "state.json"),
        "--local_session", "envision", "1", "--groups_file", os.path.join(directory, "groups"),
        "--dumpable", "0",
    ])
    after_options = "twisted.internet.reactor" in sys.modules
    reactor = MemoryReactorClock()
    top = tap.makeService(options, reactor)
    after_build = "twisted.internet.reactor" in sys.modules
    top.privilegedStartService()
    top.startService()
    reactor.advance(5)  # the reaper and the orphan watch run on this clock
    services = {s.name: s for s in top.services[0].registry.services}
    router = top.services[1].factory.router
    stopped = top.stopService()
    reactor.advance(60)
    print(json.dumps({
        "reactor_after_options": after_options,
        "reactor_after_build": after_build,
        "reactor_at_end": "twisted.internet.reactor" in sys.modules,
        "tcp_listeners": len(reactor.tcpServers),
        "children": [type(s).__name__ for s in top],
        "script_reactor_is_memory": services["probe"].script.reactor_at_init is reactor,
        "services_on_memory": [s.reactor is reactor for s in services.values()],
        "groups_clock_is_memory": router.access.groups_file._clock is reactor,
        "stopped": stopped is None or stopped.called,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
