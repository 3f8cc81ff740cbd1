"""The seam for where a session runs: L{ISessionBackend}, and L{StartFailure}.

The registry (L{nexusws.sessions.registry}) starts, stops and asks about a
service's instances only through L{ISessionBackend}. Today one backend
implements it: L{nexusws.sessions.instances.Service}, which runs a service's
script (or a built-in one) on this host. A batch-system backend (Slurm) is to
plug in behind the same interface: what each method must guarantee is written
on it below.

What a start delivers must be an address (L{as_address} checks it).
A start that fails, fails with a L{StartFailure}: its fields say which
instance, what failed, why, and the exit status of a program whose end failed
it. Its text is the one line the registry and the logs show; L{StartFailure.reason}
is what the instance's client is told (the WebSocket's close reason). Nothing
takes the text apart again.

Imports nothing of nexusws but L{nexusws.logs}.
"""

import sys

from zope.interface import Attribute, Interface

from nexusws.logs import printable

__all__ = ["IQueuedBackend", "ISessionBackend", "StartFailure", "as_address"]


class ISessionBackend(Interface):
    """A named service's instances, run somewhere: here (scripts), or by a batch system.

    Instances are indexed C{0..count-1}. The registry hands out indices and
    guarantees that it never starts an index that is starting or running
    (it calls L{stop} in between, whatever became of the start), so a backend
    need not queue. All methods are called in the reactor thread; none may block.
    """

    name = Attribute("The service's name, as reservations give it (str).")
    aliases = Attribute("Other names that reach the same service (tuple of str).")
    count = Attribute("How many instances it has (int > 0).")
    common_options = Attribute("Its options, the same for every instance (a JSON-safe dict, "
                               "shown by /v1/status).")
    group = Attribute("The group whose members alone may use it (str), or None for everyone.")

    def start(index, options):
        """Start instance C{index}.

        @param options: the reservation's options (str values), with C{token}
            and, when known, C{user}; the backend may keep no reference to it.
        @return: a Deferred that
          - fires with C{(host, port)} (a str and an int) where the instance
            will accept TCP connections; the registry waits until it does, so
            the backend may deliver it before the port is open; what is no
            pair (L{as_address}, lenient) fails the start (L{NOT_READY});
          - fails with a L{StartFailure} naming this service and index, with
            a one-line C{why} fit to show the user (no secrets, no traceback),
            and C{exit_status} when a program's (or a job's) end failed it;
            any other exception (a backend's bug) the registry turns into a
            L{StartFailure} L{NOT_READY}, its C{why} the exception's first line
            (L{nexusws.sessions.starting.describe_failure});
          - when cancelled (the registry's start timeout, the reservation
            released, the WebSocket gone, shutdown), stops waiting at once and
            fails with C{CancelledError}, not with a L{StartFailure}.
        Whatever the outcome, the registry calls L{stop} afterwards when the
        start did not deliver an address in time: a failed or cancelled start
        need not clean up by itself (but may).
        """

    def stop(index):
        """End instance C{index} and everything it started.

        @return: a Deferred that fires (with anything; it never fails) once
            all of the instance has ended: processes here, jobs elsewhere.
            Idempotent: an index never started, already stopped or being
            stopped is no error (a second call waits for the same end). A
            start still in progress is cancelled first. It must end within
            its own bounds (grace periods, then force): the registry frees the
            index anyway after its stop timeout, and the next start of that
            index may then meet what is left.
        """

    def address(index):
        """C{(host, port)} that instance C{index}'s start delivered, or None
        (not started yet, failed, stopped or never started)."""

    def describe(index):
        """A small JSON-safe dict about instance C{index}, for status and logs.

        At least C{"backend"} (the kind: C{"local"}, C{"slurm"}, ...) and
        C{"state"} (C{"starting"}, C{"running"}, C{"stopping"}, or None when
        the instance is not live); C{"address"} (C{"host:port"} or None) and
        backend-specific keys (a job id) may follow. No secrets; cheap (no
        process scan, no remote call).
        """

    def pids(index):
        """C{[(pid, start_time)]} of the processes on this host that instance
        C{index} runs, with their descendants, for the state file: after a
        crash the next run ends them (pid and start time checked). [] when it
        runs none here (a batch job's are on other hosts). Called on each
        state change and every reaper pass: it should be cheap."""


class IQueuedBackend(ISessionBackend):
    """What a backend whose instances are batch jobs adds (L{nexusws.sessions.slurm.SlurmService}).

    All optional for the registry, which asks for each with C{getattr}: the local
    backend has none of them.
    """

    kind = Attribute("Its kind, as L{ISessionBackend.describe} gives it (C{\"slurm\"}).")
    on_ended = Attribute("Set by the registry: C{on_ended(service, index, why)}, to be called when a "
                         "running instance ends on its own (its job's end); its session ends, its "
                         "WebSocket is closed with 1011 and C{why}.")
    keepable = Attribute("Whether --keep_sessions may keep its instances running at a stop (bool).")

    def start_bound(start_timeout):
        """The registry's bound on a start, in seconds, given C{--start_timeout}; None for none
        (a job may wait in the queue as long as the scheduler keeps it: the backend counts
        C{start_timeout} from the job's start itself)."""

    def lost(index):
        """The connection to instance C{index} closed: a Deferred that fires once the backend
        knows whether the instance ended (it then has called C{on_ended}), or None."""

    def ends_at(index):
        """When (reactor clock) instance C{index} reaches its own time limit, or None."""

    def credentials(index):
        """C{{"password": ...}} that instance C{index}'s server asks for, for its session's
        page alone (C{vnc_password} of /v1/session/{token}); or None."""

    def pending():
        """How many of its instances wait in the scheduler's queue (for /v1/load)."""


# --- start failures ---------------------------------------------------------------

#: The kinds of failure, C{StartFailure.what}; each one's text is in L{_TEXT}.
FAILED = "failed"  # the backend says why in its own words: a program missing or exited, a port taken
CRASHED = "start failed"  # the backend's own: a script's start raised unexpectedly (its bug): why is "Type: text"
NOT_READY = "failed to start"  # no address, or it did not accept, within the start timeout; or the
#                                backend failed with something else than a StartFailure (its bug)
CUT_SHORT = "stopped before it started"  # released, its WebSocket closed or shutdown, while starting
NOT_RECORDED = "not started"  # the state file could not record the start: nothing was started
BUSY = "already running"  # asked to start an instance that is live (why is empty)
NO_INSTANCE = "no such instance"  # asked for an index outside 0..count-1 (why is empty)

#: what -> (the message, what the instance's client is told; None: the whole message).
#: {service} is the name as given, {shown} the same made printable, {quoted} that quoted.
_TEXT = {
    FAILED: ("service '{shown}' instance {index}: {why}", "{why}"),
    CRASHED: ("service '{shown}' instance {index}: start failed: {why}", "{why}"),
    NOT_READY: ("service {quoted} instance {index} failed to start: {why}", "failed to start: {why}"),
    CUT_SHORT: ("service {quoted} instance {index} was stopped before it started ({why})",
                "was stopped before it started ({why})"),
    NOT_RECORDED: ("{service} instance {index} not started: {why}", None),
    BUSY: ("service '{shown}' instance {index} is already running", "is already running"),
    NO_INSTANCE: ("service '{shown}' has no instance {index!r}", None),
}

#: C{why} when the backend gave an empty one.
NO_REASON = "no reason given"

#: A message is at most this many characters (then "..."): C{why} is cut to fit.
LIMIT = 1000


class StartFailure(Exception):
    """An instance did not start: which one, what failed, and why.

    @ivar service: the service's name.
    @ivar index: the instance's index.
    @ivar what: the kind of failure: L{FAILED}, L{CRASHED} (the backend's),
        L{NOT_READY}, L{CUT_SHORT}, L{NOT_RECORDED} (the registry's), L{BUSY},
        L{NO_INSTANCE} (a caller's mistake).
    @ivar why: the cause, one printable line, cut so that the whole message
        stays within L{LIMIT} characters.
    @ivar exit_status: the exit code, or -signal, of the program (or job)
        whose end failed the start; None if that is not what failed it.
    """

    def __init__(self, service, index, what, why="", exit_status=None):
        if what not in _TEXT:
            raise ValueError(f"StartFailure: unknown kind of failure {what!r}")
        super().__init__(service, index, what, why, exit_status)
        self.service, self.index, self.what, self.exit_status = service, index, what, exit_status
        head = _TEXT[what][0].partition("{why}")[0].format(**self._names())
        if not str(why).strip() and "{why}" in _TEXT[what][0]:
            why = NO_REASON  # a script's ServiceError(""): the client is still told something
        self.why = printable(why, limit=max(LIMIT - len(head), 0))

    def _names(self):
        shown = printable(self.service, limit=sys.maxsize)
        return {"service": self.service, "shown": shown, "quoted": repr(printable(self.service)),
                "index": self.index}

    def __str__(self):
        return _TEXT[self.what][0].format(why=self.why, **self._names())

    @property
    def reason(self):
        """What the instance's client is told: the message without the service
        and index it asked for (it knows them)."""
        told = _TEXT[self.what][1]
        return str(self) if told is None else told.format(why=self.why, **self._names())


def as_address(value, lenient=False):
    """C{value} as a C{(host, port)} tuple if it is an address, else None.

    Strict (the local backend's check of what a script's C{start} returned): a
    pair (a tuple or a list) of a non-empty host name or IP address without
    whitespace (a str) and a port number 1-65535 (an int, not a bool).

    C{lenient} (the registry's check of what any backend's C{start} delivered):
    any pair, as C{(str(host), int(port))}; None if it is no pair or its port no
    number (TypeError, ValueError; other errors of the conversion propagate).
    """
    if lenient:
        try:
            host, port = value
            return (str(host), int(port))
        except (TypeError, ValueError):
            return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    host, port = value
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    return (host, port)
