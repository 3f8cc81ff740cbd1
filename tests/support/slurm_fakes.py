"""A scripted Slurm for the Slurm backend's in-memory tests (no real Slurm): sbatch, squeue,
scancel and sinfo answered by L{FakeSlurm} as C{run(argv, input=None)}, and L{World}, one
L{SlurmService} on a Clock with its site, its connection directory and recorders."""

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock

from nexusws.sessions.slurm import SlurmService
from nexusws.sessions.slurmscript import SlurmScript
from nexusws.sessions.slurmsite import FILE_POLL, SlurmSite

NAME = "nexusws-test"
TOKEN = "tok-9f8e7d6c5b4a"


class Desktop(SlurmScript):
    """A job that runs one VNC server with a one-time password."""

    def job(self, index, options):
        return {"programs": [["/opt/vnc/bin/Xvnc", "-rfbport", "{port}"]], "password": True}


def answered(answer):
    """A Deferred of C{answer}: (out, err, code) as it is, an exception failed, a Deferred itself."""
    if isinstance(answer, defer.Deferred):
        return answer
    if isinstance(answer, Exception):
        return defer.fail(answer)
    return defer.succeed(answer)


class FakeSlurm:
    """C{run(argv, input=None)}: each call is recorded in C{calls}; C{sbatch} pops C{submits}
    (else gives the next id from 101, then PENDING), C{squeue -t all} shows C{jobs}, the others their
    C{answers} entry ("scancel", "sinfo", "own": C{own_jobs}'s squeue)."""

    def __init__(self):
        self.calls, self.jobs, self.submits, self.next_id = [], {}, [], 101
        self.answers = {"scancel": (b"", b"", 0), "sinfo": (b"debug\n", b"", 0), "own": (b"", b"", 0)}

    def __call__(self, argv, input=None):
        self.calls.append((list(argv), input))
        if argv[0] == "sbatch":
            if self.submits:
                return answered(self.submits.pop(0))
            self.next_id += 1
            self.show(self.next_id - 1)  # Slurm knows a job once sbatch has answered
            return answered((f"{self.next_id - 1}\n".encode(), b"", 0))
        if argv[0] == "squeue" and "all" in argv:
            return answered(("".join(self.jobs.values()).encode(), b"", 0))
        return answered(self.answers["own" if argv[0] == "squeue" else argv[0]])

    def show(self, job_id, state="PENDING", reason="Resources", node="", start="N/A", limit="1:00:00",
             left="1:00:00", status="0"):
        """What squeue says of C{job_id} from now on (its L{nexusws.sessions.slurmqueue.FORMAT})."""
        self.jobs[str(job_id)] = f"{job_id}|{state}|{reason}|{node}|{start}|{limit}|{left}|{status}|\n"

    def argvs(self, program):
        return [argv for argv, _ in self.calls if argv[0] == program]


class World:
    """One Slurm service (count 2) on a Clock, its site on a L{FakeSlurm}, its jobs' files in
    C{tmp_path}/jobs (0700); C{progress} and C{ended} record its on_progress and on_ended."""

    def __init__(self, tmp_path, script=Desktop, **options):
        self.clock, self.slurm = Clock(), FakeSlurm()
        self.dir = tmp_path / "jobs"
        self.dir.mkdir(mode=0o700, parents=True)
        self.site = SlurmSite(self.clock, NAME, run=self.slurm, interval=1.0)
        self.service = SlurmService("desktop", script, 2, {"sbatch": ["--partition=gpu"], **options}, self.clock,
                                    self.site, connection_dir=str(self.dir))
        self.progress, self.ended = [], []
        self.service.on_progress = lambda service, index, text, **fields: self.progress.append((index, text, fields))
        self.service.on_ended = lambda service, index, why: self.ended.append((service, index, why))

    def start(self, index=0, **options):
        return self.service.start(index, {"token": TOKEN, "user": "alice", **options})

    def job(self, index=0):
        return self.service._jobs[index]

    def write(self, name, content, mode=0o600):
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        os.chmod(path, mode)
        return path

    def report(self, index=0, **fields):
        """Job C{index}'s connection file, as its job writes it (C{fields} change it); then the file poll."""
        job = self.job(index)
        content = {"job": job.id, "secret": job.secret, "host": "node1", "port": 5901, "password": "pw-1", **fields}
        self.write(f"{job.id}.json", json.dumps(content))
        self.clock.advance(FILE_POLL)

    def output(self, job_id, text):
        return self.write(f"{NAME}-{job_id}.out", text)

    def running(self, index=0, **show):
        """Start instance C{index} until its job reported: the start's Deferred (fired)."""
        d = self.start(index)
        job_id = self.job(index).id
        self.slurm.show(job_id, **{"state": "RUNNING", "reason": "None", "node": "node1", **show})
        self.clock.advance(0)
        self.report(index)
        return d
