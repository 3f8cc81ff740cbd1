"""A real one-node Slurm for the tests (issue 16): started once per test session, stopped after.

C{slurm_cluster} (a session fixture, registered in conftest) runs tests/slurm/up.sh
(munge, slurmctld and slurmd as root, without systemd; the packages come from
.ci/run) and, at the end of the session, tests/slurm/down.sh (every job cancelled,
the daemons and munge stopped). It needs root and Debian's slurmctld, slurmd,
slurm-client and munge: missing, a test skips loudly, in CI it fails. Each test
that uses it checks that it left no job behind (L{Slurm.jobs}).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "slurm"
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged")
NEEDS = "a one-node Slurm: root and Debian's slurmctld slurmd slurm-client munge (apt-get install)"


class Slurm:
    """The running test cluster: its commands, run with a clean environment."""

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    def run(self, *argv, check=True, timeout=30, env=None):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})})
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def submit(self, *args, env=None):
        """sbatch --parsable --export=NONE with C{args}, C{env} added to sbatch's own
        environment (which --export=NONE keeps from the job): the job id."""
        return self.run("sbatch", "--parsable", "--export=NONE", *args, env=env).strip().split(";")[0]

    def jobs(self, states="all"):
        """{job id: (name, state, reason)} of every job Slurm still knows."""
        out = self.run("squeue", "-h", "-t", states, "-o", "%i|%j|%T|%r")
        return {i: (name, state, reason) for i, name, state, reason in
                (line.split("|", 3) for line in out.splitlines() if line)}

    def live_jobs(self):
        """The jobs not yet ended: pending, running, completing."""
        return {i: j for i, j in self.jobs().items() if j[1] in ("PENDING", "RUNNING", "COMPLETING",
                                                                   "CONFIGURING", "SUSPENDED")}


def available():
    return os.geteuid() == 0 and all(shutil.which(p, path=Slurm.env["PATH"]) for p in PROGRAMS)


def start():
    """Run up.sh; its failure is the test's, with its output."""
    done = subprocess.run(["bash", str(SCRIPTS / "up.sh")], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"starting the test Slurm failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return Slurm()


def stop():
    subprocess.run(["bash", str(SCRIPTS / "down.sh")], capture_output=True, timeout=120)
