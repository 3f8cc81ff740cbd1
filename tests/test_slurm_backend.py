"""nexusws.sessions.slurm and slurminstance (issue 16): SlurmService and its jobs in memory, on
a Clock, with a scripted sbatch/squeue/scancel (L{support.slurm_fakes}); a job "reports" by the
test writing its connection file. No real Slurm, no sleep."""

import ast
import json
import os
import time

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent

from nexusws.sessions.backend import BUSY, CRASHED, FAILED, NO_INSTANCE, IQueuedBackend, StartFailure
from nexusws.sessions.slurminstance import LOST_WAIT, STOP_WAIT
from nexusws.sessions.slurmsite import FILE_POLL, digest
from support.deferreds import failure_of, result_of
from support.slurm_fakes import NAME, TOKEN, Desktop, World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def why_of(d, what=FAILED):
    failure = failure_of(d, StartFailure)
    assert failure.value.what == what, failure.value
    return failure.value.why


def fired(d):
    """Whether C{d} has fired with a result (a stop fires with anything, never fails)."""
    result_of(d)
    return True


def warnings(events):
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


def test_the_service_provides_the_queued_backend_interface_and_bounds_a_start_by_queue_timeout(tmp_path):
    service = World(tmp_path).service
    assert IQueuedBackend.providedBy(service) and service.kind == "slurm" and service.pids(0) == []
    assert repr(service) == "<SlurmService 'desktop' count=2>" and service.address(0) is None
    assert service.start_bound(30) is None and service.start_timeout == 30
    assert World(tmp_path / "q", queue_timeout=60).service.start_bound(30) == 90


def test_sbatch_gets_the_sites_arguments_then_ours_and_the_job_script_on_stdin(world):
    world.start(1)
    [(argv, script)] = [call for call in world.slurm.calls if call[0][0] == "sbatch"]
    where = str(world.dir)
    assert argv == ["sbatch", "--partition=gpu", "--parsable", "--no-requeue", f"--job-name={NAME}",
                    f"--comment=nexusws {digest('desktop', 8)}:1:{digest(TOKEN)}", "--export=NONE",
                    f"--output={where}/{NAME}-%j.out", f"--chdir={where}"]
    text = script.decode()
    assert text.startswith("#!/usr/bin/python3\n") and TOKEN not in text and TOKEN not in " ".join(argv)
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("main(json.loads(")
    params = json.loads(ast.literal_eval(last.removeprefix("main(json.loads(").removesuffix("))")))
    assert params == {"programs": [["/opt/vnc/bin/Xvnc", "-rfbport", "{port}"]], "xvfb": None, "password": True,
                      "ready_timeout": 60.0, "host": None, "user": "alice", "secret": world.job(1).secret,
                      "connection_dir": where}
    assert [text for _, text, _ in world.progress] == ["submitting the job to Slurm", "Slurm job 101 submitted"]


def test_a_refused_sbatch_fails_the_start_with_its_error_lines_joined(world):
    world.slurm.submits.append((b"", b"sbatch: error: Batch job submission failed: Invalid partition\n"
                                     b"sbatch: error: see sinfo\n", 1))
    d = world.start()
    failure = failure_of(d, StartFailure).value
    assert (failure.what, failure.exit_status) == (FAILED, 1)
    assert failure.why == "sbatch refused the job: Batch job submission failed: Invalid partition; see sinfo"


def test_an_sbatch_that_cannot_run_fails_the_start(world):
    world.slurm.submits.append(FileNotFoundError("sbatch not found on PATH (/usr/bin)"))
    assert why_of(world.start()) == "cannot run sbatch: sbatch not found on PATH (/usr/bin)"


def test_an_sbatch_answer_that_is_no_job_id_fails_the_start_and_a_cluster_suffix_is_dropped(world):
    world.slurm.submits += [(b"Submitted batch job 7\n", b"", 0), (b"4242;cluster1\n", b"", 0)]
    assert why_of(world.start(0)) == "sbatch refused the job: Submitted batch job 7"
    world.start(1)
    assert world.job(1).id == "4242"


def test_a_scripts_value_error_fails_the_start_and_its_bug_is_one_crashed_line(tmp_path):
    class Sized(Desktop):
        def job(self, index, options):
            if options.get("size") == "huge":
                raise ValueError("no such size: huge")
            return {"programs": [["x"]], "colour": "blue"}

    world = World(tmp_path, script=Sized)
    assert why_of(world.start(0, size="huge")) == "no such size: huge"
    assert why_of(world.start(1), CRASHED) == "TypeError: job() gave an unknown key 'colour'"
    assert world.slurm.calls == []


def test_stop_after_a_start_the_script_failed_ends_at_once(tmp_path):
    class Refusing(Desktop):
        def job(self, index, options):
            raise ValueError("no GPU today")

    world = World(tmp_path, script=Refusing)
    failure_of(world.start())
    assert fired(world.service.stop(0)) and world.slurm.calls == []


def test_a_start_of_an_unknown_or_busy_instance_fails(world):
    assert failure_of(world.start(2), StartFailure).value.what == NO_INSTANCE
    world.start(0)
    assert failure_of(world.start(0), StartFailure).value.what == BUSY


@pytest.fixture
def utc_plus_one():
    """The local time zone is UTC+1 (a POSIX TZ: no zoneinfo needed)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TZ", "NXW-1")
        time.tzset()
        yield
    time.tzset()


def test_each_change_of_a_pending_reason_or_expected_start_is_one_progress_event(world, utc_plus_one):
    world.start()
    world.slurm.show(101, reason="Priority")
    world.clock.advance(0)
    world.slurm.show(101, reason="Priority", limit="2:00:00")  # a change squeue shows, not one to tell
    world.clock.advance(1)
    world.slurm.show(101, reason="Resources", start="2030-01-02T03:04:00")
    world.clock.advance(1)
    queued = [(text, fields["queue"]) for _, text, fields in world.progress if "queue" in fields]
    assert queued == [
        ("waiting in Slurm's queue: Priority (jobs of higher priority go first)",
         {"state": "PENDING", "reason": "Priority", "expected_start": None}),
        ("waiting in Slurm's queue: Resources (waiting for free resources), expected to start at 03:04",
         {"state": "PENDING", "reason": "Resources", "expected_start": "2030-01-02T02:04:00Z"})]
    assert world.service.pending() == 1 and world.job().reason == "Resources"


def test_the_start_timeout_counts_from_running_and_a_later_stop_cancels_the_job(world):
    world.service.start_bound(30)
    d = world.start()
    world.clock.advance(100)  # pending: no start timeout
    world.slurm.show(101, "RUNNING", "None", "node7")
    world.clock.advance(1)
    assert world.progress[-1] == (0, "Slurm job 101 is running on node7", {"queue": {"state": "RUNNING",
                                                                                    "node": "node7"}})
    world.clock.advance(29.5)
    assert not d.called
    world.clock.advance(1)
    assert why_of(d) == "Slurm job 101 did not report where it listens within 30 s of its start; it is cancelled"
    stopped = world.service.stop(0)
    assert world.slurm.argvs("scancel") == [["scancel", "101"]]
    world.slurm.show(101, "CANCELLED", "None", "node7")
    world.clock.advance(1)
    assert fired(stopped) and world.service._jobs == {}


def test_queue_timeout_fails_a_start_still_pending_and_not_one_that_runs_in_time(tmp_path):
    world = World(tmp_path, queue_timeout=60)
    late, in_time = world.start(0), world.start(1)
    world.clock.pump([1] * 30)  # polls at 0, 1, 3, 7, 15, 31: the pause doubles while nothing changes
    world.slurm.show(102, "RUNNING", "None", "node2")
    world.clock.pump([1] * 30)
    assert why_of(late) == "Slurm job 101 did not start within queue_timeout (60 s); it is cancelled"
    world.report(1)
    assert result_of(in_time) == ("node1", 5901)


def test_a_job_that_ends_before_it_reports_fails_with_its_exit_and_last_output_line(world):
    d = world.start()
    world.output(101, "loading\nnexusws job: Xvnc exited (status 3) before it listened\n\n")
    world.slurm.show(101, "FAILED", "NonZeroExitCode", "node1", status="768")
    world.clock.advance(0)
    failure = failure_of(d, StartFailure).value
    assert failure.exit_status == 3
    assert failure.why == ("Slurm job 101 failed (NonZeroExitCode) before it reported where it listens "
                           "(exit code 3): nexusws job: Xvnc exited (status 3) before it listened")
    stopped = world.service.stop(0)
    assert fired(stopped) and world.slurm.argvs("scancel") == [], "it has ended: no scancel"
    assert list(world.dir.iterdir()) == []


@pytest.mark.parametrize("fields", [{"secret": "not-it"}, {"job": "102"}])
def test_a_stale_or_forged_report_is_one_warning_and_the_jobs_own_still_starts_the_session(world, events, fields):
    """An earlier job's report of the same id (a Slurm state reset) or a forgery: ignored, not
    read again while unchanged; the job's own, renamed over it as its runner does, is believed."""
    d = world.start()
    world.report(**fields)
    world.clock.pump([FILE_POLL] * 10)
    assert not d.called
    [warning] = warnings(events)
    assert "is not job 101's (its job id or secret differs); waiting for the job's own" in warning
    job = world.job()
    own = world.write("partial", json.dumps({"job": job.id, "secret": job.secret, "host": "node1", "port": 5901}))
    os.replace(own, world.dir / "101.json")
    world.clock.advance(FILE_POLL)
    assert result_of(d) == ("node1", 5901)
    assert list(world.dir.iterdir()) == [], "a report read is removed: its secret lives in memory alone"


@pytest.mark.parametrize("fields, why", [
    ({"error": "Xvnc exited (status 1)"}, "Xvnc exited (status 1)"),
    ({"port": 0}, "'port' is not a port number"),
    ({"host": "node 1"}, "'host' is not a host name"),
])
def test_a_connection_file_that_cannot_be_believed_fails_the_start(world, fields, why):
    d = world.start()
    world.output(101, "nexusws job: said already\nXvnc: cannot open display\n")
    world.report(**fields)
    text = why_of(d)
    assert text.startswith("Slurm job 101: ") and why in text, text
    assert text.endswith(": Xvnc: cannot open display"), "the program's last words, not the job script's"


def test_a_start_cancelled_while_sbatch_runs_is_scancelled_once_its_id_arrives(world):
    world.slurm.submits.append(submitted := defer.Deferred())
    d = world.start()
    d.cancel()
    failure_of(d, defer.CancelledError)
    stopped = world.service.stop(0)
    assert world.slurm.argvs("scancel") == [] and not stopped.called
    submitted.callback((b"101\n", b"", 0))
    assert world.slurm.argvs("scancel") == [["scancel", "101"]]
    world.slurm.show(101, "CANCELLED", "None")
    world.clock.advance(0)
    assert fired(stopped)
    assert [text for _, text, _ in world.progress] == ["submitting the job to Slurm"]


def test_a_start_stopped_while_sbatch_runs_and_fails_cancels_nothing(world):
    world.slurm.submits.append(submitted := defer.Deferred())
    d = world.start()
    stopped = world.service.stop(0)
    failure_of(d, defer.CancelledError)
    submitted.callback((b"", b"sbatch: error: Invalid account\n", 1))
    assert fired(stopped) and world.slurm.argvs("scancel") == []


def test_a_stop_while_sbatch_hangs_ends_within_stop_wait(world):
    world.slurm.submits.append(defer.Deferred())
    failing = world.start()
    stopped = world.service.stop(0)
    failure_of(failing, defer.CancelledError)
    world.clock.advance(STOP_WAIT + 1)
    assert stopped.called


def test_a_start_stopped_while_the_site_holds_is_never_submitted(world):
    world.site.hold()
    d = world.start()
    stopped = world.service.stop(0)
    failure_of(d, defer.CancelledError)
    world.site.release()
    assert world.slurm.argvs("sbatch") == [] and stopped.called


def test_stop_cancels_once_waits_until_slurm_says_cancelled_and_removes_the_jobs_files(world):
    world.running()
    world.output(101, "nexusws job: listening\n")
    first, second = world.service.stop(0), world.service.stop(0)
    assert world.slurm.argvs("scancel") == [["scancel", "101"]]
    world.slurm.show(101, "COMPLETING", "None", "node1")
    world.clock.advance(1)
    assert not first.called and not second.called, "COMPLETING has not ended"
    world.slurm.show(101, "CANCELLED", "None", "node1")
    world.clock.advance(1)
    assert fired(first) and fired(second)
    assert list(world.dir.iterdir()) == [] and world.service._jobs == {} and world.ended == []
    assert world.service.describe(0) == {"backend": "slurm", "state": None, "address": None}
    assert fired(world.service.stop(0)), "a stop of a stopped instance: at once"


def test_a_stop_slurm_never_confirms_ends_after_stop_wait_with_one_warning(world, events):
    world.running()
    stopped = world.service.stop(0)
    world.clock.pump([1] * int(STOP_WAIT - 1))
    assert not stopped.called
    world.clock.pump([1, 1])
    assert fired(stopped) and list(world.dir.iterdir()) == []
    assert warnings(events) == [f"desktop[0]: Slurm job 101 has not ended {STOP_WAIT:g} s after the stop"]


@pytest.mark.parametrize("state, reason, status, why", [
    ("TIMEOUT", "TimeLimit", "0", "Slurm job 101 timeout (TimeLimit)"),
    ("FAILED", "NonZeroExitCode", "256", "Slurm job 101 failed (NonZeroExitCode), exit code 1"),
    ("NODE_FAIL", "None", "9", "Slurm job 101 node fail, signal 9"),
    (None, None, None, "Slurm job 101 is no longer known to Slurm"),
])
def test_a_running_job_that_ends_on_its_own_ends_its_session_once(world, state, reason, status, why):
    world.running()
    if state is None:
        del world.slurm.jobs["101"]
    else:
        world.slurm.show(101, state, reason, "node1", status=status)
    world.clock.pump([1] * 5)
    world.slurm.jobs.clear()
    world.clock.pump([1] * 5)
    assert world.ended == [(world.service, 0, why)]
    assert world.job().describe()["state"] is None, "not live: its session is ending"
    assert world.service.lost(0) is None, "it is known to have ended"
    stopped = world.service.stop(0)
    assert fired(stopped) and world.slurm.argvs("scancel") == []


def test_lost_polls_at_once_and_fires_once_slurm_says_the_job_ended(world):
    world.running()
    world.clock.pump([1] * 60)  # unchanged: squeue's pause has backed off
    calls = world.site.queue.calls
    world.slurm.show(101, "COMPLETED", "None", "node1")
    d = world.service.lost(0)
    assert not d.called
    world.clock.advance(0)
    assert world.site.queue.calls == calls + 1
    assert result_of(d) is None and world.ended == [(world.service, 0, "Slurm job 101 completed")]


def test_lost_asks_slurm_every_half_second_and_fires_after_lost_wait_while_the_job_runs(world):
    world.running()
    calls = world.site.queue.calls
    d = world.service.lost(0)
    world.clock.advance(0)
    world.clock.pump([0.5] * int(LOST_WAIT * 2 - 1))
    assert not d.called and world.site.queue.calls == calls + LOST_WAIT * 2
    world.clock.advance(0.5)
    assert fired(d) and world.ended == []
    assert world.service.lost(1) is None, "no job to ask about"


def test_a_running_job_has_its_address_password_and_time_limit_and_shows_no_secret(world):
    d = world.running(left="0:50:00")
    assert result_of(d) == ("node1", 5901) == world.service.address(0)
    assert world.service.credentials(0) == {"password": "pw-1"} and world.service.credentials(1) is None
    assert world.service.ends_at(0) == pytest.approx(3000.0)
    shown = world.service.describe(0)
    assert shown == {"backend": "slurm", "state": "running", "job": "101", "slurm_state": "RUNNING",
                     "node": "node1", "reason": None, "address": "node1:5901"}
    assert world.job().secret not in json.dumps(shown) and world.service.pending() == 0


def test_a_report_before_any_running_poll_counts_its_time_limit_from_the_report(world):
    d = world.start()
    world.slurm.show(101, limit="2:00:00", left="2:00:00")
    world.clock.advance(10)
    world.report(password=None)
    assert result_of(d) == ("node1", 5901)
    assert world.service.ends_at(0) == pytest.approx(10 + FILE_POLL + 7200)
    assert world.service.credentials(0) is None
    world.slurm.show(101, "RUNNING", "None", "node1", limit="2:00:00", left="1:59:00")
    world.clock.advance(1)
    assert world.service.ends_at(0) == pytest.approx(world.clock.seconds() + 7140), "time_left once it is seen"


# --- what the hostile review found --------------------------------------------------------


def test_a_submission_whose_answer_was_lost_is_found_by_its_comment_and_cancelled(world, events):
    """sbatch timed out (a stalled controller) but its request got through: the job is found
    by the comment that only this start has, and cancelled, not left to run for its --time."""
    world.slurm.submits.append((b"", b"sbatch: error: Batch job submission failed: Socket timed out on "
                                     b"send/recv operation\n", 1))
    failure_of(world.start(), StartFailure)
    comment = world.job().comment
    world.slurm.answers["own"] = (b"", b"", 0)  # not there yet
    world.clock.advance(0)
    assert world.slurm.argvs("scancel") == []
    world.slurm.answers["own"] = (f"4242|{comment}|\n4243|nexusws other:0:ab|\n".encode(), b"", 0)
    world.write("4242.json", "{}")  # it ran and reported before it was found
    world.output(4242, "")
    world.clock.advance(5)
    assert world.slurm.argvs("scancel") == [["scancel", "4242"]], "that start's job only"
    assert list(world.dir.iterdir()) == [], "its report (a secret, a password) and output removed"
    assert any("Slurm job 4242 was made though sbatch's answer was lost" in w for w in warnings(events))
    calls = len(world.slurm.calls)
    world.clock.advance(600)
    assert len(world.slurm.calls) == calls, "found: looked for no more"


def test_a_lost_submission_is_looked_for_a_while_then_given_up(world):
    world.slurm.submits.append((b"", b"sbatch: error: Socket timed out\n", 1))
    failure_of(world.start(), StartFailure)
    world.clock.pump([5] * 70)
    looks = len(world.slurm.argvs("squeue"))
    assert 50 <= looks <= 62, looks
    world.clock.pump([5] * 10)
    assert len(world.slurm.argvs("squeue")) == looks


def test_a_running_job_requeued_from_outside_ends_its_session_and_is_still_cancelled(world):
    world.running()
    world.slurm.show(101, "PENDING", "BeginTime")
    world.clock.pump([1] * 3)
    assert world.ended == [(world.service, 0, "Slurm job 101 was requeued")]
    assert world.service.lost(0) is None, "its end is known: nothing to ask Slurm"
    stopped = world.service.stop(0)
    assert world.slurm.argvs("scancel") == [["scancel", "101"]], "requeued, it would run again"
    world.slurm.show(101, "CANCELLED", "None")
    world.clock.pump([1] * 3)
    assert fired(stopped)


def test_a_job_requeued_before_it_reported_waits_again_without_its_start_timeout(world):
    d = world.start()
    world.slurm.show(101, "RUNNING", "None", "node1")
    world.clock.advance(0)
    world.slurm.show(101, "PENDING", "BeginTime")
    world.clock.pump([1] * 40)  # longer than the start timeout (30 s)
    assert not d.called and world.progress[-1][1].startswith("waiting in Slurm's queue: BeginTime")
    world.slurm.show(101, "RUNNING", "None", "node1")
    world.clock.advance(1)
    world.report()
    assert result_of(d) == ("node1", 5901)
