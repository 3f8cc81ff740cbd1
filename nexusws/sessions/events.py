"""Each reservation's event log: what happened to its session, in order (issue 15, item 4).

An L{EventLog} holds a reservation's events, each a dict: C{"id"} (1, 2, ...
per reservation), C{"event"} (its name), C{"time"} (ISO-8601 UTC, wall clock)
and its fields. L{Reporting}, mixed into L{nexusws.sessions.registry.Registry},
turns each transition of the state machine into events as it logs it:

  reserved                       a reservation (or one restored from the state file)
  starting                       its token's WebSocket came: the instance starts
  progress {"text"}              a step its script reported (C{RemoteServiceScript.progress});
                                 a Slurm job's also C{"queue"}: C{{"state", "reason", "expected_start"}}
  ready, attached                its address accepted; the WebSocket is attached to it
  attached {"takeover": true}    another WebSocket took the session over
  detached {"grace_left"}        its WebSocket was lost: kept that many seconds
  reattached                     the same token came back within the grace
  idle_warning {"seconds_left"}  no user input for a while: it ends that much later without any
  active {"by"}                  input (C{"input"}) or a touch (C{"touch"}) after an idle warning
  time_warning {"seconds_left"}  its time limit is that near
  extended {"seconds", "time_left"}  its time limit was moved (L{nexusws.sessions.deadlines}); by an
                                 administrator: also C{"by": "admin"}
  ending {"reason"}              C{released}, C{closed}, C{grace_expired}, C{idle},
                                 C{max_duration}, C{stopped} (shutdown, /v1/stop), C{expired} (unused),
                                 C{admin} (an administrator ended it),
                                 C{instance_ended} with C{"detail"} (a Slurm job ended: its state), or
                                 C{failed} with C{"failure"}: the StartFailure's reason
  ended                          the index is free

A log keeps its last L{KEEP_EVENTS} events; an ended reservation's log is kept
L{EVENTS_KEPT_AFTER_END} seconds (reactor clock), then forgotten. Listeners (the
/v1/events streams) are called with each new event. Nothing here knows HTTP.
"""

import collections
import itertools

from nexusws.logs import iso_utc, logger
from nexusws.sessions.attach import GRACE_EXPIRED
from nexusws.sessions.deadlines import BACKEND_ENDED, BY_ADMIN, IDLE, MAX_DURATION
from nexusws.sessions.reservation import ACTIVE, DETACHED, EXPIRED, RELEASED, RESERVED, STARTING, STOPPING
from nexusws.sessions.timeouts import EVENTS_KEPT_AFTER_END

_log = logger("nexusws.reservations")

#: The most events one log keeps (the oldest go first).
KEEP_EVENTS = 256

#: The longest text of a C{progress} event (longer ones are cut).
PROGRESS_MAX = 200

#: Why the registry ends every running instance at shutdown (its log's words).
SHUTDOWN = "server shutting down"

#: An end's cause, as the registry gives it -> the C{reason} of the C{ending} event
#: (any other cause: the WebSocket or the backend closed, C{closed}).
REASONS = {"released": "released", GRACE_EXPIRED: "grace_expired", SHUTDOWN: "stopped", IDLE: "idle",
           MAX_DURATION: "max_duration", BACKEND_ENDED: "instance_ended", BY_ADMIN: "admin"}


def progress_text(text):
    """C{text} as one printable line of at most L{PROGRESS_MAX} characters."""
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if len(line) <= PROGRESS_MAX else line[:PROGRESS_MAX - 3] + "..."


class EventLog:
    """The events of one reservation (see the module docstring).

    @ivar user: whose reservation it is (None: anonymous), for the access rules.
    @ivar last_id: the id of the latest event (0: none yet).
    @ivar ended: C{(state, wall-clock time)} once it has ended, else None."""

    def __init__(self, service, index, user, last_id=0):
        self.service, self.index, self.user = service, index, user
        self.events = collections.deque(maxlen=KEEP_EVENTS)
        self.last_id, self.ended, self._listeners = last_id, None, []
        self.traffic = (0, 0)  # (bytes up, bytes down) once it has ended

    def add(self, name, time, fields):
        self.last_id += 1
        event = {**fields, "id": self.last_id, "event": name, "time": time}
        self.events.append(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # logged; the others and the state machine go on
                _log.failure("an event listener failed")
        return event

    def after(self, last_id):
        """C{(events, lost)}: the kept events after id C{last_id}, and whether some
        between it and the first of them are no longer kept."""
        if not self.events:
            return [], False
        first = self.events[0]["id"]
        return list(itertools.islice(self.events, max(0, last_id + 1 - first), None)), last_id + 1 < first

    def listen(self, listener):
        self._listeners.append(listener)

    def unlisten(self, listener):
        if listener in self._listeners:
            self._listeners.remove(listener)


class Reporting:
    """The event part of the registry. Expects of the class it is mixed into:
    C{_live}, C{_reactor}, C{_wallclock}, C{grace_of}, C{metrics} and L{nexusws.sessions.deadlines}'
    C{idle_seconds}, C{time_left}, C{traffic}; it owns C{_logs}, C{_ended_logs}."""

    _logs = _ended_logs = None

    def events_of(self, token):
        """The L{EventLog} of C{token}: live, or ended less than L{EVENTS_KEPT_AFTER_END} ago; or None."""
        self._forget_ended()
        return (self._logs or {}).get(token)

    def session(self, token):
        """One JSON-safe snapshot of C{token}'s session (live or recently ended), or None."""
        log, r = self.events_of(token), self._live.get(token)
        if log is None:
            return None
        snapshot = {"service": log.service, "index": log.index, "user": log.user}
        if r is None:
            state, since = log.ended
            return dict(snapshot, state=state, since=iso_utc(since), attached=False, grace_left=None,
                        idle=None, time_left=None, bytes_up=log.traffic[0], bytes_down=log.traffic[1])
        now = self._reactor.seconds()
        grace = r.grace_ends if r.state == DETACHED else None
        idle, left = self.idle_seconds(r, now), self.time_left(r, now)
        up, down = self.traffic(r)
        found = dict(snapshot, state=r.state, since=iso_utc(r.since), attached=r.state in (STARTING, ACTIVE),
                     grace_left=None if grace is None else round(max(0.0, grace - now), 1),
                     idle=None if idle is None else round(idle, 1), time_left=None if left is None else round(left, 1),
                     bytes_up=up, bytes_down=down)
        if getattr(r.service, "kind", None):  # a batch job: its id, node and Slurm state
            found["backend"] = r.service.describe(r.index)
        credentials = getattr(r.service, "credentials", None)
        password = (credentials(r.index) or {}).get("password") if credentials is not None else None
        if password is not None and r.state in (ACTIVE, DETACHED):  # only ever to its token's holder
            found["vnc_password"] = password
        return found

    def _progress(self, service, index, text, **fields):
        """C{service}'s script reported C{text} for instance C{index}: a C{progress} event
        (with the backend's C{fields}: a batch job's C{queue})."""
        for r in list(self._live.values()):
            if r.service is service and r.index == index and r.state not in (RESERVED, STOPPING):
                self._emit(r, "progress", text=progress_text(text), **fields)

    def _emit(self, r, name, **fields):
        if self._logs is None:
            self._logs, self._ended_logs = {}, collections.deque()
        log = self._logs.get(r.token)
        if log is None:
            # An adopted session's ids go on from the previous run's (a page's Last-Event-ID).
            log = self._logs[r.token] = EventLog(r.service.name, r.index, r.user, r.first_event_id)
        return log.add(name, iso_utc(self._wallclock()), fields)

    def _forget_ended(self):
        now = self._reactor.seconds()
        while self._ended_logs and self._ended_logs[0][0] <= now:
            self._logs.pop(self._ended_logs.popleft()[1], None)

    def _logged(self, r, old, new, why):
        """Log C{r}'s transition C{old} -> C{new} (once, the token by its tag) and report its events."""
        _log.info("reservation {label}: {old} -> {new}{why}", label=r.label, old=old, new=new,
                  why=f" ({why})" if why else "")
        r.since = self._wallclock()
        try:
            self._report(r, old, new, why)
        except Exception:  # logged; the transition goes on
            _log.failure("{label}: reporting its events failed", label=r.label)

    def _report(self, r, old, new, why):
        if new == RESERVED:
            self._emit(r, "reserved")
        elif new == STARTING:
            self._emit(r, "starting")
        elif new == ACTIVE and old == STARTING:
            self._emit(r, "ready")
            self._emit(r, "attached")
        elif new == ACTIVE:
            self._emit(r, "reattached")
        elif new == DETACHED:
            self._emit(r, "detached", grace_left=self.grace_of(r.service))
        elif new == STOPPING or old == RESERVED:
            ending = self._ending(r, new, why)
            self._emit(r, "ending", **ending)
            if self.metrics is not None:
                self.metrics.session_ends.labels(r.service.name, ending["reason"]).inc()
        if new in (RELEASED, EXPIRED):
            self._emit(r, "ended")
            self._logs[r.token].ended = new, r.since
            self._logs[r.token].traffic = self.traffic(r)
            self._ended_logs.append((self._reactor.seconds() + EVENTS_KEPT_AFTER_END, r.token))
            self._forget_ended()

    @staticmethod
    def _ending(r, new, why):
        if r.failure is not None:
            return {"reason": "failed", "failure": r.failure.reason}
        if new == EXPIRED:
            return {"reason": "expired"}
        if r.end_detail is not None:
            return {"reason": "instance_ended", "detail": r.end_detail}
        return {"reason": REASONS.get(r.why or why, "closed")}
