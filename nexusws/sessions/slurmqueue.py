"""What Slurm says of a gateway's jobs: one C{squeue} per poll for all of them (issue 16, item 4).

The Slurm backend names every job of one gateway alike (a digest, never a
token); L{SlurmQueue} asks C{squeue -h -t all --name=NAME} once per poll and
tells each watcher of a job what changed: its L{Job} (state, pending reason,
node, expected or actual start, time limit and time left), or None once
Slurm no longer knows it. Nothing is asked while nobody watches.

Polling: every C{interval} seconds while something changed at the last poll
(or a job was just watched); while nothing changes the pause doubles, up to
C{max_interval}. A poll never starts while another is in flight. A failing
C{squeue} (not installed, a controller that does not answer, a non-zero exit)
is an outage: one warning when it begins, one line when it ends, the pause
backs off meanwhile, and no job is taken for gone during it.

C{run(argv)} runs a command and fires with C{(stdout, stderr, exit code)}
(the site's, L{nexusws.sessions.slurmsite.SlurmSite.run}: Twisted's process API,
never blocking the reactor, a hung command killed).
"""

import collections
import os
import re
import time

from twisted.internet import defer

from nexusws.logs import logger, printable

_log = logger("nexusws.slurm")

#: Slurm's states of a job that has ended (or is ending: COMPLETING).
#: Slurm's states of a job sent back to the queue (after it ran, or was about to).
REQUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})

ENDED = frozenset({"COMPLETED", "COMPLETING", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "STOPPED"})

#: Readable words for the pending reasons users meet most.
REASONS = {"Resources": "waiting for free resources", "Priority": "jobs of higher priority go first",
           "Dependency": "waiting for another job", "BeginTime": "not to start yet",
           "JobHeldUser": "held", "JobHeldAdmin": "held by an administrator",
           "QOSMaxJobsPerUserLimit": "the user's job limit is reached",
           "AssocMaxJobsLimit": "the account's job limit is reached",
           "ReqNodeNotAvail": "the nodes it needs are not available", "PartitionDown": "the partition is down",
           "None": "being scheduled"}

_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


#: squeue's fields (C{-O}, each ended by "|"), in L{Job}'s order: id, state, reason, node,
#: start (expected, while pending), time limit, time left, exit status (a wait status: code << 8 | signal).
FORMAT = "JobID:|,State:|,Reason:|,BatchHost:|,StartTime:|,TimeLimit:|,TimeLeft:|,exit_code:|"

#: What squeue shows for a value it does not have.
_NONE = {"", "None", "N/A", "(null)", "n/a"}

#: A job of one poll; values are squeue's text (None where it has none).
Job = collections.namedtuple("Job", "id state reason node start time_limit time_left exit_status")

#: Where Slurm's commands are looked for when the gateway has no PATH.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def command_env(environ=None):
    """The environment Slurm's commands run with: the gateway's PATH and SLURM_CONF
    (where a site keeps them), nothing else of the gateway's (its secrets)."""
    environ = os.environ if environ is None else environ
    env = {"PATH": environ.get("PATH") or DEFAULT_PATH, "LANG": "C.UTF-8"}
    if environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = environ["SLURM_CONF"]
    return env


#: L{command_env} without the gateway's PATH (the tests' commands).
ENV = command_env({})


def parse(output):
    """squeue's output in L{FORMAT} -> {job id: L{Job}}; lines of another shape are skipped."""
    jobs = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if fields and fields[-1] == "":
            fields.pop()  # after the last field's "|"
        if len(fields) != len(Job._fields) or not fields[0]:
            continue
        job = Job(*(None if value in _NONE else value for value in fields))
        jobs[job.id] = job
    return jobs


class SlurmQueue:
    """The state of one gateway's Slurm jobs (see the module docstring).

    @param name: the job name all of the gateway's jobs have (C{sbatch --job-name}).
    @param run: C{argv -> Deferred((stdout, stderr, code))}.
    @ivar calls: how many squeue commands it ran (for its tests and its metrics).
    """

    def __init__(self, reactor, name, run, interval=2.0, max_interval=30.0, squeue="squeue"):
        self._reactor, self.name = reactor, name
        self._run = run
        self.interval, self.max_interval, self.squeue = interval, max_interval, squeue
        self._pause, self._call, self._busy, self._soon = interval, None, False, False
        self._watchers, self._last, self._asked = {}, {}, set()
        self._next_waiters, self._poll_waiters = [], []  # poll_now's: for the next poll, for this one
        self.outage, self.calls = None, 0

    def watch(self, job_id, on_change):
        """Call C{on_change(job)} with each new state of C{job_id} (None: Slurm no longer knows it,
        and the watch ends); polls soon."""
        self._watchers[str(job_id)] = on_change
        self._pause = self.interval
        self._soon = self._busy  # asked during a poll: the next one at once
        self._schedule(0.0)

    def poll_now(self):
        """Poll as soon as none is in flight: a Deferred that fires (None) once a poll that
        began after this call has been answered (or failed). At once if nothing is watched."""
        if not self._watchers:
            return defer.succeed(None)
        d = defer.Deferred()
        self._next_waiters.append(d)
        self._pause = self.interval
        if self._busy:
            self._soon = True
        else:
            self._schedule(0.0)
        return d

    def unwatch(self, job_id):
        self._watchers.pop(str(job_id), None)
        self._last.pop(str(job_id), None)
        if not self._watchers:
            self._cancel()

    def stop(self):
        """Watch nothing more and poll no more."""
        self._watchers.clear()
        self._last.clear()
        self._cancel()
        waiters, self._next_waiters = self._next_waiters, []
        for d in waiters:
            d.callback(None)

    # --- polling ----------------------------------------------------------------------

    def _schedule(self, delay):
        if self._busy or not self._watchers:
            return
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self._reactor.seconds() + delay:
                return
            self._call.cancel()
        self._call = self._reactor.callLater(delay, self._poll)

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _poll(self):
        self._call, self._busy = None, True
        self._asked = set(self._watchers)  # a job watched during this poll may be too new for its answer
        self._poll_waiters, self._next_waiters = self._next_waiters, []
        self.calls += 1
        argv = [self.squeue, "-h", "--me", "-t", "all", f"--name={self.name}", "-O", FORMAT]
        d = self._run(argv)
        d.addCallbacks(self._answered, self._failed)
        d.addErrback(lambda f: _log.failure("handling squeue's answer failed", f))
        d.addBoth(self._done)

    def _answered(self, result):
        out, err, code = result
        if code != 0:
            return self._failed(None, f"exit {code}: {_text(err) or _text(out) or 'no output'}")
        if self.outage is not None:
            _log.info("squeue answers again (it failed: {why})", why=self.outage)
            self.outage = None
        jobs = parse(out.decode("utf-8", "replace") if isinstance(out, bytes) else out)
        changed = False
        for job_id, on_change in list(self._watchers.items()):
            if job_id not in self._asked:
                continue
            job = jobs.get(job_id)
            if job == self._last.get(job_id, 0):  # 0: never reported
                continue
            changed = True
            self._last[job_id] = job
            if job is None:
                self.unwatch(job_id)
            try:
                on_change(job)
            except Exception:  # logged; the other watchers go on
                _log.failure("a watcher of Slurm job {job} failed", job=job_id)
        self._pause = self.interval if changed else min(self._pause * 2, self.max_interval)
        return None

    def _failed(self, failure, why=None):
        why = why or printable(failure.getErrorMessage())
        if self.outage is None:
            _log.warn("squeue failed: {why}; asking again, jobs are not taken for gone meanwhile", why=why)
        self.outage = why
        self._pause = min(self._pause * 2, self.max_interval)
        return None

    def _done(self, _):
        self._busy, soon, self._soon = False, self._soon, False
        waiters, self._poll_waiters = self._poll_waiters, []
        for d in waiters:
            d.callback(None)
        if self._next_waiters and not self._watchers:  # nothing left to poll for
            waiters, self._next_waiters = self._next_waiters, []
            for d in waiters:
                d.callback(None)
        self._schedule(0.0 if soon else self._pause)


def _text(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return printable(value.strip(), limit=300) if value.strip() else ""


def seconds_of(text):
    """Seconds of a Slurm duration (C{"1-02:03:04"}, C{"2:03:04"}, C{"3:04"}), or None (UNLIMITED...)."""
    found = _TIME.match(text or "")
    if found is None:
        return None
    days, hours, minutes, secs = (int(v or 0) for v in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def exit_text(status):
    """A job's C{exit_code} (a wait status) in words; None if it has none."""
    try:
        status = int(status)
    except (TypeError, ValueError):
        return None
    return f"signal {status & 0x7F}" if status & 0x7F else f"exit code {status >> 8}"


def exit_status(status):
    """A job's wait status as an exit code, or -signal (L{StartFailure.exit_status}); None if none."""
    try:
        status = int(status)
    except (TypeError, ValueError):
        return None
    return -(status & 0x7F) if status & 0x7F else status >> 8


def expected_start(text):
    """Slurm's expected start (its local time, no zone) as epoch seconds, or None."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError, OverflowError):
        return None
