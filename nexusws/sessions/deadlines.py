"""Idle and time limits of a running session, their warnings, touch and extend (issue 15, items 2-3).

L{Deadlines} is the part of L{nexusws.sessions.registry.Registry} that ends a
session nobody uses, or one that has run its time. Its limits are each
service's config-file options, else the registry's defaults (the command line,
L{LIMITS}):

  idle_timeout   seconds without user input that end a session (0: never)
  idle_warning   announced this long before (an C{idle_warning} event)
  max_duration   seconds from its start that end a session (0: never)
  time_warning   announced this long before (a C{time_warning} event)
  max_extend     seconds L{Deadlines.extend} may add in all (0: no extension)

A warning is given at most half the limit before it (a 60 s idle limit with
the default 120 s warning warns after 30 s idle).

User input is what the WebSocket's attachment reports: the bridge sets its
C{last_input} (reactor clock) when the client sends key, pointer or clipboard
events (L{nexusws.activity}), and calls its C{on_input} once if set; a
L{touch} counts too. Nothing is scheduled per input: one timer per limit runs
at the moment the limit could next be reached and looks at the last input
then. After an idle warning, input (or a touch) gives an C{active} event at once.

The time limit counts from the moment the session became active, on the
reactor's clock, plus what L{extend} added.
"""

from nexusws.logs import logger
from nexusws.sessions.reservation import ACTIVE, DETACHED

_log = logger("nexusws.reservations")

#: The states a session's limits apply in.
RUNNING = (ACTIVE, DETACHED)

#: Why a session is ended by its limits (the C{ending} event's reasons).
IDLE, MAX_DURATION = "idle", "max_duration"

#: Why a session ends when its backend says its instance ended on its own (a Slurm job's end).
BACKEND_ENDED = "backend_ended"

#: Why a session ends when an administrator ends it (the dashboard's End).
BY_ADMIN = "admin"

#: The limits' names and their built-in defaults (seconds; 0: off).
LIMITS = {"idle_timeout": 0.0, "idle_warning": 120.0, "max_duration": 0.0, "time_warning": 300.0,
          "max_extend": 0.0}

#: The most seconds one extend call may ask for (a bigger number is a client's mistake).
EXTEND_MAX_SECONDS = 10 ** 7


class ExtendRefused(Exception):
    """An extension the session's limits do not allow.

    @ivar status: the HTTP status that says why: 403 (beyond C{max_extend}, or
        no extension allowed), 409 (the session has no time limit, or has not started)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


class Deadlines:
    """The idle and time limits (see the module docstring). Expects of the class it
    is mixed into: C{_reactor}, C{limit_defaults}, C{metrics}, C{_end} and C{_emit};
    L{_limits_start} is called when a session becomes active, L{_limits_stop} when it stops,
    L{_fold} when a WebSocket leaves it."""

    def limit(self, service, name):
        """Seconds of limit C{name} for C{service}: its options', else the default."""
        value = (getattr(service, "common_options", None) or {}).get(name)
        if value is None:
            value = (self.limit_defaults or {}).get(name, LIMITS[name])
        return float(value)

    # --- what the snapshot and the API read -------------------------------------------

    def last_input(self, r):
        """When C{r}'s user last gave input (reactor clock): its attachment's latest, or the folded one."""
        latest = r.last_input
        seen = getattr(r.attached, "last_input", None)
        if seen is not None and (latest is None or seen > latest):
            latest = seen
        return latest

    def idle_seconds(self, r, now):
        latest = self.last_input(r)
        return None if latest is None else max(0.0, now - latest)

    def time_left(self, r, now):
        """Seconds until C{r}'s time limit, or None (no limit, or not started)."""
        return None if r.deadline is None else max(0.0, r.deadline - now)

    def traffic(self, r):
        """C{(bytes_up, bytes_down)} of C{r}'s WebSockets so far, the attached one's included."""
        up, down = r.bytes_up, r.bytes_down
        tunnel = getattr(r.attached, "tunnel", None)
        if tunnel is not None:
            up, down = up + tunnel.bytes_up, down + tunnel.bytes_down
        return up, down

    # --- the calls --------------------------------------------------------------------

    def touch(self, r):
        """The page says its user is there: counts as input."""
        r.last_input = self._reactor.seconds()
        self._input_resumed(r, "touch")
        _log.debug("{label}: touched", label=r.label)

    def extend(self, r, seconds, by_admin=False):
        """Move C{r}'s time limit C{seconds} later; C{by_admin}: beyond C{max_extend} too
        (an administrator's extension counts towards it all the same).

        @raise ExtendRefused: no time limit, not started, or beyond C{max_extend}.
        @return: the seconds left afterwards."""
        if self.limit(r.service, "max_duration") <= 0:
            if r.job_end is not None:
                raise ExtendRefused(403, "this session's time limit is its Slurm job's, which cannot be extended")
            raise ExtendRefused(409, "this session has no time limit")
        if r.deadline is None:
            raise ExtendRefused(409, "this session has not started")
        if r.job_end is not None and r.deadline + seconds > r.job_end:
            raise ExtendRefused(403, f"extending by {seconds:g} s is beyond its Slurm job's time limit "
                                     f"({max(0.0, r.job_end - r.deadline):.0f} s more at most)")
        allowed = self.limit(r.service, "max_extend")
        if r.extended + seconds > allowed and not by_admin:
            left = max(0.0, allowed - r.extended)
            raise ExtendRefused(403, f"extending by {seconds:g} s is beyond max_extend ({allowed:g} s in all; "
                                     f"{left:g} s left to extend)")
        r.extended += seconds
        r.deadline += seconds
        now = self._reactor.seconds()
        r.time_warned = False
        self._schedule(r, "time_call", self._time_check, 0.0)
        left = self.time_left(r, now)
        _log.info("{label}: time limit extended by {seconds:g} s ({left:.0f} s left)", label=r.label,
                  seconds=seconds, left=left)
        self._emit(r, "extended", seconds=seconds, time_left=round(left, 1),
                   **({"by": "admin"} if by_admin else {}))
        if self.metrics is not None:
            self.metrics.extends.labels(r.service.name).inc()
        return left

    # --- the registry's hooks ---------------------------------------------------------

    def _limits_start(self, r):
        """C{r} has become active: its limits start counting."""
        now = self._reactor.seconds()
        r.last_input = r.active_since = now
        if self.limit(r.service, "max_duration") > 0:
            r.deadline = now + self.limit(r.service, "max_duration") + r.extended
        ends_at = getattr(r.service, "ends_at", None)  # a batch job's own time limit
        r.job_end = ends_at(r.index) if ends_at is not None else None
        if r.job_end is not None and (r.deadline is None or r.job_end < r.deadline):
            r.deadline = r.job_end
        if r.deadline is not None:
            self._schedule(r, "time_call", self._time_check, 0.0)
        if self.limit(r.service, "idle_timeout") > 0:
            self._schedule(r, "idle_call", self._idle_check, 0.0)

    def _limits_stop(self, r):
        """C{r} is stopping: no limit applies any more."""
        for name in ("idle_call", "time_call"):
            call = getattr(r, name)
            setattr(r, name, None)
            if call is not None and call.active():
                call.cancel()

    def _fold(self, r, attachment):
        """C{attachment}'s WebSocket leaves C{r}: keep its last input and its bytes."""
        if attachment is None:
            return
        seen = getattr(attachment, "last_input", None)
        if seen is not None and (r.last_input is None or seen > r.last_input):
            r.last_input = seen
        tunnel = getattr(attachment, "tunnel", None)
        if tunnel is not None:
            r.bytes_up += tunnel.bytes_up
            r.bytes_down += tunnel.bytes_down
        if hasattr(attachment, "on_input"):
            attachment.on_input = None

    def _watch_input(self, r):
        """After a warning: the next input of the attached WebSocket gives an C{active} event."""
        if hasattr(r.attached, "on_input"):
            r.attached.on_input = lambda: self._input_resumed(r, "input")

    def _input_resumed(self, r, how):
        if r.idle_warned and r.state in RUNNING:
            r.idle_warned = False
            _log.info("{label}: in use again ({how}) after the idle warning", label=r.label, how=how)
            self._emit(r, "active", by=how)
            self._schedule(r, "idle_call", self._idle_check, 0.0)

    def instance_lost(self, token):
        """The connection to C{token}'s running instance closed: a Deferred that fires once its
        backend knows whether the instance ended (then the session is ending, its WebSocket
        told why by L{_backend_ended}), or None when the backend has nothing to find out."""
        r = self._live.get(token)
        lost = getattr(r.service, "lost", None) if r is not None and r.state in RUNNING else None
        return None if lost is None else lost(r.index)

    def _backend_ended(self, service, index, why):
        """C{service}'s instance C{index} ended on its own (C{why}: a batch job's state and exit
        status): its session ends, its WebSocket closed with 1011 and C{why}."""
        for r in list(self._live.values()):
            if r.service is service and r.index == index and r.state in RUNNING:
                _log.info("{label}: its instance ended: {why}", label=r.label, why=why)
                r.end_detail = why
                self._end_for(r, BACKEND_ENDED)

    def end_by_admin(self, r):
        """An administrator ends C{r} (L{BY_ADMIN}); a Deferred firing once its index is free.

        @raise NotRecorded: unused, and the state file could not record its end: it stays."""
        _log.info("{label}: ended by an administrator", label=r.label)
        return self._end_for(r, BY_ADMIN, required=True)

    def _end_for(self, r, reason, required=False):
        """End C{r} for C{reason} (a limit, L{BACKEND_ENDED}, L{BY_ADMIN}); its WebSocket, if one is
        attached, is told why (its C{session_ending(reason, detail)}: the tunnel closes with a code
        that says it). Returns the Deferred of its end."""
        done = self._end(r, reason, required=required)
        ending = getattr(r.attached, "session_ending", None)
        if ending is not None:
            try:
                ending(reason, r.end_detail)
            except Exception:  # logged; the session is stopping all the same
                _log.failure("{label}: closing its WebSocket failed", label=r.label)
        return done

    # --- the timers -------------------------------------------------------------------

    def _schedule(self, r, name, check, delay):
        call = getattr(r, name)
        if call is not None and call.active():
            call.cancel()
        setattr(r, name, self._reactor.callLater(max(0.0, delay), self._run, r, name, check))

    def _run(self, r, name, check):
        setattr(r, name, None)
        if r.state not in RUNNING:
            return
        try:
            check(r)
        except Exception:  # logged; the session goes on without that limit
            _log.failure("{label}: checking its limits failed", label=r.label)

    def _idle_check(self, r):
        timeout = self.limit(r.service, "idle_timeout")
        warning = min(self.limit(r.service, "idle_warning"), timeout / 2)
        now = self._reactor.seconds()
        idle = self.idle_seconds(r, now) or 0.0
        left = timeout - idle
        if left <= 0:
            _log.info("{label}: idle for {idle:.0f} s (idle_timeout {timeout:g} s): ending it",
                      label=r.label, idle=idle, timeout=timeout)
            self._end_for(r, IDLE)
            return
        if left <= warning:
            if not r.idle_warned:
                r.idle_warned = True
                _log.info("{label}: idle for {idle:.0f} s: it ends in {left:.0f} s without input",
                          label=r.label, idle=idle, left=left)
                self._emit(r, "idle_warning", seconds_left=round(left, 1))
                self._watch_input(r)
            self._schedule(r, "idle_call", self._idle_check, left)
        else:
            self._schedule(r, "idle_call", self._idle_check, left - warning)

    def _time_check(self, r):
        duration = self.limit(r.service, "max_duration")
        by_job = r.job_end is not None and r.deadline >= r.job_end
        span = r.job_end - r.active_since if by_job else duration
        warning = min(self.limit(r.service, "time_warning"), span / 2)
        left = self.time_left(r, self._reactor.seconds())
        if left <= 0:
            _log.info("{label}: its time is up ({limit}, extended by {extended:g} s)", label=r.label,
                      limit="its Slurm job's time limit" if by_job else f"max_duration {duration:g} s",
                      extended=r.extended)
            self._end_for(r, MAX_DURATION)
            return
        if left <= warning:
            if not r.time_warned:
                r.time_warned = True
                _log.info("{label}: its time limit is in {left:.0f} s", label=r.label, left=left)
                self._emit(r, "time_warning", seconds_left=round(left, 1))
            self._schedule(r, "time_call", self._time_check, left)
        else:
            self._schedule(r, "time_call", self._time_check, left - warning)
