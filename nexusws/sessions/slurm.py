"""The Slurm backend (issue 16): each instance of a service is a batch job on a node Slurm picks.

L{SlurmService} implements L{nexusws.sessions.backend.IQueuedBackend} (an
L{nexusws.sessions.backend.ISessionBackend} whose instances may wait in a queue
and end on their own) for a script that subclasses
L{nexusws.sessions.slurmscript.SlurmScript}. Each instance's start is one
L{nexusws.sessions.slurminstance.Job}: submitted with C{sbatch}, watched through
the site's one C{squeue} a poll, reached where its connection file says, and
cancelled with C{scancel} when its session ends. With C{--keep_sessions} its
running jobs are left to the next run, which takes them back (L{SlurmService.kept},
L{SlurmService.adopt}); whatever else a previous run left is cancelled at start
(L{nexusws.sessions.slurmsite.startup}).
"""

import copy

from twisted.internet import defer
from zope.interface import implementer

from nexusws.logs import logger
from nexusws.sessions.backend import BUSY, NO_INSTANCE, IQueuedBackend, StartFailure
from nexusws.sessions.slurminstance import Job
from nexusws.sessions.slurmscript import PYTHON
from nexusws.sessions.slurmsite import digest
from nexusws.sessions.timeouts import START_TIMEOUT

_log = logger("nexusws.slurm")


@implementer(IQueuedBackend)
class SlurmService:
    """A service whose instances are Slurm jobs (see the module docstring)."""

    kind = "slurm"
    keepable = True  # --keep_sessions leaves its running jobs to the next run (kept, adopt)
    on_progress = on_ended = None  # the registry's: (service, index, text[, fields]), (service, index, why)

    def __init__(self, name, script_class, count, common_options, reactor, site, aliases=(), origin="",
                 connection_dir=None):
        self.name, self.count, self.common_options = name, count, common_options
        self.group = common_options.get("group")
        self.aliases, self.origin, self.reactor, self.site = tuple(aliases), origin, reactor, site
        self.log = logger(f"nexusws.service.{name}")
        self.connection_dir = connection_dir
        self.python = common_options.get("python", PYTHON)
        self.queue_timeout = float(common_options.get("queue_timeout", 0))
        self.start_timeout = START_TIMEOUT
        self.digest = digest(name, 8)
        self._jobs = {}
        self.script = script_class(copy.deepcopy(common_options))
        if site is not None:
            site.services.append(self)

    def __repr__(self):
        return f"<SlurmService {self.name!r} count={self.count}>"

    def start_bound(self, start_timeout):
        """The registry's bound on a start: none while a job may wait in the queue as long as
        Slurm keeps it; L{Job} counts C{start_timeout} from the job's start itself."""
        self.start_timeout = start_timeout
        return None if self.queue_timeout <= 0 else self.queue_timeout + start_timeout

    def start(self, index, options):
        if not isinstance(index, int) or not 0 <= index < self.count:
            return defer.fail(StartFailure(self.name, index, NO_INSTANCE))
        if index in self._jobs:
            return defer.fail(StartFailure(self.name, index, BUSY))
        job = self._jobs[index] = Job(self, index)
        return job.start(options)

    def stop(self, index):
        job = self._jobs.get(index)
        if job is None:
            return defer.succeed(None)
        def stopped(_):
            if self._jobs.get(index) is job:
                del self._jobs[index]

        return job.stop().addBoth(stopped)

    def address(self, index):
        job = self._jobs.get(index)
        return None if job is None else job.address

    def credentials(self, index):
        """The VNC password instance C{index}'s job reported, for its session's page; or None."""
        job = self._jobs.get(index)
        return None if job is None or job.password is None else {"password": job.password}

    def ends_at(self, index):
        """When (reactor clock) instance C{index}'s job reaches its time limit, or None."""
        job = self._jobs.get(index)
        return None if job is None else job.ends_at

    def pending(self):
        """How many of its jobs wait in Slurm's queue."""
        return sum(job.state == "starting" and job.slurm_state == "PENDING" for job in self._jobs.values())

    def describe(self, index):
        job = self._jobs.get(index)
        if job is None:
            return {"backend": self.kind, "state": None, "address": None}
        return job.describe()

    def lost(self, index):
        """Instance C{index}'s connection closed: a Deferred that fires once Slurm says whether
        its job ended (then L{on_ended} has been called) or L{LOST_WAIT} seconds have passed;
        None if there is no job to ask about."""
        job = self._jobs.get(index)
        return None if job is None else job.lost()

    def kept(self, index, offset):
        """What the state file keeps of instance C{index}'s running job for the next run
        (C{offset}: wall clock minus reactor clock); None if it runs none."""
        job = self._jobs.get(index)
        if job is None or job.id is None or job.state != "running":
            return None
        self.site.queue.unwatch(job.id)  # no longer ours to end
        return {"id": job.id, "secret": job.secret, "password": job.password,
                "ends_at": None if job.ends_at is None else job.ends_at + offset}

    def adopt(self, index, address, kept, offset):
        """Take back a job a previous run kept (L{kept}'s record; C{offset}: reactor clock minus
        wall clock): watched again, so its end ends its session, and L{stop} cancels it."""
        job = self._jobs[index] = Job(self, index)
        job.id, job.secret, job.password, job.address = kept["id"], kept["secret"], kept["password"], address
        job.ends_at = None if kept.get("ends_at") is None else kept["ends_at"] + offset
        job.state = "running"
        job.started.callback(address)
        self.site.queue.watch(job.id, job._queue_changed)
        _log.info("{service}[{index}]: Slurm job {job} taken back from the previous run", service=self.name,
                  index=index, job=job.id)

    def job_ids(self):
        """The ids of the jobs it holds (submitted, running or adopted)."""
        return {job.id for job in self._jobs.values() if job.id is not None}

    def pids(self, index):
        return []  # a job's processes are on a node, Slurm's to end

    def progress(self, index, text, **fields):
        if self.on_progress is not None:
            self.on_progress(self, index, text, **fields)


