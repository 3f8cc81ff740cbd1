"""A real one-node Slurm for the tests (issue 16): started once per test session, stopped after.

C{slurm_cluster} (a session fixture, registered in conftest) runs tests/slurm/up.sh
(munge, slurmctld and slurmd as root, without systemd; the packages come from
.ci/run) and, at the end of the session, tests/slurm/down.sh (every job cancelled,
the daemons and munge stopped). It needs root and Debian's slurmctld, slurmd,
slurm-client and munge: missing, a test skips loudly, in CI it fails. Each test
that uses it checks that it left no job behind (L{Slurm.jobs}).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "slurm"
ROOT = Path(__file__).resolve().parent.parent.parent
SESSIONS = ROOT / "tests" / "sessions"
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

    def cancel(self, job, timeout=30.0):
        """scancel C{job} and wait until Slurm no longer counts it live (COMPLETING is)."""
        import time

        self.run("scancel", job, check=False)
        deadline = time.monotonic() + timeout
        while job in self.live_jobs():
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} still live {timeout:g} s after scancel")
            time.sleep(0.1)

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


# --- gateways with Slurm services -------------------------------------------------


def jobs_dir(tmp_path):
    where = tmp_path / "jobs"
    where.mkdir(mode=0o700, exist_ok=True)
    return where


def desktop_config(tmp_path, **options):
    """The shipped config/slurm_sessions.json, its jobs' files in tmp_path, x11vnc on loopback."""
    config = json.loads((ROOT / "config" / "slurm_sessions.json").read_text())
    service = config["Cluster Desktop"]
    service["script"] = str(ROOT / "config" / "scripts" / service["script"].removeprefix("scripts/"))
    service["options"].update(connection_dir=str(jobs_dir(tmp_path)), host="127.0.0.1", poll_interval=0.5,
                              **options)
    path = tmp_path / "slurm_sessions.json"
    path.write_text(json.dumps(config))
    return path


def program_config(tmp_path, programs, count=2, **options):
    config = {"job": {"script": str(SESSIONS / "slurm_program.py"), "count": count, "options": dict(
        programs=programs, connection_dir=str(jobs_dir(tmp_path)), host="127.0.0.1", poll_interval=0.5,
        **options)}}
    path = tmp_path / "slurm_program.json"
    path.write_text(json.dumps(config))
    return path


def our_jobs(slurm, tmp_path):
    """{job id: (name, state, reason)} of the live jobs of the gateway on tmp_path's state file."""
    from nexusws.sessions.slurmsite import job_name
    from support.sessions import state_path

    name = job_name(str(state_path(tmp_path)))
    return {i: j for i, j in slurm.live_jobs().items() if j[0] == name}
