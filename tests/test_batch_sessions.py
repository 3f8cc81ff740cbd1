"""What the registry does with a batch backend (IQueuedBackend, issue 16), in memory: no start
timeout while a job waits in the queue, a job's own end ending its session (1011 and why), the
job's time limit feeding the time warning and bounding /v1/extend, its password and job in
/v1/session, instance_lost, and --keep_sessions keeping and adopting a job. The real backend
against a real Slurm: test_slurm_sessions.py; the backend itself in memory: test_slurm_backend.py."""

import json

from twisted.internet import defer
from zope.interface.verify import verifyClass

from nexusws.routing import Launch
from nexusws.sessions.backend import IQueuedBackend
from nexusws.sessions.deadlines import ExtendRefused
from nexusws.sessions.records import check_reservation
from nexusws.sessions.slurm import SlurmService
from support.deferreds import failure_of, result_of
from support.reservations import ADDRESS, EPOCH, FakeService, World

JOB = {"id": "4242", "secret": "s3cret", "password": "pw123456", "ends_at": None}


class Batch(FakeService):
    """A FakeService with what a batch backend adds."""

    kind = "slurm"
    keepable = True
    on_ended = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bound, self.end, self.asked, self.adopted, self.lost_calls = None, None, [], [], []

    def start_bound(self, start_timeout):
        self.asked.append(start_timeout)
        return self.bound

    def lost(self, index):
        self.lost_calls.append(index)
        return defer.succeed(None)

    def ends_at(self, index):
        return self.end

    def credentials(self, index):
        return {"password": "pw123456"}

    def pending(self):
        return 0

    def describe(self, index):
        return {"backend": "slurm", "state": "running", "job": "4242", "node": "n7", "address": "n7:5901"}

    def kept(self, index, offset):
        return dict(JOB)

    def adopt(self, index, address, job, offset):
        self.adopted.append((index, address, job))


class Tunnel:
    def __init__(self):
        self.bytes_up = self.bytes_down = 0
        self.ended = []

    def session_ended(self, code, reason):
        self.ended.append((code, reason))


def running(world, **options):
    r = world.registry.reserve("demo", options)
    launch = Launch(None, lambda why: world.registry.deactivate(r.token, launch, why), "demo#0")
    launch.tunnel = Tunnel()
    assert result_of(world.registry.activate(r.token, attachment=launch)) == ADDRESS
    return r, launch


def events(world, r):
    return [(e["event"], {k: v for k, v in e.items() if k not in ("id", "event", "time")})
            for e in world.registry.events_of(r.token).events]


def test_the_slurm_service_declares_the_batch_interface():
    assert IQueuedBackend.implementedBy(SlurmService) and verifyClass(IQueuedBackend, SlurmService)
    assert {"start_bound", "lost", "ends_at", "credentials", "pending", "on_ended", "kind"} <= set(
        IQueuedBackend.names())


def test_a_start_waiting_in_the_queue_has_no_registry_timeout_unless_the_backend_gives_one():
    batch = Batch()
    batch.start_result = lambda index: defer.Deferred()  # the job waits in the queue
    world = World(services=[batch], start_timeout=30.0)
    r = world.registry.reserve("demo")
    started = world.registry.activate(r.token)
    world.clock.advance(3600)
    assert r.state == "starting" and not started.called and batch.asked == [30.0]
    world.registry.release(r.token)
    failure_of(started)
    batch.bound = 100.0  # a queue_timeout: its bound counts
    r = world.registry.reserve("demo")
    started = world.registry.activate(r.token)
    world.clock.advance(101)
    assert "within 100 s" in str(failure_of(started).value)


def test_a_job_that_ends_on_its_own_ends_its_session_with_1011_and_why():
    batch = Batch()
    world = World(services=[batch])
    r, launch = running(world)
    batch.on_ended(batch, 0, "Slurm job 4242 timeout (TimeLimit)")
    assert launch.tunnel.ended == [(1011, "session ended: Slurm job 4242 timeout (TimeLimit)")]
    assert r.state == "released" and batch.stops == [0]
    assert ("ending", {"reason": "instance_ended", "detail": "Slurm job 4242 timeout (TimeLimit)"}) in events(world, r)
    batch.on_ended(batch, 0, "again")  # nothing runs there any more: nothing happens
    assert len(launch.tunnel.ended) == 1


def test_a_detached_session_whose_job_ends_ends_too():
    batch = Batch()
    world = World(services=[batch], reconnect_grace=60.0)
    r, launch = running(world)
    result_of(world.registry.deactivate(r.token, launch, None))
    assert r.state == "detached"
    batch.on_ended(batch, 0, "Slurm job 4242 node fail")
    assert r.state == "released"


def test_the_jobs_time_limit_is_warned_of_ends_the_session_and_bounds_extend():
    batch = Batch()
    world = World(services=[batch], limits={"time_warning": 60.0, "max_duration": 0.0})
    batch.end = world.clock.seconds() + 600  # the job's limit: 10 minutes from its start
    r, launch = running(world)
    assert world.registry.time_left(r, world.clock.seconds()) == 600
    world.clock.advance(539)
    assert "time_warning" not in [name for name, _ in events(world, r)]
    world.clock.advance(1)
    assert ("time_warning", {"seconds_left": 60.0}) in events(world, r)
    try:
        world.registry.extend(r, 60)
        raise AssertionError("extended beyond the job's time limit")
    except ExtendRefused as e:
        assert e.status == 403 and "Slurm job's" in str(e)
    world.clock.advance(60)
    assert launch.tunnel.ended == [(4003, "session ended: time limit reached")] and r.state == "released"


def test_max_duration_shorter_than_the_job_may_be_extended_up_to_the_jobs_limit():
    batch = Batch()
    world = World(services=[batch], limits={"max_duration": 300.0, "max_extend": 10000.0, "time_warning": 60.0})
    batch.end = world.clock.seconds() + 600
    r, _ = running(world)
    assert world.registry.extend(r, 200) == 500
    try:
        world.registry.extend(r, 200)
        raise AssertionError("extended beyond the job's time limit")
    except ExtendRefused as e:
        assert e.status == 403 and "100 s more at most" in str(e)


def test_session_snapshot_has_the_job_and_its_one_time_password_only_while_it_runs():
    batch = Batch()
    batch.start_result = lambda index: defer.Deferred()
    world = World(services=[batch])
    r = world.registry.reserve("demo")
    started = world.registry.activate(r.token)
    snapshot = world.registry.session(r.token)
    assert snapshot["backend"]["job"] == "4242" and "vnc_password" not in snapshot, "not before it runs"
    world.registry.release(r.token)
    failure_of(started)
    batch.start_result = lambda index: ADDRESS
    r, _ = running(world)
    assert world.registry.session(r.token)["vnc_password"] == "pw123456"
    [status] = world.registry.status()
    assert status["instances"][0]["backend"]["node"] == "n7"
    assert "pw123456" not in json.dumps(status)


def test_instance_lost_asks_the_backend_only_while_the_session_runs():
    batch = Batch()
    world = World(services=[batch])
    r, _ = running(world)
    assert result_of(world.registry.instance_lost(r.token)) is None and batch.lost_calls == [0]
    assert world.registry.instance_lost("no-such-token") is None
    local = World()
    r2 = local.registry.reserve("demo")
    assert local.registry.instance_lost(r2.token) is None, "reserved: nothing runs"


def test_keep_sessions_records_the_job_and_the_next_run_has_the_backend_take_it_back():
    batch = Batch()
    first = World(services=[batch], keep_sessions=True, reconnect_grace=30.0)
    r, _ = running(first)
    result_of(first.registry.shutdown())
    assert batch.stops == [], "kept: not cancelled"
    (record,) = json.loads(json.dumps(first.changes[-1]))["reservations"]
    assert record["kept"] is True and record["job"] == JOB and record["pids"] == []
    assert check_reservation(record)["job"] == JOB

    again = Batch()
    second = World(services=[again], keep_sessions=True, reconnect_grace=30.0)
    second.registry.restore(json.loads(json.dumps(first.changes[-1])), now=EPOCH + 10)
    assert again.adopted == [(0, ADDRESS, JOB)]
    adopted = second.registry.get(r.token)
    assert adopted.state == "detached" and adopted.adopted
    result_of(second.registry.release(r.token))
    assert again.stops == [0] and second.killer.calls == [], "the backend cancels it: no pid is signalled"


def test_a_kept_job_record_is_checked_like_every_other_field():
    base = {"token": "t" * 36, "service": "demo", "index": 0, "options": {}, "user": None, "state": "active",
            "created": EPOCH, "pids": [], "kept": True, "address": ["n7", 5901]}
    for job in ({"id": "12; rm -rf /", "secret": "s"}, {"id": 12, "secret": "s"}, {"id": "12", "secret": ""},
                {"id": "12", "secret": "s", "password": "\x1b[31m"}, {"id": "12", "secret": "s", "ends_at": -1}):
        try:
            check_reservation({**base, "job": job})
            raise AssertionError(f"accepted {job}")
        except (TypeError, ValueError):
            pass


def test_a_slurm_services_options_are_checked_when_the_config_is_read(tmp_path):
    import pytest

    from nexusws.errors import StartupError
    from nexusws.sessions.config import read_config
    from support.sessions import SCRIPTS

    def read(**options):
        path = tmp_path / "slurm.json"
        path.write_text(json.dumps({"job": {"script": str(SCRIPTS / "slurm_program.py"), "count": 1,
                                            "options": {"programs": [["true"]], **options}}}))
        return read_config(path)

    assert read(sbatch=["--time=5", "-A", "acct", "-Aalpha", "-vvv", "-pgpu", "--exclusive", "--constraint=gpu",
                        "--nodes=1", "--mem=4G", "--reservation=r", "--wait-all-nodes=1"])[0].slurm
    for options, said in [({"sbatch": "--time=5"}, "'options.sbatch' must be a list of strings"),
                          ({"sbatch": ["-J", "mine"]}, "'options.sbatch': --job-name is nexusws's own"),
                          ({"sbatch": ["--output=/tmp/x"]}, "--output is nexusws's own"),
                          ({"sbatch": ["--wrap=hostname"]}, "--wrap is nexusws's own"),
                          ({"sbatch": ["--wra=hostname"]}, "--wrap is nexusws's own"),  # sbatch takes a start
                          ({"sbatch": ["--arr=0-2"]}, "--array is nexusws's own"),
                          ({"sbatch": ["--outp", "/tmp/x"]}, "--output is nexusws's own"),
                          ({"sbatch": ["-va0-1"]}, "--array is nexusws's own"),  # grouped: -v -a 0-1
                          ({"sbatch": ["-vJx"]}, "--job-name is nexusws's own"),
                          ({"sbatch": ["--wait"]}, "--wait is nexusws's own, or a session's job cannot work"),
                          ({"sbatch": ["-H"]}, "--hold is nexusws's own"),
                          ({"sbatch": ["--requeue"]}, "--requeue is nexusws's own"),
                          ({"python": "python3"}, "'options.python' must be an absolute path"),
                          ({"poll_interval": 0}, "'options.poll_interval' must be a number of seconds >= 0.1"),
                          ({"queue_timeout": -1}, "'options.queue_timeout' must be a number"),
                          ({"connection_dir": ""}, "'options.connection_dir' must be a non-empty string")]:
        with pytest.raises(StartupError) as e:
            read(**options)
        assert str(e.value).startswith(f"{tmp_path / 'slurm.json'}: service 'job': ") and said in str(e.value)


def test_an_unfit_connection_directory_is_one_start_up_line_naming_the_service_and_key(tmp_path):
    import os

    import pytest
    from twisted.internet.task import Clock

    from nexusws.errors import StartupError
    from nexusws.sessions.config import read_config
    from nexusws.sessions.slurmsite import SlurmSite
    from support.sessions import SCRIPTS

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = tmp_path / "slurm.json"
    path.write_text(json.dumps({"job": {"script": str(SCRIPTS / "slurm_program.py"), "count": 1,
                                        "options": {"programs": [["true"]], "connection_dir": str(shared)}}}))
    (spec,) = read_config(path)
    site = SlurmSite(Clock(), "nexusws-test")
    with pytest.raises(StartupError) as e:
        spec.build(Clock(), None, slurm_site=site)
    assert str(e.value) == (f"{path}: service 'job': 'options.connection_dir': {shared} is writable by others "
                            f"(mode 0777): anyone could forge a job's report")
    os.chmod(shared, 0o700)
    assert spec.build(Clock(), None, slurm_site=site).connection_dir == str(shared)
    fresh = tmp_path / "made" / "here"
    path.write_text(json.dumps({"job": {"script": str(SCRIPTS / "slurm_program.py"), "count": 1,
                                        "options": {"programs": [["true"]], "connection_dir": str(fresh)}}}))
    (spec,) = read_config(path)
    spec.build(Clock(), None, slurm_site=site)
    assert (os.stat(fresh).st_mode & 0o777) == 0o700
