"""Repeated calls on a given clock, without installing the global reactor.

C{task.LoopingCall()} imports C{twisted.internet.reactor} in its C{__init__}
(to default its C{clock}), which installs the default reactor: a gateway
built on another reactor (a test's C{MemoryReactorClock}) must not do that.
"""

from twisted.internet import task


class LoopingCall(task.LoopingCall):
    """L{task.LoopingCall} on C{clock} (anything providing C{IReactorTime}).

    Sets what L{task.LoopingCall.__init__} sets, with C{clock} given rather than
    imported; every other behaviour is Twisted's."""

    def __init__(self, clock, f, *a, **kw):  # no super().__init__: it imports the reactor
        self.f = f
        self.a = a
        self.kw = kw
        self.clock = clock
