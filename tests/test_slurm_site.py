"""nexusws.sessions.slurmsite, slurmscript and slurmqueue's helpers (issue 16) in memory: a
job's connection file checked before it is believed, the connection directory, the job
script's parameters and a service's options, scancel and the start-up on a scripted Slurm
(L{support.slurm_fakes}), Slurm's durations and exit statuses. No real Slurm, no sleep."""

import json
import os
import time

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent

from nexusws.sessions.slurmqueue import SlurmQueue, exit_status, exit_text, expected_start, seconds_of
from nexusws.sessions.slurmreport import MAX_REPORT, ReportError, connection_directory, read_connection_file
from nexusws.sessions.slurmscript import check_options, job_parameters
from nexusws.sessions.slurmsite import FILE_POLL, SlurmSite, job_name, startup
from support.deferreds import result_of
from support.slurm_fakes import NAME, FakeSlurm, World

SECRET = "s3cret-Zz9"


def lines(events, level=LogLevel.warn):
    return [formatEvent(e) for e in events if e.get("log_level") == level and e.get("log_namespace") == "nexusws.slurm"]


def report(tmp_path, content, mode=0o600, name="101.json"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    os.chmod(path, mode)
    return str(path)


GOOD = {"job": "101", "secret": SECRET, "host": "node1", "port": 5901, "password": None}


def test_a_good_connection_file_gives_host_port_and_password(tmp_path):
    assert read_connection_file(report(tmp_path, GOOD), 101, SECRET) == {"host": "node1", "port": 5901,
                                                                          "password": None}
    with pytest.raises(FileNotFoundError):
        read_connection_file(str(tmp_path / "102.json"), "102", SECRET)


@pytest.mark.parametrize("change, mode, why", [
    ({}, 0o644, "is not the gateway user's alone (owner {uid}, mode 0644)"),
    ({}, 0o620, "is not the gateway user's alone (owner {uid}, mode 0620)"),
    ({"job": "102"}, 0o600, "is not job 101's (its job id or secret differs)"),
    ({"job": 101}, 0o600, "is not job 101's (its job id or secret differs)"),
    ({"secret": "s3cret-Zz8"}, 0o600, "is not job 101's (its job id or secret differs)"),
    ({"secret": None}, 0o600, "is not job 101's (its job id or secret differs)"),
    ({"port": 0}, 0o600, "'port' is not a port number"),
    ({"port": 65536}, 0o600, "'port' is not a port number"),
    ({"port": True}, 0o600, "'port' is not a port number"),
    ({"port": "5901"}, 0o600, "'port' is not a port number"),
    ({"host": ""}, 0o600, "'host' is not a host name"),
    ({"host": "node1\nnode2"}, 0o600, "'host' is not a host name"),
    ({"host": None}, 0o600, "'host' is not a host name"),
    ({"password": 1234}, 0o600, "'password' is not a string"),
])
def test_a_connection_file_that_cannot_be_believed_is_a_report_error(tmp_path, change, mode, why):
    path = report(tmp_path, {**GOOD, **change}, mode)
    with pytest.raises(ReportError) as raised:
        read_connection_file(path, "101", SECRET)
    glue = " " if why.startswith("is ") else ": "
    assert str(raised.value) == f"connection file {path}{glue}{why.format(uid=os.geteuid())}"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b" " * MAX_REPORT + b"{}",
                                     json.dumps({**GOOD, "pad": "x" * MAX_REPORT}).encode()])
def test_a_connection_file_that_is_no_small_json_object_is_a_report_error(tmp_path, content):
    path = report(tmp_path, content)
    with pytest.raises(ReportError, match=f"is not a JSON object of at most {MAX_REPORT} bytes"):
        read_connection_file(path, "101", SECRET)


def test_a_job_reporting_its_error_is_a_report_error_of_its_words(tmp_path):
    path = report(tmp_path, {**GOOD, "error": "Xvfb exited (status 1)\nbefore it opened a display"})
    with pytest.raises(ReportError) as raised:
        read_connection_file(path, "101", SECRET)
    assert str(raised.value) == "Xvfb exited (status 1)%0Abefore it opened a display"


def test_a_link_or_a_fifo_is_never_read_as_a_connection_file(tmp_path):
    target = report(tmp_path, GOOD, name="elsewhere.json")
    os.symlink(target, tmp_path / "101.json")
    with pytest.raises(ReportError, match="Too many levels of symbolic links"):
        read_connection_file(str(tmp_path / "101.json"), "101", SECRET)
    os.mkfifo(tmp_path / "102.json", 0o600)
    with pytest.raises(ReportError, match="is not a regular file"):
        read_connection_file(str(tmp_path / "102.json"), "102", SECRET)


def test_a_directory_is_a_report_error(tmp_path):
    (tmp_path / "101.json").mkdir(mode=0o700)
    with pytest.raises(ReportError, match="is not a regular file"):
        read_connection_file(str(tmp_path / "101.json"), "101", SECRET)


def test_a_non_ascii_secret_is_a_report_error(tmp_path):
    with pytest.raises(ReportError, match="its job id or secret differs"):
        read_connection_file(report(tmp_path, {**GOOD, "secret": "s3cret-Zz\u00e9"}), "101", SECRET)


def test_the_connection_directory_is_made_0700_and_refused_when_others_may_write_it(tmp_path, monkeypatch):
    made = connection_directory(str(tmp_path / "a" / "b"))
    assert made == str(tmp_path / "a" / "b") and os.stat(made).st_mode & 0o777 == 0o700
    assert connection_directory(made) == made, "an existing one is fine"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert connection_directory() == str(tmp_path / "home" / ".nexusws" / "slurm")
    os.chmod(made, 0o770)
    with pytest.raises(ValueError, match=r"is writable by others \(mode 0770\): anyone could forge"):
        connection_directory(made)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file is not a directory"):
        connection_directory(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="cannot create"):
        connection_directory(str(tmp_path / "file" / "sub"))


def test_job_parameters_check_what_the_script_gave_and_add_user_secret_host_and_directory():
    spec = {"programs": [["Xvnc", "{port}"], ["twm"]], "xvfb": "1920x1080x24", "ready_timeout": 30}
    assert job_parameters(spec, {"user": "bob", "token": "t"}, "sec", "10.0.0.1", "/d") == {
        "programs": [["Xvnc", "{port}"], ["twm"]], "xvfb": "1920x1080x24", "password": False,
        "ready_timeout": 30.0, "host": "10.0.0.1", "user": "bob", "secret": "sec", "connection_dir": "/d"}
    assert job_parameters({**spec, "host": "ib0"}, {}, "sec", "10.0.0.1", "/d")["host"] == "ib0"
    assert job_parameters({"programs": [["x"]]}, {}, "sec", None, "/d")["user"] == ""
    for bad, why in [([], "gave list, not a dict"), ({"programs": [["x"]], "gpus": 1}, "unknown key 'gpus'"),
                     ({"programs": []}, "'programs' must be"), ({"programs": [[]]}, "'programs' must be"),
                     ({"programs": ["Xvnc"]}, "'programs' must be"), ({"programs": [["x"]], "xvfb": "big"}, "'xvfb'"),
                     ({"programs": [["x"]], "ready_timeout": True}, "'ready_timeout'"),
                     ({"programs": [["x"]], "ready_timeout": 0}, "'ready_timeout'")]:
        with pytest.raises(TypeError, match=why):
            job_parameters(bad, {}, "sec", None, "/d")


@pytest.mark.parametrize("options, why", [
    ({}, None),
    ({"sbatch": ["--time=60"], "connection_dir": "/x", "python": "/opt/py/bin/python3", "host": "h",
      "poll_interval": 0.5, "queue_timeout": 0}, None),
    ({"sbatch": "--time=60"}, "'options.sbatch' must be a list of strings"),
    ({"sbatch": ["--time=60", 5]}, "'options.sbatch' must be a list of strings"),
    ({"sbatch": ["a\0b"]}, "'options.sbatch' must be a list of strings"),
    ({"connection_dir": " "}, "'options.connection_dir' must be a non-empty string"),
    ({"host": 5}, "'options.host' must be a non-empty string"),
    ({"python": "python3"}, "'options.python' must be an absolute path"),
    ({"poll_interval": 0.05}, "'options.poll_interval' must be a number of seconds >= 0.1"),
    ({"poll_interval": True}, "'options.poll_interval' must be a number of seconds >= 0.1"),
    ({"queue_timeout": -1}, "'options.queue_timeout' must be a number of seconds >= 0"),
    ({"queue_timeout": "60"}, "'options.queue_timeout' must be a number of seconds >= 0"),
])
def test_check_options_names_the_bad_key(options, why):
    found = check_options(options)
    assert found == why if why is None else found.startswith(why), found


def test_slurms_durations_exit_statuses_and_expected_start():
    assert [seconds_of(t) for t in ("1-02:03:04", "2:03:04", "3:04", "UNLIMITED", None, "")] == [
        93784, 7384, 184, None, None, None]
    assert [exit_text(s) for s in ("768", "9", "0", None, "n/a")] == ["exit code 3", "signal 9", "exit code 0",
                                                                       None, None]
    assert [exit_status(s) for s in ("768", "9", None)] == [3, -9, None]
    assert expected_start("2030-01-02T03:04:05") == time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    assert expected_start(None) is expected_start("N/A") is None


def test_the_job_name_is_a_digest_of_host_and_state_file():
    assert job_name("/var/lib/nexusws/state.json", "gw1") == job_name("/var/lib/nexusws/state.json", "gw1")
    assert job_name("/var/lib/nexusws/state.json", "gw1") != job_name("/var/lib/nexusws/state.json", "gw2")
    name = job_name("/var/lib/nexusws/state.json", "gw1")
    assert name.startswith("nexusws-") and len(name) == 20 and "gw1" not in name


def test_poll_now_fires_after_a_poll_that_began_after_it():
    clock, answers = Clock(), []
    queue = SlurmQueue(clock, NAME, run=lambda argv: answers.append(defer.Deferred()) or answers[-1], interval=1.0)
    assert result_of(queue.poll_now()) is None, "nothing watched: at once"
    queue.watch("7", lambda job: None)
    clock.advance(0)
    d = queue.poll_now()
    pending = (b"7|PENDING|Resources||N/A|1:00|1:00|0|\n", b"", 0)
    answers[0].callback(pending)
    assert not d.called, "the poll in flight began before it"
    clock.advance(0)
    answers[1].callback(pending)
    assert result_of(d) is None and len(answers) == 2


# --- the site: files, scancel, start-up -------------------------------------------------


def test_the_file_poll_runs_only_while_a_job_has_not_reported(tmp_path):
    world = World(tmp_path)
    world.start(0)
    world.start(1)
    assert world.site._looking.running
    world.report(0)
    assert world.site._looking.running, "job 102 has not reported"
    world.report(1)
    assert not world.site._looking.running


def test_a_connection_file_that_vanishes_before_its_read_is_watched_again_by_one_poll(tmp_path):
    world = World(tmp_path)
    first, second = world.start(0), world.start(1)
    for index in (0, 1):
        job = world.job(index)
        world.write(f"{job.id}.json", json.dumps({"job": job.id, "secret": job.secret, "host": "n", "port": 1}))
    first.addCallback(lambda _: os.unlink(world.dir / "102.json"))  # between the listing and 102's read
    world.clock.advance(FILE_POLL)
    assert result_of(first) is None and not second.called and world.site._looking.running
    looks = [c for c in world.clock.getDelayedCalls() if c.func is world.site._looking]
    assert len(looks) == 1


def test_scancel_of_a_job_that_has_ended_is_no_warning_and_a_failing_one_is(tmp_path, events):
    slurm = FakeSlurm()
    site = SlurmSite(Clock(), NAME, run=slurm)
    slurm.answers["scancel"] = (b"", b"scancel: error: Kill job error on job id 7: Job/step already completing "
                                     b"or completed\n", 1)
    result_of(site.cancel("7"))
    assert lines(events) == [] and lines(events, LogLevel.info) == ["Slurm job 7 cancelled"]
    slurm.answers["scancel"] = (b"", b"scancel: error: Access/permission denied\n", 1)
    result_of(site.cancel("8"))
    slurm.answers["scancel"] = OSError("scancel not found")
    result_of(site.cancel("9"))
    assert lines(events) == ["scancel 8 failed (exit 1): scancel: error: Access/permission denied",
                             "scancel 9 failed: scancel not found"]


@pytest.fixture
def slurm_path(tmp_path, monkeypatch):
    """A PATH with sbatch, squeue and scancel (never run: the tests' commands are scripted)."""
    where = tmp_path / "bin"
    where.mkdir()
    for name in ("sbatch", "squeue", "scancel"):
        (where / name).write_text("#!/bin/sh\nexit 99\n")
        os.chmod(where / name, 0o755)
    monkeypatch.setenv("PATH", str(where))
    return where


def test_startup_holds_submissions_until_the_jobs_a_previous_run_left_are_cancelled(tmp_path, slurm_path):
    world = World(tmp_path)
    for job in ("5", "7", "8"):  # 5 ended while the gateway was down; 8 is taken back
        world.write(f"{job}.json", "{}")
        world.output(job, "")
    world.write("other-gateway-9.out", "")
    world.write("9.json", "{}")
    world.slurm.answers["own"] = own = defer.Deferred()
    done = startup(world.site, [world.service], adopted={"8"})
    world.start()
    assert world.slurm.argvs("sbatch") == [], "held"
    own.callback((b"7|nexusws 1a:0:2b|\n8|nexusws 1a:1:3c|\n10|nexusws 1a:0:4d|\n", b"", 0))
    assert result_of(done) is None
    assert [argv[0] for argv, _ in world.slurm.calls] == ["sinfo", "squeue", "scancel", "scancel", "sbatch"]
    assert world.slurm.argvs("scancel") == [["scancel", "7"], ["scancel", "10"]]
    assert sorted(p.name for p in world.dir.iterdir()) == ["8.json", "9.json", f"{NAME}-8.out",
                                                            "other-gateway-9.out"], "ours removed, but 8's"
    assert world.slurm.argvs("squeue")[0] == ["squeue", "-h", "--me", f"--name={NAME}", "-t",
                                              "PENDING,RUNNING,SUSPENDED,CONFIGURING", "-O", "JobID:|,Comment:"]


def test_startup_warns_once_when_slurms_commands_are_missing(tmp_path, monkeypatch, events):
    world = World(tmp_path)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert result_of(startup(world.site, [world.service])) is None
    assert lines(events) == [f"Slurm service(s) 'desktop': sbatch, squeue, scancel not found on PATH "
                             f"({tmp_path / 'empty'}): their sessions cannot start"]
    assert world.slurm.calls == [] and result_of(world.site.when_ready()) is None, "nothing held"


def test_startup_warns_once_when_sinfo_fails_and_still_cancels_what_was_left(tmp_path, slurm_path, events):
    world = World(tmp_path)
    world.slurm.answers["sinfo"] = (b"", b"sinfo: error: Unable to contact slurm controller\n", 1)
    world.slurm.answers["own"] = (b"7|nexusws 1a:0:2b|\n", b"", 0)
    result_of(startup(world.site, [world.service]))
    assert lines(events) == ["Slurm service(s) 'desktop': sinfo failed (exit 1): sinfo: error: Unable to contact "
                             "slurm controller; their sessions wait for Slurm"]
    assert world.slurm.argvs("scancel") == [["scancel", "7"]]


def test_startup_that_cannot_list_the_jobs_left_warns_and_releases(tmp_path, slurm_path, events):
    world = World(tmp_path)
    world.slurm.answers["own"] = (b"", b"squeue: error: Invalid user\n", 1)
    result_of(startup(world.site, [world.service]))
    assert lines(events) == ["Slurm service(s) 'desktop': cannot list this gateway's jobs: squeue: error: "
                             "Invalid user"]
    assert result_of(world.site.when_ready()) is None


def test_a_slurm_command_that_never_answers_is_killed_and_its_answer_says_so():
    """A hung controller must not hold a poll (or a start) for ever: run_command kills it."""
    import subprocess
    import sys

    code = (
        "from twisted.internet import reactor\n"
        "from nexusws.sessions.slurmsite import run_command\n"
        "def done(result):\n"
        "    print(repr(result)); reactor.stop()\n"
        "reactor.callWhenRunning(lambda: run_command(reactor, timeout=0.5)(['sleep', '30']).addCallback(done))\n"
        "reactor.run()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == repr((b"", b"sleep did not answer within 0.5 s (killed)\n", -9)), out
