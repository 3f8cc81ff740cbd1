"""One instance of a Slurm service: its batch job, from its submission to its end (issue 16).

A L{Job} is what L{nexusws.sessions.slurm.SlurmService} runs for an instance:

  1. C{sbatch --parsable} with the script's arguments and nexusws's own after them
     (a job name that names the gateway by a digest, a comment that names the
     service, index and reservation by digests, never a token; C{--export=NONE}),
     the job script (L{nexusws.sessions.slurmjob} and its parameters: the programs,
     the user, a per-job secret) on its stdin. A refusal fails the start with
     sbatch's message. Nothing is submitted while the site holds (its start-up).
  2. While the job waits, each change of its pending reason (and expected start)
     is a C{progress} event with C{"queue": {"state", "reason", "expected_start"}}.
  3. Once the job's connection file appears and passes
     L{nexusws.sessions.slurmsite.read_connection_file}, its host and port are the
     start's address (its VNC password, if any, the session's credentials).
     A job that ends first fails the start with its state and the last line of its
     output; one that runs C{--start_timeout} seconds without reporting, or waits
     longer than C{queue_timeout} in the queue, is cancelled.
  4. A job that ends while its session runs ends the session: the service's
     C{on_ended(service, index, why)} (the registry closes its WebSocket with 1011
     and C{why}). After its connection closed (L{Job.lost}), Slurm is asked at once.
  5. L{Job.stop} cancels the job (C{scancel}) and waits until Slurm says it has
     ended (L{STOP_WAIT} at most), then removes its files.

Slurm's state comes from the site's one C{squeue} a poll
(L{nexusws.sessions.slurmqueue}); an outage of squeue ends nothing.
"""

import json
import os
import secrets
import time

from twisted.internet import defer, task
from twisted.python.failure import Failure

from nexusws.logs import describe, logger, printable
from nexusws.sessions import slurmjob
from nexusws.sessions.backend import CRASHED, FAILED, StartFailure
from nexusws.sessions.slurmqueue import ENDED, REASONS, REQUEUED, exit_status, exit_text, expected_start, seconds_of
from nexusws.sessions.slurmreport import ReportError, read_connection_file
from nexusws.sessions.slurmscript import job_parameters, own_option
from nexusws.sessions.slurmsite import digest

_log = logger("nexusws.slurm")

#: Seconds L{Job.stop} waits for Slurm to say a cancelled job has ended.
STOP_WAIT = 30.0

#: Seconds a session whose connection closed waits for Slurm to say whether its job ended.
LOST_WAIT = 5.0

with open(slurmjob.__file__, encoding="utf-8") as _f:
    JOB_SOURCE = _f.read()


class Job:
    """One instance's job, from its submission to its end (see the module docstring)."""

    id = address = password = slurm_state = node = reason = ends_at = time_limit = None
    _foreign = None  # (inode, mtime) of a report that is not this job's: not read again

    def __init__(self, service, index):
        self.service, self.index, self.site = service, index, service.site
        self.secret = secrets.token_urlsafe(24)
        self.state = "starting"
        self.started = defer.Deferred(lambda _: self._start_cancelled())
        self._stopped, self._stop_waiters, self._ended_seen = False, [], False
        self._timer, self._shown, self._stop_timer = None, None, None
        self._submitting, self._answered = None, False  # sbatch's run, and whether it has answered

    def describe(self):
        state = self.state if self.state in ("starting", "running", "stopping") else None
        return {"backend": "slurm", "state": state, "job": self.id, "slurm_state": self.slurm_state,
                "node": self.node, "reason": self.reason,
                "address": None if self.address is None else f"{self.address[0]}:{self.address[1]}"}

    # --- start ------------------------------------------------------------------------

    def start(self, options):
        service = self.service
        try:
            spec = service.script.job(self.index, dict(options))
            arguments = service.script.sbatch_arguments(self.index, dict(options))
            params = job_parameters(spec, options, self.secret, self.service.common_options.get("host"),
                                    self.service.connection_dir)
        except ValueError as e:
            self._fail(FAILED, str(e) or type(e).__name__)
            return self.started
        except Exception as e:  # the script's bug: one line
            self._fail(CRASHED, describe(e))
            return self.started
        if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
            self._fail(CRASHED, "sbatch_arguments() did not give a list of strings")
            return self.started
        taken = next((own_option(a) for a in arguments if own_option(a)), None)
        if taken is not None:
            self._fail(CRASHED, f"sbatch_arguments() gave {taken}, which is nexusws's own")
            return self.started
        where = service.connection_dir
        self.comment = f"nexusws {service.digest}:{self.index}:{digest(options.get('token', ''))}"
        # --no-requeue: a session's job that fails or loses its node ends (NODE_FAIL), never runs again.
        argv = ["sbatch", *arguments, "--parsable", "--no-requeue", f"--job-name={self.site.name}",
                f"--comment={self.comment}",
                "--export=NONE", f"--output={os.path.join(where, self.site.name)}-%j.out", f"--chdir={where}"]
        script = f"#!{service.python}\n{JOB_SOURCE}\nmain(json.loads({json.dumps(params)!r}))\n"
        service.progress(self.index, "submitting the job to Slurm")
        d = self.site.when_ready()  # the jobs a previous run left are cancelled first
        d.addCallback(lambda _: None if self._stopped else self.site.run(argv, script.encode()))
        d.addCallbacks(self._submitted, self._not_submitted)
        d.addErrback(lambda f: _log.failure("handling sbatch's answer failed", f))
        self._submitting = d
        return self.started

    def _submitted(self, result):
        self._answered = True
        if result is None:  # stopped before it was submitted: nothing to cancel
            return
        out, err, code = result
        text = lambda data: printable(data.decode("utf-8", "replace").strip(), limit=500)
        job_id = text(out).split(";")[0]
        if code != 0 or not job_id.isdigit():
            said = [line.strip().removeprefix("sbatch: error: ") for line in
                    err.decode("utf-8", "replace").splitlines() if line.strip()]
            why = printable("; ".join(said), limit=500) or text(out) or f"exit {code}"
            self._fail(FAILED, f"sbatch refused the job: {why}", exit_status=code if code else None)
            self.site.find_lost(self.comment)  # a lost answer (a timeout) may still have made a job
            return
        self.id = job_id
        _log.info("{service}[{index}]: Slurm job {job} submitted", service=self.service.name, index=self.index,
                  job=job_id)
        if self._stopped:  # stopped while sbatch ran: the stop cancels it
            return
        self.service.progress(self.index, f"Slurm job {job_id} submitted")
        self.site.queue.watch(job_id, self._queue_changed)
        self.site.watch_file(self.service.connection_dir, job_id, self._reported)
        if self.service.queue_timeout > 0:
            self._set_timer(self.service.queue_timeout, f"did not start within queue_timeout "
                                                        f"({self.service.queue_timeout:g} s)")

    def _not_submitted(self, failure):
        self._answered = True
        self._fail(FAILED, f"cannot run sbatch: {printable(failure.getErrorMessage())}")

    def _queue_changed(self, job):
        if job is None:
            self.slurm_state = "GONE"
            self._job_ended("is no longer known to Slurm", None)
            return
        self.slurm_state, self.node = job.state, job.node or self.node
        self.time_limit = seconds_of(job.time_limit)
        self.reason = job.reason if job.state == "PENDING" else None
        if job.state in REQUEUED and self.state == "running" and not self._stopped:
            # Requeued (by an administrator: nexusws asks for --no-requeue): its session is gone.
            self.state = "ended"
            why = f"Slurm job {self.id} was requeued"
            _log.info("{service}[{index}]: {why}", service=self.service.name, index=self.index, why=why)
            if self.service.on_ended is not None:
                self.service.on_ended(self.service, self.index, why)
        elif job.state in REQUEUED:
            if self._shown == "RUNNING":  # back in the queue before it reported: wait again
                self._cancel_timer()
                self._shown = None
            self._pending(job)
        elif job.state == "RUNNING":
            left = seconds_of(job.time_left)
            self.ends_at = None if left is None else self.service.reactor.seconds() + left
            if self.state == "starting" and self._shown != "RUNNING":
                self._shown = "RUNNING"
                self.service.progress(self.index, f"Slurm job {self.id} is running on {job.node}",
                                      queue={"state": "RUNNING", "node": job.node})
                self._set_timer(self.service.start_timeout,
                                f"did not report where it listens within {self.service.start_timeout:g} s of its start")
        elif job.state in ENDED and job.state != "COMPLETING":
            how = job.state.lower().replace("_", " ")
            self._job_ended(how + (f" ({job.reason})" if job.reason else ""), job.exit_status)

    def _pending(self, job):
        reason = job.reason or "None"
        start = expected_start(job.start)
        shown = (reason, start)
        if self.state != "starting" or shown == self._shown:
            return
        self._shown = shown
        words = REASONS.get(reason)
        if reason == "None":  # no reason yet: the scheduler has not looked at it
            text = f"waiting in Slurm's queue ({words})"
        else:
            text = f"waiting in Slurm's queue: {reason}" + (f" ({words})" if words else "")
        if start is not None:
            text += f", expected to start at {time.strftime('%H:%M', time.localtime(start))}"
        self.service.progress(self.index, text, queue={
            "state": "PENDING", "reason": reason,
            "expected_start": None if start is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))})

    def _reported(self, path):
        try:
            seen = os.stat(path, follow_symlinks=False)
            seen = (seen.st_ino, seen.st_mtime_ns)
            if seen == self._foreign:  # the stale report again: the job's own replaces it
                raise FileNotFoundError(path)
            report = read_connection_file(path, self.id, self.secret)
        except FileNotFoundError:
            self.site.watch_file(self.service.connection_dir, self.id, self._reported)
            return
        except ReportError as e:
            if e.foreign:  # a stale report (an earlier job of that id, a forgery): the job's own awaited
                _log.warn("{service}[{index}]: {why}; waiting for the job's own", service=self.service.name,
                          index=self.index, why=str(e))
                self._foreign = seen
                self.site.watch_file(self.service.connection_dir, self.id, self._reported)
                return
            last = self._last_output(own=False)  # the program's last words, if it said any
            self._fail(FAILED, f"Slurm job {self.id}: {e}" + (f": {last}" if last else ""))
            return
        except OSError as e:
            self._fail(FAILED, f"Slurm job {self.id}: {e}")
            return
        _remove(path)  # its secret and password are kept in memory (and the state file) alone
        if self.state != "starting" or self.started.called:
            return
        self._cancel_timer()
        if self.ends_at is None and self.time_limit is not None:  # started between two polls
            self.ends_at = self.service.reactor.seconds() + self.time_limit
        self.address, self.password = (report["host"], report["port"]), report["password"]
        self.state = "running"
        _log.info("{service}[{index}]: Slurm job {job} listens at {host}:{port}", service=self.service.name,
                  index=self.index, job=self.id, host=report["host"], port=report["port"])
        self.started.callback(self.address)

    def _job_ended(self, how, status):
        if self._ended_seen:
            return
        self._ended_seen = True
        self._cancel_timer()
        self.site.queue.unwatch(self.id)
        self.site.unwatch_file(self.id)
        self._finish_stop()
        exit_words = exit_text(status) if status not in (None, "0") else None
        if self.state == "starting" and not self.started.called:
            last = self._last_output()
            why = f"Slurm job {self.id} {how} before it reported where it listens" + (
                f" ({exit_words})" if exit_words else "") + (f": {last}" if last else "")
            self._fail(FAILED, why, exit_status=exit_status(status))
        elif self.state == "running" and not self._stopped:
            self.state = "ended"
            why = f"Slurm job {self.id} {how}" + (f", {exit_words}" if exit_words else "")
            _log.info("{service}[{index}]: {why}", service=self.service.name, index=self.index, why=why)
            if self.service.on_ended is not None:
                self.service.on_ended(self.service, self.index, why)

    def _last_output(self, own=True):
        """The last line of the job's output (without the job script's own lines unless C{own})."""
        path = os.path.join(self.service.connection_dir, f"{self.site.name}-{self.id}.out")
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
        except OSError:
            return None
        lines = [line for line in lines if line and (own or not line.startswith("nexusws job: "))]
        return printable(lines[-1], limit=300) if lines else None

    def _fail(self, what, why, exit_status=None):
        self._cancel_timer()
        if not self.started.called:
            self.state = "failed"
            self.started.errback(Failure(StartFailure(self.service.name, self.index, what, why,
                                                      exit_status=exit_status)))

    def _start_cancelled(self):
        self._cancel_timer()
        self.state = "failed"

    def _set_timer(self, seconds, why):
        self._cancel_timer()
        self._timer = self.service.reactor.callLater(seconds, lambda: self._fail(
            FAILED, f"Slurm job {self.id} {why}; it is cancelled"))

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def lost(self):
        if self.id is None or self._ended_seen or self._stopped or self.state == "ended":
            return None  # nothing to find out: no job, or its end is known (a requeue too)
        return defer.ensureDeferred(self._ask_after_loss())

    async def _ask_after_loss(self):
        # Right after its program ended, Slurm may still say RUNNING for a second or two.
        reactor = self.service.reactor
        deadline = reactor.seconds() + LOST_WAIT
        while not self._ended_seen and not self._stopped and reactor.seconds() < deadline:
            await self.site.queue.poll_now()
            if not self._ended_seen:
                await task.deferLater(reactor, min(self.site.queue.interval, 0.5), lambda: None)

    # --- stop -------------------------------------------------------------------------

    def stop(self):
        """Cancel the job and wait (L{STOP_WAIT} at most) until Slurm says it has ended."""
        done = defer.Deferred()
        self._stop_waiters.append(done)
        if self._stopped:
            return done
        self._stopped = True
        self.state = "stopping"
        if not self.started.called:
            self.started.cancel()
        self._stop_timer = self.service.reactor.callLater(STOP_WAIT, self._stop_overdue)
        if self.id is None and self._submitting is not None and not self._answered:
            # sbatch has not answered: its answer decides (an id that comes after STOP_WAIT is cancelled too)
            self._submitting.addBoth(lambda _: self._cancel_job())
        else:
            self._cancel_job()
        return done

    def _cancel_job(self):
        if self.id is None or self._ended_seen:
            self._finish_stop()
            return
        self.site.queue.watch(self.id, self._queue_changed)  # watched again if it was not yet
        self.site.cancel(self.id)

    def _stop_overdue(self):
        self._stop_timer = None
        what = f"Slurm job {self.id} has not ended" if self.id is not None else "sbatch has not answered"
        _log.warn("{service}[{index}]: {what} {wait:g} s after the stop", service=self.service.name,
                  index=self.index, what=what, wait=STOP_WAIT)
        if self.id is not None:
            self._ended_seen = True
        self._finish_stop()

    def _finish_stop(self):
        if not self._stopped:
            return
        timer, self._stop_timer = self._stop_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self.id is not None:
            self.site.queue.unwatch(self.id)
            self.site.unwatch_file(self.id)
            self.site.remove_files(self.id, [self.service.connection_dir])
        self.state = "stopped"
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        _log.warn("cannot remove {path}: {why}", path=path, why=e.strerror)
