"""What all of a gateway's Slurm services share (issue 16): its job name, its queue, its commands.

L{SlurmSite} holds:
  - the I{job name} every job of this gateway gets (C{sbatch --job-name}): a digest of
    the host name and the state file, so the same gateway finds its jobs again after a
    restart, and no cluster user learns a token or a user's name from C{squeue};
  - one L{nexusws.sessions.slurmqueue.SlurmQueue}: one C{squeue} a poll for every job;
  - the poll of the I{connection files} the jobs write (L{nexusws.sessions.slurmjob}):
    one directory listing a tick for all the jobs that have not reported yet;
  - C{sbatch} (the job script on its stdin) and C{scancel}, through Twisted's process
    API with L{nexusws.sessions.slurmqueue.command_env}, never blocking the reactor.

L{read_connection_file} checks a job's report before the gateway believes it.
"""

import collections
import hashlib
import os
import shutil
import socket

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall

from nexusws.logs import logger, printable
from nexusws.sessions.slurmqueue import SlurmQueue, command_env

_log = logger("nexusws.slurm")

#: Seconds between two looks at the connection files of jobs that have not reported.
FILE_POLL = 0.1

#: What scancel says of a job that has ended already (no failure: what it was asked is done).
GONE = ("already completing or completed", "Invalid job id specified")

#: Seconds between two squeue calls while something changes (a service's C{poll_interval}).
POLL_INTERVAL = 2.0

#: Seconds a Slurm command may run before it is killed (Slurm's own MessageTimeout is 10 s).
COMMAND_TIMEOUT = 60.0

#: Seconds a submission whose answer was lost is looked for (sbatch is killed after
#: COMMAND_TIMEOUT; a stalled controller may take its request in a while after).
SUSPECT_WATCH = 300.0

#: Seconds between two looks for such a job.
SWEEP_INTERVAL = 5.0


def job_name(state_file, host=None):
    """The job name of the gateway whose state file is C{state_file} on C{host} (this one's)."""
    where = f"{host or socket.gethostname()}:{os.path.abspath(state_file)}"
    return "nexusws-" + hashlib.sha256(where.encode()).hexdigest()[:12]


def digest(text, size=16):
    """A short digest of C{text} (a token, a service's name) fit to show every cluster user."""
    return hashlib.sha256(str(text).encode()).hexdigest()[:size]


class _Command(ProcessProtocol):
    """One command's output and exit code; C{input} written to its stdin first."""

    timer = None

    def __init__(self, input, name=""):
        self.input, self.out, self.err, self.name = input, [], [], name
        self.done = defer.Deferred()

    def overdue(self, seconds):
        """It ran C{seconds}: killed, and its answer says so (a controller that never answers)."""
        self.timer = None
        self.err = [f"{self.name} did not answer within {seconds:g} s (killed)\n".encode()]
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def connectionMade(self):
        if self.input:
            self.transport.write(self.input)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        code = getattr(reason.value, "exitCode", None)
        if code is None:
            code = -(getattr(reason.value, "signal", None) or 1)
        self.done.callback((b"".join(self.out), b"".join(self.err), code))


def run_command(reactor, timeout=COMMAND_TIMEOUT):
    """C{run(argv, input=None)} -> Deferred((stdout, stderr, exit code)), through Twisted's process
    API; a command still running after C{timeout} seconds is killed (its code -9, its stderr says why)."""

    def run(argv, input=None):
        env = command_env()
        program = shutil.which(argv[0], path=env["PATH"])
        if program is None:
            return defer.fail(FileNotFoundError(f"{argv[0]} not found on PATH ({env['PATH']})"))
        command = _Command(input, os.path.basename(argv[0]))
        try:
            reactor.spawnProcess(command, program, list(argv), env=env)
        except OSError as e:
            return defer.fail(e)
        command.timer = reactor.callLater(timeout, command.overdue, timeout)
        return command.done

    return run


class SlurmSite:
    """The Slurm services' shared parts (see the module docstring).

    @param name: the job name (L{job_name}).
    @param run: C{run(argv, input=None)} -> Deferred((stdout, stderr, code)); L{run_command}'s by default.
    """

    def __init__(self, reactor, name, run=None, interval=POLL_INTERVAL, max_interval=30.0, file_poll=FILE_POLL):
        self.reactor, self.name = reactor, name
        self._run = run if run is not None else run_command(reactor)
        self.commands = collections.Counter()  # Slurm commands run, by name (a metric)
        self.queue = SlurmQueue(reactor, name, run=self.run, interval=interval,
                                max_interval=max_interval)
        self._files = {}  # job id -> (directory, callback)
        self._looking = LoopingCall(self._look)
        self._looking.clock = reactor
        self._file_poll = file_poll
        self._ready, self._waiting = True, []
        self.services = []  # the Slurm services on this site (each adds itself): the jobs they hold
        self._suspects, self._sweep_call = {}, None  # comment -> until when it is looked for

    def hold(self):
        """Submit nothing until L{release}: L{startup} is finding what a previous run left."""
        self._ready = False

    def release(self):
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def when_ready(self):
        """A Deferred that fires once jobs may be submitted (at once, unless held)."""
        if self._ready:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def run(self, argv, input=None):
        """Run a Slurm command (counted in L{commands}): a Deferred((stdout, stderr, code))."""
        self.commands[os.path.basename(argv[0])] += 1
        return self._run(argv, input)

    # --- connection files -------------------------------------------------------------

    def watch_file(self, directory, job_id, callback):
        """Call C{callback(path)} once C{<directory>/<job_id>.json} exists (then the watch ends)."""
        self._files[str(job_id)] = (directory, callback)
        if not self._looking.running:
            self._looking.start(self._file_poll, now=True)

    def unwatch_file(self, job_id):
        self._files.pop(str(job_id), None)
        if not self._files and self._looking.running:
            self._looking.stop()

    def _look(self):
        # Nothing here stops or restarts the poll but its end: a callback may watch again.
        listed = {}
        for job_id, (directory, callback) in list(self._files.items()):
            if directory not in listed:
                try:
                    listed[directory] = set(os.listdir(directory))
                except OSError as e:
                    _log.warn("cannot list the connection directory {dir}: {why}", dir=directory,
                              why=e.strerror)
                    listed[directory] = set()
            if f"{job_id}.json" in listed[directory] and self._files.get(job_id) == (directory, callback):
                del self._files[job_id]
                try:
                    callback(os.path.join(directory, f"{job_id}.json"))
                except Exception:  # logged; the others are looked at all the same
                    _log.failure("handling job {job}'s connection file failed", job=job_id)
        if not self._files and self._looking.running:
            self._looking.stop()

    # --- submissions whose answer was lost ----------------------------------------------

    def find_lost(self, comment):
        """sbatch failed, but its request may have reached the controller (a timeout): look for a
        job with C{comment} (unique to that start) for L{SUSPECT_WATCH} seconds and cancel it."""
        self._suspects[comment] = self.reactor.seconds() + SUSPECT_WATCH
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(0, self._sweep)

    def _sweep(self):
        self._sweep_call = None
        d = self.own_jobs()

        def answered(jobs):
            held = {job for service in self.services for job in service.job_ids()}
            for job_id, comment in sorted(jobs.items()):
                if comment in self._suspects and job_id not in held:
                    _log.warn("Slurm job {job} was made though sbatch's answer was lost: cancelling it", job=job_id)
                    del self._suspects[comment]
                    self.cancel(job_id).addCallback(lambda _, job=job_id: self.remove_files(job))
            now = self.reactor.seconds()  # only an answer says a job is not there (yet)
            self._suspects = {c: until for c, until in self._suspects.items() if until > now}

        d.addCallbacks(answered, lambda f: None)  # squeue failing: the next look tells
        d.addErrback(lambda f: _log.failure("looking for lost submissions failed", f))
        d.addBoth(lambda _: self._next_sweep())

    def directories(self):
        """The connection directories of its services."""
        return {service.connection_dir for service in self.services}

    def remove_files(self, job_id, directories=None):
        """Remove job C{job_id}'s report and output from C{directories} (default: all of its
        services'); a file already gone is no error, another failure a warning."""
        for directory in self.directories() if directories is None else directories:
            for name in (f"{job_id}.json", f"{self.name}-{job_id}.out"):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    _log.warn("cannot remove {name}: {why}", name=name, why=e.strerror)

    def _next_sweep(self):
        if self._suspects and self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(SWEEP_INTERVAL, self._sweep)

    # --- commands ---------------------------------------------------------------------

    def cancel(self, job_id):
        """C{scancel} the job: a Deferred firing with None once scancel has answered (never failing)."""
        d = self.run(["scancel", str(job_id)])

        def answered(result):
            out, err, code = result
            why = printable(err.decode("utf-8", "replace").strip(), limit=300)
            if code != 0 and not any(gone in why for gone in GONE):
                _log.warn("scancel {job} failed (exit {code}): {why}", job=job_id, code=code, why=why)
            else:
                _log.info("Slurm job {job} cancelled", job=job_id)

        d.addCallbacks(answered, lambda f: _log.warn("scancel {job} failed: {why}", job=job_id,
                                                       why=printable(f.getErrorMessage())))
        return d

    def own_jobs(self):
        """The ids and comments of every live job with this gateway's name: a Deferred of
        C{{job id: comment}} (failing if squeue fails)."""
        d = self.run(["squeue", "-h", "--me", f"--name={self.name}", "-t", "PENDING,RUNNING,SUSPENDED,CONFIGURING",
                      "-O", "JobID:|,Comment:"])

        def answered(result):
            out, err, code = result
            if code != 0:
                raise RuntimeError(printable(err.decode("utf-8", "replace").strip() or f"exit {code}"))
            jobs = {}
            for line in out.decode("utf-8", "replace").splitlines():
                job_id, _, comment = line.strip().partition("|")
                if job_id:
                    jobs[job_id] = comment.rstrip("|").strip()
            return jobs

        return d.addCallback(answered)

    def stop(self):
        self.queue.stop()
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        self._files.clear()
        if self._looking.running:
            self._looking.stop()


def startup(site, services, adopted=()):
    """At start: check that Slurm's commands are there and answer (one line naming each
    service if not), and cancel every job of this gateway's name that no session adopted
    (C{adopted}: job ids): what a previous run left, however it ended. A Deferred (never failing)."""
    names = ", ".join(repr(s.name) for s in services)
    path = command_env()["PATH"]
    missing = [p for p in ("sbatch", "squeue", "scancel") if shutil.which(p, path=path) is None]
    if missing:
        _log.warn("Slurm service(s) {names}: {programs} not found on PATH ({path}): their sessions "
                   "cannot start", names=names, programs=", ".join(missing), path=path)
        return defer.succeed(None)

    def checked(result):
        out, err, code = result
        if code != 0:
            _log.warn("Slurm service(s) {names}: sinfo failed (exit {code}): {why}; their sessions "
                      "wait for Slurm", names=names, code=code,
                      why=printable(err.decode("utf-8", "replace").strip(), limit=300))

    def cancel_left(jobs):
        kept = {str(j) for j in adopted}
        left = sorted(set(jobs) - kept, key=lambda j: (len(j), j))
        # What no stop will remove now: the files of every job of ours but those taken back
        # (reports hold a password and a secret), of jobs ended meanwhile too.
        for directory in site.directories():
            _sweep_files(site, directory, kept)
        if left:
            _log.info("cancelling {count} Slurm job(s) a previous run left: {jobs}", count=len(left),
                      jobs=", ".join(left))
            return defer.DeferredList([site.cancel(job) for job in left])

    site.hold()  # a job submitted meanwhile would be taken for one the previous run left
    d = site.run(["sinfo", "-h", "-o", "%P"]).addCallback(checked)
    d.addCallback(lambda _: site.own_jobs()).addCallback(cancel_left)
    d.addErrback(lambda f: _log.warn("Slurm service(s) {names}: cannot list this gateway's jobs: {why}",
                                     names=names, why=printable(f.getErrorMessage())))
    return d.addBoth(lambda _: site.release())


def _sweep_files(site, directory, kept):
    """Remove the site's job files in C{directory} (C{<name>-<id>.out}, and the reports
    C{<id>.json} whose job ran its output there) but those of the jobs C{kept}."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    prefix = site.name + "-"
    for job in {n[len(prefix):-4] for n in names if n.startswith(prefix) and n.endswith(".out")} - kept:
        site.remove_files(job, [directory])
