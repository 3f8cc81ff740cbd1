"""nexusws.sessions.slurmqueue (issue 16, item 4): one squeue per poll for all of a gateway's
jobs, with backoff while nothing changes, outages logged once; in memory on a Clock with a
scripted squeue, then against the suite's real one-node Slurm (tests/slurm/up.sh)."""

import subprocess
import uuid

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from nexusws.sessions.slurmqueue import ENV, FORMAT, Job, SlurmQueue, command_env, parse


class Squeue:
    """A scripted squeue: C{answers} is what each call gives (text, or an exit code and error)."""

    def __init__(self, *answers):
        self.answers, self.argvs = list(answers), []

    def __call__(self, argv):
        self.argvs.append(argv)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if isinstance(answer, tuple):
            return defer.succeed((b"", answer[1].encode(), answer[0]))
        return defer.succeed((answer.encode(), b"", 0))


def line(job_id, state="PENDING", reason="Resources", node="", start="N/A", limit="1:00:00", left="1:00:00",
         status="0"):
    return f"{job_id}|{state}|{reason}|{node}|{start}|{limit}|{left}|{status}|\n"


def watching(queue, *job_ids):
    seen = {job_id: [] for job_id in job_ids}
    for job_id in job_ids:
        queue.watch(job_id, seen[job_id].append)
    return seen


def test_one_squeue_a_poll_for_every_watched_job_and_its_command_line():
    clock, squeue = Clock(), Squeue("".join(line(i) for i in range(100, 200)))
    queue = SlurmQueue(clock, "nexusws-1a2b3c4d", run=squeue, interval=2.0, max_interval=30.0)
    seen = watching(queue, *[str(i) for i in range(100, 200)])
    clock.advance(0)
    assert queue.calls == 1 and all(len(states) == 1 for states in seen.values())
    assert squeue.argvs[0] == ["squeue", "-h", "--me", "-t", "all", "--name=nexusws-1a2b3c4d", "-O", FORMAT]
    assert seen["150"] == [Job("150", "PENDING", "Resources", None, None, "1:00:00", "1:00:00", "0")]


def test_the_pause_doubles_while_nothing_changes_and_is_short_again_after_a_change():
    clock = Clock()
    squeue = Squeue(*[line(7)] * 6, line(7, "RUNNING", "None", "node1", "2026-12-05T20:00:00"), line(7, "RUNNING",
                                                                                                     "None", "node1",
                                                                                                     "2026-12-05T20:00:00"))
    queue = SlurmQueue(clock, "gw", run=squeue, interval=1.0, max_interval=8.0)
    seen = watching(queue, "7")
    times = []
    for _ in range(8):
        clock.advance(0)
        times.append(clock.seconds())
        clock.advance(queue._call.getTime() - clock.seconds() if queue._call else 0)
    assert [round(b - a) for a, b in zip(times, times[1:], strict=False)][:6] == [1, 2, 4, 8, 8, 8]
    assert [job.state for job in seen["7"]] == ["PENDING", "RUNNING"]


def test_a_job_slurm_no_longer_knows_is_reported_gone_once_and_no_longer_watched():
    clock, squeue = Clock(), Squeue(line(5, "COMPLETED", "None"), "")
    queue = SlurmQueue(clock, "gw", run=squeue, interval=1.0)
    seen = watching(queue, "5")
    clock.pump([0, 1, 2, 4])
    assert [None if j is None else j.state for j in seen["5"]] == ["COMPLETED", None]
    assert queue._watchers == {} and queue._call is None, "nobody watches: no more polls"
    calls = queue.calls
    clock.advance(100)
    assert queue.calls == calls


def test_an_outage_is_one_warning_and_one_line_and_no_job_is_taken_for_gone(events):
    clock = Clock()
    squeue = Squeue(line(9), (1, "slurm_load_jobs error: Unable to contact slurm controller"),
                    (1, "slurm_load_jobs error: Unable to contact slurm controller"), OSError("No such file"),
                    line(9, "RUNNING", "None", "n1"))
    queue = SlurmQueue(clock, "gw", run=squeue, interval=1.0, max_interval=4.0)
    seen = watching(queue, "9")
    clock.pump([0, 1, 2, 4, 4])
    assert [j.state for j in seen["9"]] == ["PENDING", "RUNNING"]
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "nexusws.slurm"]
    assert lines == [
        "squeue failed: exit 1: slurm_load_jobs error: Unable to contact slurm controller; asking again, "
        "jobs are not taken for gone meanwhile",
        "squeue answers again (it failed: No such file)",
    ]


def test_a_poll_never_overlaps_another():
    clock, calls = Clock(), []

    def run(argv):
        calls.append(defer.Deferred())
        return calls[-1]

    queue = SlurmQueue(clock, "gw", run=run, interval=1.0)
    watching(queue, "1")
    clock.advance(0)
    queue.watch("2", lambda job: None)
    clock.advance(10)
    assert len(calls) == 1, "none while one is in flight"
    calls[0].callback((line(1).encode(), b"", 0))
    clock.advance(0)
    assert len(calls) == 2, "a job watched meanwhile: the next poll at once"


@pytest.mark.errors_expected
def test_a_failing_watcher_is_logged_and_the_others_still_hear(events):
    clock, squeue = Clock(), Squeue(line(1) + line(2))
    queue = SlurmQueue(clock, "gw", run=squeue)
    heard = []
    queue.watch("1", lambda job: 1 / 0)
    queue.watch("2", heard.append)
    clock.advance(0)
    assert len(heard) == 1
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1 and "a watcher of Slurm job 1 failed" in formatEvent(failures[0])


def test_parse_reads_squeues_none_values_and_skips_other_lines():
    jobs = parse("12|PENDING|Priority||N/A|UNLIMITED|UNLIMITED|0|\ngarbage\n\n13|RUNNING|None|localhost|"
                 "2026-12-05T20:51:07|2:00|1:57|0|\n14|FAILED|NonZeroExitCode|n1|N/A|1:00|0:00|768|")
    assert jobs == {"12": Job("12", "PENDING", "Priority", None, None, "UNLIMITED", "UNLIMITED", "0"),
                    "13": Job("13", "RUNNING", None, "localhost", "2026-12-05T20:51:07", "2:00", "1:57", "0"),
                    "14": Job("14", "FAILED", "NonZeroExitCode", "n1", None, "1:00", "0:00", "768")}


def test_slurm_commands_run_with_the_gateways_path_and_slurm_conf_and_nothing_else_of_its_environment():
    assert set(ENV) == {"PATH", "LANG"}
    env = command_env({"PATH": "/opt/slurm/bin:/usr/bin", "SLURM_CONF": "/opt/slurm/etc/slurm.conf",
                       "NEXUSWS_SECURITY_TOKEN": "secret", "HOME": "/root"})
    assert env == {"PATH": "/opt/slurm/bin:/usr/bin", "LANG": "C.UTF-8", "SLURM_CONF": "/opt/slurm/etc/slurm.conf"}


# --- against the real Slurm ------------------------------------------------------------


def test_a_hundred_pending_jobs_are_one_squeue_a_poll_against_a_real_slurm(slurm):
    """Issue 16's polling cost: held jobs stay PENDING (reason JobHeldUser); every poll asks
    once for all of them, whatever their number."""
    name = f"nexusws-test-{uuid.uuid4().hex[:8]}"
    ids = [slurm.submit("--hold", "--job-name", name, "--output", "/dev/null", "--wrap", "true")
           for _ in range(100)]

    def real_squeue(argv):
        done = subprocess.run(argv, capture_output=True, env=ENV, timeout=30)
        return defer.succeed((done.stdout, done.stderr, done.returncode))

    try:
        clock = Clock()
        queue = SlurmQueue(clock, name, run=real_squeue, interval=2.0)
        seen = watching(queue, *ids)
        clock.pump([0, 2, 4])
        assert queue.calls == 3
        assert all(states and states[-1].state == "PENDING" for states in seen.values())
        assert {states[-1].reason for states in seen.values()} == {"JobHeldUser"}
        slurm.run("scancel", f"--name={name}")
        clock.pump([8, 2])
        assert {states[-1].state for states in seen.values()} == {"CANCELLED"}
    finally:
        slurm.run("scancel", f"--name={name}", check=False)


def test_a_job_watched_while_a_poll_is_in_flight_is_not_taken_for_gone_by_that_polls_answer():
    """sbatch answered while squeue ran: that squeue's answer cannot list the new job."""
    clock, calls = Clock(), []

    def run(argv):
        calls.append(defer.Deferred())
        return calls[-1]

    queue = SlurmQueue(clock, "gw", run=run, interval=1.0)
    seen = watching(queue, "1")
    clock.advance(0)
    queue.watch("2", seen.setdefault("2", []).append)  # submitted now, after squeue ran
    calls[0].callback((line(1).encode(), b"", 0))  # lists job 1 only
    assert seen["2"] == [], "not gone: that answer predates it"
    clock.advance(0)
    calls[1].callback((line(1).encode() + line(2).encode(), b"", 0))
    assert [job.state for job in seen["2"]] == ["PENDING"]
