"""One reservation: the L{Reservation} record and the states it goes through.

The registry (L{nexusws.sessions.registry}, whose docstring draws the states)
makes every change of state; this module holds what a reservation is, how it
shows in /v1/status and in the state file, and which transitions exist
(L{NEXT}: the registry refuses any other).
"""

from nexusws.logs import iso_utc, printable, tag

RESERVED, STARTING, ACTIVE, STOPPING = "reserved", "starting", "active", "stopping"
DETACHED = "detached"  # running, its WebSocket lost: kept for its grace (L{nexusws.sessions.attach})
RELEASED, EXPIRED = "released", "expired"

#: state -> the states it may go to.
NEXT = {RESERVED: (STARTING, RELEASED, EXPIRED), STARTING: (ACTIVE, STOPPING),
        ACTIVE: (STOPPING, DETACHED), DETACHED: (ACTIVE, STOPPING), STOPPING: (RELEASED,)}

#: The states of a live reservation, in order: the registry's, and the state file's
#: (L{nexusws.sessions.records}); the others are final (it is gone).
LIVE = (RESERVED, STARTING, ACTIVE, DETACHED, STOPPING)


class Reservation:
    """One reserved (and maybe running) instance of a service.

    @ivar created: when it was made, on the reactor's clock (for the timeout);
        C{created_wall}: the same moment in wall-clock epoch seconds.
    @ivar pids: C{(pid, start_time)} of the processes it runs, as last seen.
    @ivar address: C{(host, port)} its instance's start gave, once it gave one.
    @ivar client: the address that reserved it, for L{nexusws.limits}' quota (not saved).
    @ivar pending: its start while in flight (L{nexusws.sessions.starting.start});
        C{why}: why it was ended while starting; C{waiters}: Deferreds to fire
        once it has ended; C{cancelled}: its start was cut short by a release,
        its WebSocket closing or a shutdown. The registry's to change.
    @ivar attached: what its WebSocket's router gave the registry (starting,
        active), None once detached; C{grace_call}: the grace timer while
        detached, C{grace_ends} when it fires (reactor clock).
        L{nexusws.sessions.attach}'s to change."""

    client = None
    activated = None  # when its token's WebSocket came (reactor clock)
    attached = grace_call = grace_ends = None
    since = None  # when it entered its state (wall clock)
    failure = None  # the StartFailure that failed its start, if one did
    end_detail = None  # why its instance ended on its own (a batch job's end), if it did
    job_end = None  # when its batch job's time limit ends it (reactor clock), if it has one
    # Its limits (L{nexusws.sessions.deadlines}'s to change): the last input seen
    # (reactor clock; the attached WebSocket may know a later one), the time limit
    # (reactor clock) and the seconds extended, each limit's timer and whether it warned.
    last_input = deadline = idle_call = time_call = None
    extended = 0.0
    idle_warned = time_warned = False
    bytes_up = bytes_down = 0  # what its WebSockets carried before the attached one
    active_since = None  # when it became active (reactor clock)
    # Kept running at shutdown for the next run (C{kept_record}: what the state file
    # keeps of it besides), or adopted from the previous run (L{nexusws.sessions.adoption}).
    kept = adopted = False
    kept_record = None
    first_event_id = 0  # its events' ids start after this one (an adopted one's: the previous run's last)

    def __init__(self, token, service, index, options, user, created, created_wall):
        self.token, self.service, self.index, self.options, self.user = (
            token, service, index, options, user)
        self.created, self.created_wall = created, created_wall
        self.state, self.pids, self.address = RESERVED, [], None
        self.pending, self.why, self.waiters, self.cancelled = None, None, [], False
        self._record = None

    @property
    def timestamp(self):
        return iso_utc(self.created_wall)

    @property
    def label(self):
        return f"{tag(self.token)} {printable(self.service.name)}#{self.index}"

    def as_status(self, now=None):
        """Its entry in /v1/status (JSON-safe); at C{now} (reactor clock), a detached
        one also tells the seconds of grace it has left (C{grace_left})."""
        status = {"index": self.index, "token": self.token, "timestamp": self.timestamp,
                  "state": self.state, "options": dict(self.options), "user": self.user}
        if now is not None and self.state == DETACHED and self.grace_ends is not None:
            status["grace_left"] = round(max(0.0, self.grace_ends - now), 1)
        if now is not None and self.state != RESERVED and getattr(self.service, "kind", None):
            status["backend"] = self.service.describe(self.index)  # a batch job: its id, node, state
        return status

    def record(self):
        """Its entry in the state file (read back by L{nexusws.sessions.records.saved_records}).

        The same object until its state or processes change: the state file
        tells what changed by identity, at no cost per unchanged reservation."""
        key = (self.state, tuple(self.pids), self.kept)
        if self._record is None or self._record[0] != key:
            self._record = key, dict(
                self.as_status(), service=self.service.name, created=self.created_wall,
                pids=[list(p) for p in self.pids], **(self.kept_record if self.kept else {}))
        return self._record[1]
