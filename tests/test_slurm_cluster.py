"""The test suite's own one-node Slurm (tests/slurm/up.sh, support/slurm.py): the cluster the
Slurm backend's tests (issue 16) run against is real and ends what it runs."""

import os
import subprocess
import uuid

from support.waiting import wait_until


def marked(marker):
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()


def test_a_job_runs_on_the_node_and_scancel_ends_it_and_what_it_daemonized(slurm, tmp_path):
    marker = f"nexusws-slurm-{uuid.uuid4().hex}"
    out = tmp_path / "job.out"
    job = slurm.submit("--job-name", marker, "--output", str(out), "--wrap",
                       f"setsid -f sh -c 'sleep 300; : {marker}-daemon'; sh -c 'sleep 300; : {marker}'")
    wait_until(lambda: slurm.jobs().get(job, (None, None))[1] == "RUNNING", timeout=30, what="the job runs")
    wait_until(lambda: len(marked(marker)) >= 2, timeout=10, what="the job and its daemon run")
    assert slurm.jobs()[job][0] == marker
    slurm.run("scancel", job)
    wait_until(lambda: not slurm.live_jobs(), timeout=30, what="the job ends")
    if os.path.isdir("/sys/fs/cgroup/freezer"):  # proctrack/cgroup: what it daemonized too
        wait_until(lambda: not marked(marker), timeout=10, what="its processes end")
    else:
        for pid in marked(marker):
            os.kill(int(pid), 9)


def test_export_none_keeps_the_submitters_environment_from_the_job(slurm, tmp_path):
    """sbatch's default (--export=ALL) copies its whole environment into the job: a gateway's
    secrets would reach every job. --export=NONE does not; the second job shows the default."""
    secret = {"NEXUSWS_TEST_SECRET": uuid.uuid4().hex}
    outputs = []
    for extra in ((), ("--export=ALL",)):
        out = tmp_path / f"env{len(outputs)}.out"
        job = slurm.submit("--output", str(out), *extra, "--wrap", "env", env=secret)
        wait_until(lambda job=job, out=out: job not in slurm.live_jobs() and out.exists() and out.read_text(),
                   timeout=30, what="the job ends")
        outputs.append(out.read_text())
    assert secret["NEXUSWS_TEST_SECRET"] not in outputs[0]
    assert secret["NEXUSWS_TEST_SECRET"] in outputs[1]
