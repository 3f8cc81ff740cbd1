"""Who owns which process: an instance's record, the process-wide L{Tracker}, the L{System}.

An L{Instance} is one live instance of a L{nexusws.sessions.instances.Service}:
its state, the helper children it spawned, the processes attributed to it from
C{/proc}, and its marker (L{MARKER_ENV}). The L{Tracker} knows, across all
services, which instances are starting or stopping at once and which pids each
owns. L{System} gives the process facts and actions attribution and stopping
use (tests substitute a fake). The rules of attribution are in
L{nexusws.sessions.instances}.
"""

import os
import uuid
import weakref

from nexusws.sessions import ports, procs, stopping

#: The environment variable that marks the processes of one instance.
MARKER_ENV = "NEXUSWS_INSTANCE"


class System:
    """The process facts and actions a L{Service} uses; tests substitute a fake."""

    def __init__(self):
        self.getpid = os.getpid
        self.process_table = procs.stat_table  # ppid and start time: no cmdline needed
        self.descendants = procs.descendants
        self.is_alive = procs.is_alive
        self.kill_processes = stopping.kill_processes
        self.wait_for_port = ports.wait_for_port
        self.environ_has = procs.environ_has


class Tracker:
    """Process-wide facts for attribution: who is starting or stopping, who owns which pids.

    One per process (L{TRACKER}), since the gateway's descendants are process-wide.
    """

    def __init__(self):
        self.busy = {}  # Instance -> None, an ordered set
        self.services = weakref.WeakSet()

    def enter(self, instance):
        """Mark C{instance} busy; it and every other busy instance now overlap."""
        for other in self.busy:
            if other is not instance:
                other.overlapped = instance.overlapped = True
        self.busy[instance] = None

    def leave(self, instance):
        self.busy.pop(instance, None)

    def owned_elsewhere(self, instance):
        """The pids every live instance but C{instance} owns."""
        pids = set()
        for service in list(self.services):
            for other in service.live():
                if other is not instance:
                    pids |= other.owned()
        return pids


TRACKER = Tracker()


class Instance:
    """One live instance: its state and the processes it owns."""

    def __init__(self, index):
        self.index = index
        self.state = "starting"  # -> running -> stopping
        self.children = []  # helper-spawned Child objects
        self.procs = {}  # pid -> start time, attributed from /proc
        self.overlapped = False
        self.pending = None  # the start Deferred until it fires
        self.address = None  # (host, port) once the start delivered it
        self.stopped = None  # fires when the stop is complete
        # In the environment of its helpers' children and all they start (daemons
        # too): how an instance knows its own when others start at the same time.
        self.marker = uuid.uuid4().hex

    @property
    def marker_entry(self):
        return f"{MARKER_ENV}={self.marker}".encode()

    def owned(self):
        return {child.pid for child in self.children} | set(self.procs)
