"""The in-memory reservation registry harness: fake services, ports, killer, on a Clock."""

from twisted.internet import defer
from twisted.internet.task import Clock

from nexusws.sessions.registry import Registry

#: The wall clock the registry sees at Clock time 0 (2026-01-01T00:00:00Z).
EPOCH = 1767225600.0
ADDRESS = ("127.0.0.1", 5900)


class FakeService:
    """A service whose start/stop/pids the test controls and records."""

    def __init__(self, name="demo", count=2, aliases=(), common_options=None):
        self.name = name
        self.count = count
        self.aliases = tuple(aliases)
        self.common_options = {"sizes": ["1024x768"]} if common_options is None else common_options
        self.group = None
        self.starts = []  # (index, options)
        self.stops = []  # index
        self.start_result = lambda index: ADDRESS  # a value, a Deferred, or raises
        self.stop_result = lambda index: None
        self.processes = {}  # index -> [(pid, start_time)]
        self.pids_error = None

    def start(self, index, options):
        self.starts.append((index, options))
        return self.start_result(index)

    def stop(self, index):
        self.stops.append(index)
        return self.stop_result(index)

    def pids(self, index):
        if self.pids_error is not None:
            raise self.pids_error
        return list(self.processes.get(index, []))


class Ports:
    """The injected wait_for_port: addresses in C{open} accept at once, others never."""

    def __init__(self):
        self.open = {ADDRESS}
        self.calls = []  # (host, port, timeout)
        self.pending = []

    def __call__(self, reactor, host, port, timeout):
        self.calls.append((host, port, timeout))
        if (host, port) in self.open:
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append(d)
        return d


class Killer:
    """The injected kill_processes: records calls; the test fires them."""

    def __init__(self):
        self.calls = []  # (procs, grace, Deferred)

    def __call__(self, reactor, procs, grace):
        d = defer.Deferred()
        self.calls.append((list(procs), grace, d))
        return d


class World:
    """A registry over fake services, a Clock, a fake port waiter and a fake killer."""

    def __init__(self, services=None, clock=None, **kwargs):
        self.clock = Clock() if clock is None else clock
        self.services = services if services is not None else [FakeService()]
        self.ports = Ports()
        self.killer = Killer()
        self.changes = []
        kwargs.setdefault("timeout", 300.0)
        kwargs.setdefault("start_timeout", 30.0)
        # The reference's behaviour (stop when the WebSocket is lost) unless a test asks for a grace.
        kwargs.setdefault("reconnect_grace", 0.0)
        self.registry = Registry(
            self.services, self.clock, on_change=self._changed,
            wallclock=lambda: EPOCH + self.clock.seconds(),
            wait_for_port=self.ports, kill_processes=self.killer, **kwargs,
        )

    def _changed(self):
        self.changes.append(self.registry.snapshot())

    @property
    def service(self):
        return self.services[0]

    def states(self):
        return {i["token"]: i["state"] for s in self.registry.status() for i in s["instances"]}
