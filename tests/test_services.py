"""Services: the config file, the script API, instances and their processes, built-ins.

In memory for the logic (a fake launcher, a fake /proc table, Clock); real
processes under the real reactor (tests/services/run_services.py) to prove
that no process is left behind.
"""

import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from nexusws.errors import StartupError
from nexusws.services import RemoteServiceScript, ServiceError
from nexusws.sessions import procs
from nexusws.sessions.backend import BUSY, CRASHED, FAILED, NO_INSTANCE, ISessionBackend, StartFailure
from nexusws.sessions.builtin import DEFAULT_VNC_PORT_BASE
from nexusws.sessions.config import check_names
from nexusws.sessions.instances import Service
from nexusws.sessions.owners import Tracker
from support.deferreds import failure_of, result_of
from support.services import builtin_services, config_services

HERE = Path(__file__).resolve().parent / "services"


# --- fakes --------------------------------------------------------------------


class FakeSystem:
    """The gateway (pid 1) and its descendants as a table the test edits; kills recorded."""

    ME = 1

    def __init__(self):
        self.table = {}
        self._pids = itertools.count(100)
        self._ticks = itertools.count(5000)
        self.killed = []
        self.waits = []
        self.cancelled = []
        self.kill_result = None

    def add(self, ppid=ME, state="S", cmdline="prog", pid=None):
        pid = next(self._pids) if pid is None else pid
        self.table[pid] = procs.ProcInfo(pid, ppid, pid, pid, state, next(self._ticks), cmdline)
        return pid

    def remove_tree(self, pid):
        for gone in procs.descendants(pid, self.table) | {pid}:
            self.table.pop(gone, None)

    def getpid(self):
        return self.ME

    def process_table(self):
        return dict(self.table)

    descendants = staticmethod(procs.descendants)
    is_alive = staticmethod(procs.is_alive)

    def kill_processes(self, reactor, targets, grace):
        targets = list(targets)
        self.killed.append(targets)
        for pid, _ in targets:
            self.remove_tree(pid)
        return self.kill_result or defer.succeed([])

    def wait_for_port(self, reactor, host, port, timeout):
        d = defer.Deferred(lambda _: self.cancelled.append((host, port)))
        self.waits.append(((host, port), d))
        return d


class FakeChild:
    def __init__(self, system, argv, label):
        self._system = system
        self.pid = system.add(cmdline=" ".join(argv))
        self.start_time = system.table[self.pid].start_time
        self.argv, self.label = argv, label
        self.running, self.exit_code = True, None
        self.terminations = []
        self._waiters = []

    @property
    def ended(self):
        if not self.running:
            return defer.succeed(self.exit_code)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def exit(self, code):
        self.running, self.exit_code = False, code
        self._system.remove_tree(self.pid)
        for d in self._waiters:
            d.callback(code)

    def terminate(self, grace=5.0):
        self.terminations.append(grace)
        if self.running:
            self.exit(-15)
        return defer.succeed(None)


class FakeLauncher:
    def __init__(self, system):
        self.system = system
        self.spawned = []

    def spawn(self, argv, env=None, cwd=None, label=""):
        child = FakeChild(self.system, argv, label)
        self.spawned.append(child)
        return child


def make(script_class, count=2, system=None, tracker=None, name="demo", options=None):
    system = system or FakeSystem()
    clock = task.Clock()
    launcher = FakeLauncher(system)
    service = Service(name, script_class, count, options or {}, clock, launcher,
                      system=system, tracker=tracker or Tracker())
    return service, system, clock, launcher


class Fixed(RemoteServiceScript):
    def start(self, index, options):
        return ("127.0.0.1", 6000 + index)


# --- the config file ------------------------------------------------------------

GOOD = """\
from nexusws.services import RemoteServiceScript

class Good(RemoteServiceScript):
    def start(self, index, options):
        return ("127.0.0.1", 5900 + index)
"""


def write(directory, files):
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text) if isinstance(text, str) else path.write_bytes(text)


def load(path):
    return config_services(path, task.Clock(), FakeLauncher(FakeSystem()), system=FakeSystem())


def test_config_gives_one_service_per_entry_in_file_order_with_count_options_and_group(tmp_path):
    write(tmp_path, {"good.py": GOOD, "services.json": json.dumps({
        "Local Software Session": {"script": "good.py", "count": 2,
                                   "options": {"sizes": ["1600x1200"], "display_base": 100}},
        "Cluster Node Session": {"script": "good.py", "count": 1,
                                 "options": {"group": "ClusterRendering"}},
    })})
    services = load(tmp_path / "services.json")
    assert [(s.name, s.count, s.group) for s in services] == [
        ("Local Software Session", 2, None), ("Cluster Node Session", 1, "ClusterRendering")]
    assert services[0].common_options == {"sizes": ["1600x1200"], "display_base": 100}
    assert services[0].aliases == ()
    assert services[0].origin == str(tmp_path / "services.json")
    assert result_of(services[0].start(1, {})) == ("127.0.0.1", 5901)


def test_script_paths_are_relative_to_the_config_file_not_the_working_directory(
        tmp_path, monkeypatch):
    write(tmp_path, {"conf/scripts/good.py": GOOD, "conf/services.json": json.dumps(
        {"s": {"script": "scripts/good.py", "count": 1, "options": {}}})})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    [service] = load(Path("..") / "conf" / "services.json")
    assert type(service.script).__name__ == "Good"


def test_the_subclass_defined_in_the_script_is_picked_and_imported_ones_do_not_count(tmp_path):
    script = ("from nexusws.services import RemoteServiceScript\n"
              "from nexusws.sessions.builtin import LocalApplication  # a subclass, but imported\n"
              "class Mine(RemoteServiceScript):\n    pass\n")
    write(tmp_path, {"mine.py": script, "services.json": json.dumps(
        {"s": {"script": "mine.py", "count": 1, "options": {}}})})
    [service] = load(tmp_path / "services.json")
    assert type(service.script).__name__ == "Mine"


def test_script_is_created_with_a_copy_of_the_options_and_its_helpers_work_in_init(tmp_path):
    script = ("from nexusws.services import RemoteServiceScript\n"
              "class S(RemoteServiceScript):\n"
              "    def __init__(self, common_options):\n"
              "        super().__init__(common_options)\n"
              "        self.seen = (self.reactor, self.log.namespace)\n"
              "        common_options['changed'] = True\n")
    write(tmp_path, {"s.py": script, "services.json": json.dumps(
        {"s": {"script": "s.py", "count": 1, "options": {"k": [1]}}})})
    [service] = load(tmp_path / "services.json")
    assert service.script._common_options == {"k": [1], "changed": True}
    assert service.common_options == {"k": [1]}, "the service's own copy is untouched"
    assert service.script.seen == (service.reactor, "nexusws.service.s")


def test_a_script_whose_init_skips_the_base_still_gets_common_options(tmp_path):
    script = ("from nexusws.services import RemoteServiceScript\n"
              "class S(RemoteServiceScript):\n    def __init__(self, options):\n        pass\n")
    write(tmp_path, {"s.py": script, "services.json": json.dumps(
        {"s": {"script": "s.py", "count": 1, "options": {"a": 1}}})})
    [service] = load(tmp_path / "services.json")
    assert service.script._common_options == {"a": 1}


def test_each_service_runs_its_script_as_a_fresh_module_not_as_main(tmp_path):
    script = ("from nexusws.services import RemoteServiceScript\n"
              "RUNS = []\nRUNS.append(__name__)\n"
              "class S(RemoteServiceScript):\n    module_runs = RUNS\n")
    write(tmp_path, {"s.py": script, "services.json": json.dumps(
        {"a": {"script": "s.py", "count": 1, "options": {}},
         "b": {"script": "s.py", "count": 1, "options": {}}})})
    a, b = load(tmp_path / "services.json")
    assert type(a.script) is not type(b.script)
    assert len(a.script.module_runs) == len(b.script.module_runs) == 1
    assert a.script.module_runs != b.script.module_runs
    assert "__main__" not in a.script.module_runs + b.script.module_runs


def service_json(**fields):
    spec = {"script": "good.py", "count": 1, "options": {}}
    spec.update(fields)
    return json.dumps({"svc": {k: v for k, v in spec.items() if v is not ...}})


#: (id naming the refused mistake, files, fragments the one-line error must contain)
CONFIG_ERRORS = [
    ("config_file_missing", {}, ["cannot read the service config", "No such file"]),
    ("bad_json_reports_line_and_column", {"services.json": '{"svc": {"script": "good.py",\n'
                                          '   "count": 1 "options": {}}}'},
     ["invalid JSON at line 2, column 15", "Expecting ','"]),
    ("config_not_utf8", {"services.json": b'{"svc\xff": 1}'}, ["not UTF-8"]),
    ("top_level_a_list", {"services.json": "[]"}, ["top level must be an object", "a list"]),
    ("service_value_not_an_object", {"services.json": '{"svc": 3}'},
     ["service 'svc'", "must be an object with keys script, count and options"]),
    ("missing_script", {"services.json": service_json(script=...)},
     ["service 'svc'", "missing key 'script'"]),
    ("missing_count", {"services.json": service_json(count=...)},
     ["service 'svc'", "missing key 'count'"]),
    ("missing_options", {"services.json": service_json(options=...)},
     ["service 'svc'", "missing key 'options'"]),
    ("unknown_key_refused", {"services.json": service_json(group="admins")},
     ["service 'svc'", "unknown key 'group'", "belongs in options"]),
    ("count_zero", {"services.json": service_json(count=0)},
     ["service 'svc'", "'count' must be a positive integer, not 0"]),
    ("count_negative", {"services.json": service_json(count=-2)}, ["not -2"]),
    ("count_a_string", {"services.json": service_json(count="2")}, ['not "2"']),
    ("count_a_float", {"services.json": service_json(count=2.0)}, ["not 2.0"]),
    ("count_a_boolean", {"services.json": service_json(count=True)}, ["not true"]),
    ("count_null", {"services.json": service_json(count=None)}, ["not null"]),
    ("options_not_an_object", {"services.json": service_json(options=["a"])},
     ["service 'svc'", "'options' must be an object, not a list"]),
    ("group_not_a_name", {"services.json": service_json(options={"group": 7})},
     ["service 'svc'", "'options.group' must be a group name, not 7"]),
    ("viewer_not_a_boolean", {"services.json": service_json(options={"viewer": "no"})},
     ["service 'svc'", "'options.viewer' must be true or false, not \"no\""]),
    ("empty_service_name", {"services.json": json.dumps(
        {" ": {"script": "good.py", "count": 1, "options": {}}})},
     ["service ' '", "must not be empty"]),
    ("duplicate_service_name", {"good.py": GOOD, "services.json":
                                '{"svc": {"script": "good.py", "count": 1, "options": {}},\n'
                                ' "svc": {"script": "good.py", "count": 2, "options": {}}}'},
     ["key 'svc' appears twice"]),
    ("script_not_a_string", {"services.json": service_json(script=["good.py"])},
     ["service 'svc'", "'script' must be a file name"]),
    ("script_missing", {"services.json": service_json(script="nope.py")},
     ["service 'svc'", "script 'nope.py' not found", "nope.py"]),
    ("script_is_a_directory", {"dir.py/x": "", "services.json": service_json(script="dir.py")},
     ["service 'svc'", "script 'dir.py': cannot read", "directory"]),
    ("script_without_subclass", {"good.py": "from nexusws.services import RemoteServiceScript\n",
                                 "services.json": service_json()},
     ["service 'svc'", "must define one subclass of RemoteServiceScript or SlurmScript, it defines none"]),
    ("script_with_two_subclasses", {"good.py": GOOD + "class Other(Good):\n    pass\n",
                                    "services.json": service_json()},
     ["service 'svc'", "it defines 2: Good, Other"]),
    ("script_raising_on_import", {"good.py": "import os\n\nraise ValueError('no\\ndisplay')\n",
                                  "services.json": service_json()},
     ["service 'svc'", "script 'good.py' raised ValueError: no display (line 3) when run"]),
    ("script_with_syntax_error", {"good.py": "def f(:\n", "services.json": service_json()},
     ["service 'svc'", "script 'good.py': syntax error at line 1"]),
    ("script_calling_exit", {"good.py": "import sys\nsys.exit(2)\n",
                             "services.json": service_json()},
     ["service 'svc'", "raised SystemExit: 2 (line 2)"]),
    ("script_class_raising_in_init", {"good.py": GOOD + "    def __init__(self, options):\n"
                                      "        raise KeyError('port_base')\n",
                                      "services.json": service_json()},
     ["service 'svc'", "Good(options) raised KeyError: 'port_base' (line 7)"]),
]


@pytest.mark.parametrize(("files", "fragments"), [c[1:] for c in CONFIG_ERRORS],
                         ids=[c[0] for c in CONFIG_ERRORS])
def test_each_config_mistake_stops_start_up_with_one_line_naming_file_service_and_problem(
        tmp_path, files, fragments):
    write(tmp_path, {"good.py": GOOD, **files})
    path = tmp_path / "services.json"
    with pytest.raises(StartupError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_a_failed_script_load_does_not_leave_its_module_behind(tmp_path):
    write(tmp_path, {"good.py": "raise RuntimeError('x')\n", "services.json": service_json()})
    before = set(sys.modules)
    with pytest.raises(StartupError):
        load(tmp_path / "services.json")
    assert set(sys.modules) == before


def test_a_name_used_by_a_builtin_and_a_config_service_is_refused_naming_both(tmp_path):
    write(tmp_path, {"good.py": GOOD, "services.json": json.dumps(
        {"local_ensight": {"script": "good.py", "count": 1, "options": {}}})})
    config = load(tmp_path / "services.json")
    builtins = builtin_services([("ensight", 2)], task.Clock(), FakeLauncher(FakeSystem()), {},
                               system=FakeSystem())
    with pytest.raises(StartupError) as info:
        check_names(builtins + config)
    assert str(info.value) == (f"service name 'local_ensight' is defined twice: by "
                               f"--local_session ensight 2 and by {tmp_path / 'services.json'}")
    check_names(builtins + builtin_services([("envision", 1)], task.Clock(), None, {},
                                            system=FakeSystem()))


# --- start: results normalised ----------------------------------------------------


class Sync(RemoteServiceScript):
    def start(self, index, options):
        return ["127.0.0.1", 7000 + index]


class Later(RemoteServiceScript):
    def __init__(self, options):
        super().__init__(options)
        self.pending = {}

    def start(self, index, options):
        self.pending[index] = defer.Deferred()
        return self.pending[index]


class Coroutine(RemoteServiceScript):
    async def start(self, index, options):
        await self.wait_for_port("127.0.0.1", 7000 + index)
        return ("127.0.0.1", 7000 + index)


def test_a_synchronous_address_is_delivered_as_a_host_port_tuple():
    service, *_ = make(Sync)
    assert result_of(service.start(1, {})) == ("127.0.0.1", 7001)


def test_a_deferred_address_is_delivered_when_it_fires():
    service, *_ = make(Later)
    d = service.start(0, {})
    assert not d.called
    service.script.pending[0].callback(("10.0.0.5", 5901))
    assert result_of(d) == ("10.0.0.5", 5901)


def test_an_async_def_start_is_run_as_a_coroutine():
    service, system, *_ = make(Coroutine)
    d = service.start(0, {})
    [(address, waiting)] = system.waits
    assert address == ("127.0.0.1", 7000)
    waiting.callback(None)
    assert result_of(d) == ("127.0.0.1", 7000)


def test_start_receives_a_copy_of_the_options():
    seen = []

    class Recorder(Fixed):
        def start(self, index, options):
            seen.append(options)
            options["mutated"] = True
            return super().start(index, options)

    service, *_ = make(Recorder)
    options = {"token": "T", "user": "ann", "sizes": "800x600"}
    result_of(service.start(0, options))
    assert seen == [{"token": "T", "user": "ann", "sizes": "800x600", "mutated": True}]
    assert "mutated" not in options


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_an_exception_in_start_becomes_a_one_line_start_failure_naming_the_service():
    class Broken(RemoteServiceScript):
        def start(self, index, options):
            raise ValueError("no display\nfree")

    service, *_ = make(Broken)
    failure = failure_of(service.start(1, {}))
    assert failure.check(StartFailure)
    assert str(failure.value) == "service 'demo' instance 1: start failed: ValueError: no display free"
    e = failure.value
    assert (e.service, e.index, e.what, e.why, e.exit_status) == (
        "demo", 1, CRASHED, "ValueError: no display free", None)


def test_a_service_error_in_start_is_a_start_failure_with_its_words_as_the_cause():
    class Refusing(RemoteServiceScript):
        def start(self, index, options):
            raise ServiceError("no licence left")

    service, *_ = make(Refusing)
    e = failure_of(service.start(0, {})).value
    assert (e.what, e.why, e.exit_status) == (FAILED, "no licence left", None)
    assert str(e) == "service 'demo' instance 0: no licence left"
    assert e.reason == "no licence left"


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_a_failing_deferred_from_start_becomes_a_service_error():
    service, *_ = make(Later)
    d = service.start(0, {})
    service.script.pending[0].errback(OSError("boom"))
    assert str(failure_of(d).value) == "service 'demo' instance 0: start failed: OSError: boom"


@pytest.mark.parametrize("bad", [None, "127.0.0.1:5900", ("127.0.0.1",), ("127.0.0.1", "5900"),
                                 ("127.0.0.1", 0), ("127.0.0.1", 70000), ("127.0.0.1", True),
                                 ("", 5900), (b"127.0.0.1", 5900), ("a b", 1)],
                         ids=repr)
def test_a_start_result_that_is_not_host_and_port_is_a_clear_error(bad):
    class Odd(RemoteServiceScript):
        def start(self, index, options):
            return bad

    service, *_ = make(Odd)
    message = str(failure_of(service.start(0, {})).value)
    assert message.startswith("service 'demo' instance 0: start() returned ")
    assert message.endswith(", not (host, port)")


def test_starting_a_running_index_or_one_out_of_range_is_refused():
    service, *_ = make(Fixed, count=2)
    result_of(service.start(0, {}))
    assert str(failure_of(service.start(0, {})).value) == "service 'demo' instance 0 is already running"
    assert str(failure_of(service.start(2, {})).value) == "service 'demo' has no instance 2"
    assert failure_of(service.start(0, {})).value.what == BUSY
    assert failure_of(service.start(2, {})).value.what == NO_INSTANCE


def test_cancelling_a_start_fails_it_with_cancelled_error_not_a_service_error():
    service, *_ = make(Later)
    d = service.start(0, {})
    d.cancel()
    assert failure_of(d).check(defer.CancelledError)


# --- helpers: which instance a spawn belongs to --------------------------------------


def test_spawn_in_the_synchronous_part_of_start_belongs_to_that_index():
    class Spawner(RemoteServiceScript):
        def start(self, index, options):
            self.spawn(["app", str(index)])
            return ("127.0.0.1", 7000 + index)

    service, _, _, launcher = make(Spawner)
    result_of(service.start(1, {}))
    assert service.children(1) == launcher.spawned
    assert launcher.spawned[0].label == "demo[1] app"
    assert service.children(0) == []


def test_spawn_after_an_await_in_a_coroutine_belongs_to_its_index_while_others_start_too():
    class AsyncSpawner(RemoteServiceScript):
        async def start(self, index, options):
            await self.wait_for_port("127.0.0.1", 7000 + index)
            self.spawn(["after-wait", str(index)])
            return ("127.0.0.1", 7000 + index)

    service, system, *_ = make(AsyncSpawner)
    d0, d1 = service.start(0, {}), service.start(1, {})
    system.waits[1][1].callback(None)
    system.waits[0][1].callback(None)
    result_of(d0), result_of(d1)
    assert [c.argv for c in service.children(0)] == [["after-wait", "0"]]
    assert [c.argv for c in service.children(1)] == [["after-wait", "1"]]


def test_spawn_in_a_callback_of_a_helper_deferred_belongs_to_the_index_that_asked():
    class CallbackSpawner(RemoteServiceScript):
        def start(self, index, options):
            d = self.wait_for_port("127.0.0.1", 7000 + index)
            d.addCallback(lambda _: self.spawn(["viewer", str(index)]))
            return d.addCallback(lambda _: ("127.0.0.1", 7000 + index))

    service, system, *_ = make(CallbackSpawner)
    d0, d1 = service.start(0, {}), service.start(1, {})
    system.waits[1][1].callback(None)
    system.waits[0][1].callback(None)
    result_of(d0), result_of(d1)
    assert [c.argv for c in service.children(1)] == [["viewer", "1"]]
    assert [c.argv for c in service.children(0)] == [["viewer", "0"]]


class CallLaterSpawner(RemoteServiceScript):
    """Spawns from a plain callLater, where nexusws cannot see which instance runs."""

    explicit = False

    def start(self, index, options):
        d = defer.Deferred()

        def later():
            try:
                self.spawn(["late"], index=index if self.explicit else None)
                d.callback(("127.0.0.1", 7000 + index))
            except Exception:  # handed to start's caller
                d.errback()

        self.reactor.callLater(1, later)
        return d


def test_spawn_from_a_plain_call_later_belongs_to_the_one_instance_starting():
    service, _, clock, _ = make(CallLaterSpawner)
    d = service.start(1, {})
    clock.advance(1)
    assert result_of(d) == ("127.0.0.1", 7001)
    assert len(service.children(1)) == 1


def test_spawn_that_cannot_tell_its_instance_fails_the_start_asking_for_index():
    service, _, clock, _ = make(CallLaterSpawner)
    d0, d1 = service.start(0, {}), service.start(1, {})
    clock.advance(1)
    message = str(failure_of(d0).value)
    assert message == ("service 'demo' instance 0: service 'demo': spawn() cannot tell which "
                       "instance it is for here; pass index=")
    failure_of(d1)


def test_spawn_with_an_explicit_index_needs_no_guessing():
    service, _, clock, _ = make(type("Explicit", (CallLaterSpawner,), {"explicit": True}))
    d0, d1 = service.start(0, {}), service.start(1, {})
    clock.advance(1)
    result_of(d0), result_of(d1)
    assert len(service.children(0)) == len(service.children(1)) == 1


def test_spawn_for_an_index_that_is_not_running_is_refused():
    service, *_ = make(Fixed)
    with pytest.raises(ServiceError, match="spawn\\(\\) for instance 1, which is not running"):
        service.script.spawn(["x"], index=1)


def test_helpers_of_a_script_not_created_by_nexusws_say_so():
    with pytest.raises(RuntimeError, match="not created by nexusws"):
        Fixed({}).spawn(["x"])


def test_wait_for_port_with_a_child_fails_at_once_when_the_child_exits():
    class Waiter(RemoteServiceScript):
        def start(self, index, options):
            child = self.spawn(["app"])
            d = self.wait_for_port("127.0.0.1", 7000, child=child)
            return d.addCallback(lambda _: ("127.0.0.1", 7000))

    service, system, _, launcher = make(Waiter)
    d = service.start(0, {})
    launcher.spawned[0].exit(3)
    e = failure_of(d).value
    assert str(e) == ("service 'demo' instance 0: demo[0] app exited (status 3) "
                      "before 127.0.0.1:7000 accepted connections")
    assert (e.what, e.exit_status) == (FAILED, 3)
    assert e.why == "demo[0] app exited (status 3) before 127.0.0.1:7000 accepted connections"
    assert system.cancelled == [("127.0.0.1", 7000)], "the polling stopped"


# --- the backend interface ------------------------------------------------------------


def test_a_service_provides_the_session_backend_interface():
    """The local backend declares ISessionBackend and has all it asks for."""
    service, *_ = make(Fixed)
    assert verifyObject(ISessionBackend, service)
    assert ISessionBackend.providedBy(service)


def test_a_service_reports_each_instances_address_and_state():
    """address() and describe() follow an instance from start to stop, without /proc."""
    service, system, clock, launcher = make(Later)
    assert service.address(0) is None
    assert service.describe(0) == {"backend": "local", "state": None}
    d = service.start(0, {})
    assert service.address(0) is None
    assert service.describe(0) == {"backend": "local", "state": "starting", "address": None,
                                   "processes": 0}
    service.script.pending[0].callback(("::1", 7000))
    assert result_of(d) == ("::1", 7000)
    assert service.address(0) == ("::1", 7000)
    assert service.describe(0) == {"backend": "local", "state": "running", "address": "[::1]:7000",
                                   "processes": 0}
    result_of(service.stop(0))
    assert service.address(0) is None and service.describe(0)["state"] is None
    assert json.dumps(service.describe(0))


def test_stop_is_idempotent():
    """Stopping an index never started, or twice, is no error (ISessionBackend.stop)."""
    service, *_ = make(Fixed)
    assert result_of(service.stop(1)) is None
    result_of(service.start(0, {}))
    first, second = service.stop(0), service.stop(0)
    assert result_of(first) is None and result_of(second) is None
    assert result_of(service.stop(0)) is None


# --- stop ---------------------------------------------------------------------------


class Leaver(RemoteServiceScript):
    """Spawns a helper child per instance; its stop() is whatever the test sets."""

    stop_result = None

    def start(self, index, options):
        self.spawn(["server", str(index)])
        return ("127.0.0.1", 7000 + index)

    def stop(self, index):
        self.stopped = getattr(self, "stopped", []) + [index]
        result = self.stop_result
        if isinstance(result, Exception):
            raise result
        return result


def test_stop_calls_the_script_then_terminates_that_index_s_helper_children_only():
    service, system, _, launcher = make(Leaver)
    result_of(service.start(0, {})), result_of(service.start(1, {}))
    service.grace = 2.5
    result_of(service.stop(0))
    assert service.script.stopped == [0]
    assert launcher.spawned[0].terminations == [2.5]
    assert launcher.spawned[1].running and launcher.spawned[1].terminations == []
    assert system.killed == [], "a child that was terminated is not killed again"


def test_helper_children_the_script_already_ended_are_not_terminated_again():
    service, _, _, launcher = make(Leaver)
    result_of(service.start(0, {}))
    launcher.spawned[0].exit(0)
    result_of(service.stop(0))
    assert launcher.spawned[0].terminations == []


def test_helper_children_are_terminated_only_after_the_script_stop_deferred_fires():
    service, _, _, launcher = make(Leaver)
    result_of(service.start(0, {}))
    service.script.stop_result = pending = defer.Deferred()
    d = service.stop(0)
    assert launcher.spawned[0].running and not d.called
    pending.callback(None)
    assert not launcher.spawned[0].running
    assert result_of(d) is None


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_a_script_stop_that_raises_still_gets_its_processes_ended():
    service, _, _, launcher = make(Leaver)
    result_of(service.start(0, {}))
    service.script.stop_result = RuntimeError("oops")
    assert result_of(service.stop(0)) is None
    assert not launcher.spawned[0].running


def test_a_script_stop_that_never_finishes_is_cut_after_stop_timeout():
    service, _, clock, launcher = make(Leaver)
    result_of(service.start(0, {}))
    service.script.stop_result = defer.Deferred()
    d = service.stop(0)
    clock.advance(service.stop_timeout - 1)
    assert not d.called and launcher.spawned[0].running
    clock.advance(1)
    assert result_of(d) is None
    assert not launcher.spawned[0].running


def test_stop_twice_stops_once_and_the_index_can_start_again():
    service, _, _, launcher = make(Leaver)
    result_of(service.start(0, {}))
    service.script.stop_result = pending = defer.Deferred()
    first, second = service.stop(0), service.stop(0)
    pending.callback(None)
    result_of(first), result_of(second)
    assert service.script.stopped == [0]
    assert result_of(service.start(0, {})) == ("127.0.0.1", 7000)
    assert service.children(0) == [launcher.spawned[1]]


def test_stop_of_an_index_not_running_does_nothing():
    service, *_ = make(Leaver)
    assert result_of(service.stop(1)) is None
    assert not hasattr(service.script, "stopped")


def test_stop_during_start_cancels_the_start_then_stops():
    service, *_ = make(Later)
    d = service.start(0, {})
    stopped = service.stop(0)
    assert failure_of(d).check(defer.CancelledError)
    assert result_of(stopped) is None
    assert service.pids(0) == []


# --- processes started by the script's own means -------------------------------------


class OwnMeans(RemoteServiceScript):
    """Starts processes by itself (the test adds them to the fake table)."""

    system = None

    def start(self, index, options):
        self.pid = self.system.add(cmdline=f"own {index}")
        self.pending = defer.Deferred()
        return self.pending


def own_means(system=None):
    system = system or FakeSystem()
    return make(type("Own", (OwnMeans,), {"system": system}), system=system)


def test_a_process_started_in_the_synchronous_part_of_start_is_the_instance_s_and_killed_on_stop():
    service, system, _, _ = own_means()
    service.start(0, {})
    pid = service.script.pid
    service.script.pending.callback(("127.0.0.1", 7000))
    grandchild = system.add(ppid=pid)
    assert service.pids(0) == [(pid, system.table[pid].start_time),
                               (grandchild, system.table[grandchild].start_time)]
    expected = service.pids(0)
    result_of(service.stop(0))
    assert system.killed == [expected]
    assert pid not in system.table and grandchild not in system.table


def test_a_process_appearing_before_the_start_result_is_the_instance_s_when_it_starts_alone():
    service, system, _, _ = own_means()
    service.start(0, {})
    later = system.add(cmdline="daemon")
    service.script.pending.callback(("127.0.0.1", 7000))
    assert later in dict(service.pids(0))


def test_a_process_appearing_while_two_instances_start_is_attributed_to_neither():
    service, system, _, _ = own_means()
    service.start(0, {})
    first = service.script.pending
    service.start(1, {})
    unknown = system.add(cmdline="whose?")
    first.callback(("127.0.0.1", 7000))
    service.script.pending.callback(("127.0.0.1", 7001))
    assert unknown not in dict(service.pids(0)) | dict(service.pids(1))


def test_overlap_counts_across_services_since_descendants_are_process_wide():
    system, tracker = FakeSystem(), Tracker()
    cls = type("Own", (OwnMeans,), {"system": system})
    a, *_ = make(cls, system=system, tracker=tracker, name="a")
    b, *_ = make(cls, system=system, tracker=tracker, name="b")
    a.start(0, {})
    b.start(0, {})
    unknown = system.add()
    a.script.pending.callback(("127.0.0.1", 1))
    b.script.pending.callback(("127.0.0.1", 2))
    assert unknown not in dict(a.pids(0)) | dict(b.pids(0))


def test_an_instance_still_ending_its_processes_does_not_block_attribution_for_a_new_start():
    service, system, _, _ = own_means()
    service.start(0, {})
    service.script.pending.callback(("127.0.0.1", 7000))
    system.kill_result = defer.Deferred()  # instance 0's leftovers take their grace period
    stopping = service.stop(0)
    service.start(1, {})
    later = system.add(cmdline="daemon of 1")
    service.script.pending.callback(("127.0.0.1", 7001))
    assert later in dict(service.pids(1))
    system.kill_result.callback([])
    assert result_of(stopping) is None


def test_a_script_stop_in_progress_makes_a_concurrent_start_ambiguous():
    class SlowStop(OwnMeans):
        def stop(self, index):
            self.stopping = defer.Deferred()
            return self.stopping

    system = FakeSystem()
    service, *_ = make(type("S", (SlowStop,), {"system": system}), system=system)
    service.start(0, {})
    service.script.pending.callback(("127.0.0.1", 7000))
    service.stop(0)
    service.start(1, {})
    unknown = system.add(cmdline="started by stop(0) or start(1)?")
    service.script.pending.callback(("127.0.0.1", 7001))
    assert unknown not in dict(service.pids(1))
    service.script.stopping.callback(None)


def test_a_new_process_below_another_instance_s_process_stays_that_instance_s():
    class Forker(OwnMeans):
        def start(self, index, options):
            if index == 1:  # meanwhile a process of instance 0 forks
                self.forked = self.system.add(ppid=self.zero)
            return super().start(index, options)

    system = FakeSystem()
    service, *_ = make(type("F", (Forker,), {"system": system}), system=system)
    service.start(0, {})
    service.script.zero = service.script.pid
    service.script.pending.callback(("127.0.0.1", 1))
    service.start(1, {})
    service.script.pending.callback(("127.0.0.1", 2))
    assert service.script.forked in dict(service.pids(0))
    assert service.script.forked not in dict(service.pids(1))


def test_processes_the_script_ended_itself_and_reused_pids_are_not_killed():
    service, system, _, _ = own_means()
    service.start(0, {})
    pid = service.script.pid
    service.script.pending.callback(("127.0.0.1", 7000))
    del system.table[pid]
    system.add(pid=pid, cmdline="someone else's, same pid")
    assert service.pids(0) == []
    result_of(service.stop(0))
    assert system.killed == []
    assert pid in system.table


def test_exited_processes_awaiting_reaping_are_not_listed():
    service, system, _, _ = own_means()
    service.start(0, {})
    service.script.pending.callback(("127.0.0.1", 7000))
    system.add(ppid=service.script.pid, state="Z")
    assert [pid for pid, _ in service.pids(0)] == [service.script.pid]


def test_pids_lists_running_helper_children_and_their_descendants():
    service, system, _, launcher = make(Leaver)
    result_of(service.start(0, {}))
    child = launcher.spawned[0]
    below = system.add(ppid=child.pid)
    assert [pid for pid, _ in service.pids(0)] == [child.pid, below]
    child.exit(0)
    assert service.pids(0) == []


# --- built-in services ------------------------------------------------------------------


def free_ports(count):
    """A base port such that base..base+count-1 are free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.fail("no block of free ports")


def builtins(specs, executables, system=None):
    system = system or FakeSystem()
    launcher = FakeLauncher(system)
    services = builtin_services(specs, task.Clock(), launcher, executables, system=system)
    return services, system, launcher


def test_builtin_services_are_ensight_and_envision_with_local_aliases():
    services, *_ = builtins([("ensight", 2), ("envision", 3)], {})
    assert [(s.name, s.aliases, s.count, s.common_options, s.group) for s in services] == [
        ("ensight", ("local_ensight",), 2, {}, None),
        ("envision", ("local_envision",), 3, {}, None)]


def test_builtin_vnc_ports_interleave_so_ensight_and_envision_never_collide():
    services, *_ = builtins([("ensight", 4), ("envision", 4)], {"vnc_port_base": 6000})
    ensight, envision = ([s.script.port(i) for i in range(4)] for s in services)
    assert ensight == [6000, 6002, 6004, 6006]
    assert envision == [6001, 6003, 6005, 6007]
    default, *_ = builtins([("ensight", 1)], {})
    assert default[0].script.port(0) == DEFAULT_VNC_PORT_BASE == 5900


def test_builtin_start_runs_the_program_with_its_vnc_port_and_tunnels_to_it():
    base = free_ports(2)
    [service], system, launcher = builtins([("envision", 1)],
                                           {"envision": sys.executable, "vnc_port_base": base})
    d = service.start(0, {"token": "T"})
    [child] = launcher.spawned
    assert child.argv == [sys.executable, "-vnc", f"vnc://?rfb_port={base + 1}&use_auth=0"]
    assert child.label == "envision[0]"
    [(address, waiting)] = system.waits
    assert address == ("127.0.0.1", base + 1)
    waiting.callback(None)
    assert result_of(d) == ("127.0.0.1", base + 1)
    result_of(service.stop(0))
    assert child.terminations == [5.0]


def test_builtin_password_option_becomes_a_percent_encoded_primary_password():
    base = free_ports(1)
    [service], _, launcher = builtins([("ensight", 1)],
                                      {"ensight": sys.executable, "vnc_port_base": base})
    service.start(0, {"password": "v&r ?=ca"})
    assert launcher.spawned[0].argv[2] == f"vnc://?rfb_port={base}&primary_password=v%26r%20%3F%3Dca"


def test_builtin_with_no_executable_on_path_fails_the_start_with_one_line_not_a_crash(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    [service], _, launcher = builtins([("ensight", 1)], {"ensight": None})
    failure = failure_of(service.start(0, {}))
    assert str(failure.value) == ("service 'ensight' instance 0: no ensight executable: 'ensight' "
                                  "is not on PATH (set --ensight_executable or NEXUSWS_ENSIGHT)")
    assert launcher.spawned == []
    result_of(service.stop(0))
    fake = tmp_path / "ensight"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    service.script.vnc_port_base = free_ports(1)
    service.start(0, {})
    assert launcher.spawned[0].argv[0] == str(fake), "found once it is installed, no restart"


def test_builtin_with_a_configured_executable_that_does_not_exist_names_the_option(tmp_path):
    [service], *_ = builtins([("envision", 1)], {"envision": str(tmp_path / "nope")})
    assert str(failure_of(service.start(0, {})).value) == (
        f"service 'envision' instance 0: no envision executable: {tmp_path / 'nope'} does not "
        f"exist or is not executable (set --envision_executable or NEXUSWS_ENVISION)")


def test_builtin_refuses_a_vnc_port_already_in_use_instead_of_tunnelling_to_a_stranger():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        [service], _, launcher = builtins([("ensight", 1)],
                                          {"ensight": sys.executable, "vnc_port_base": port})
        message = str(failure_of(service.start(0, {})).value)
    assert message == f"service 'ensight' instance 0: VNC port {port} is already in use"
    assert launcher.spawned == []


@pytest.mark.parametrize(("specs", "executables", "message"), [
    ([("paraview", 1)], {}, "--local_session: unknown application 'paraview' (known: ensight, envision)"),
    ([("ensight", 1), ("ensight", 2)], {}, "--local_session ensight is given more than once"),
    ([("ensight", 0)], {}, "--local_session ensight: the count must be a positive integer, not 0"),
    ([("envision", 10)], {"vnc_port_base": 65520},
     "--local_session envision 10: its VNC ports would reach 65539, above 65535 (VNC port base 65520)"),
    ([("ensight", 1)], {"vnc_port_base": "5900"}, "VNC port base must be a port number, not '5900'"),
], ids=["unknown_app", "repeated_app", "count_zero", "ports_beyond_65535", "base_not_int"])
def test_builtin_specification_mistakes_stop_start_up_with_one_line(specs, executables, message):
    with pytest.raises(StartupError) as info:
        builtins(specs, executables)
    assert str(info.value) == message


# --- real processes ------------------------------------------------------------------


def tagged(tag):
    """Live processes whose command line holds C{tag}."""
    return [p for p in procs.all_processes().values() if tag in p.cmdline and procs.is_alive(p)]


@pytest.fixture
def harness(tmp_path):
    """Runs tests/services/run_services.py; returns (report, its log); kills leftovers after."""
    tag = f"nexusws-test-{uuid.uuid4().hex[:12]}"

    def run(*args):
        out, log = tmp_path / "report.json", tmp_path / "log.txt"
        # A file, not a pipe, for the log: processes left behind must not hold the test up.
        with open(log, "w") as stderr:
            proc = subprocess.run(
                [sys.executable, str(HERE / "run_services.py"), "--tag", tag, "--out", str(out),
                 *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                timeout=120, check=False,
            )
        assert proc.returncode == 0, log.read_text()[-5000:]
        return json.loads(out.read_text()), log.read_text()

    run.tag = tag
    yield run
    for leftover in tagged(tag):
        os.kill(leftover.pid, signal.SIGKILL)


def stand_in(directory, name, tag):
    """An executable C{name} in a directory named after C{tag}, running fake_ensight.py."""
    folder = directory / tag
    folder.mkdir(exist_ok=True)
    program = folder / name
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_ensight.py"}" "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return str(program)


def test_no_process_outlives_stop_for_helper_spawnprocess_and_popen_scripts(harness):
    """Helper children and their grandchildren, a plain reactor.spawnProcess server that
    ignores SIGTERM (and its child), and a daemon double-forked from subprocess.Popen:
    each script's stop() leaves them running, nexusws ends them all."""
    report, log = harness("--config", str(HERE / "integration.json"))
    assert report["errors"] == []
    greetings = sorted((i["service"], i["index"], i["greeting"]) for i in report["instances"])
    assert greetings == [("helper", 0, "helper 0\n"), ("helper", 1, "helper 1\n"),
                         ("popen", 0, "popen 0\n"), ("spawnprocess", 0, "spawnprocess 0\n"),
                         ("spawnprocess", 1, "spawnprocess 1\n")]
    counts = {(i["service"], i["index"]): len(i["pids"]) for i in report["instances"]}
    # helper: the supervisor (nexusws.sessions.supervisor), the program, its grandchild
    assert counts == {("helper", 0): 3, ("helper", 1): 3, ("spawnprocess", 0): 2,
                      ("spawnprocess", 1): 2, ("popen", 0): 1}
    assert report["left"] == []
    assert "sending SIGKILL" in log, "the spawnProcess server ignored SIGTERM"
    assert tagged(harness.tag) == []


def test_no_process_outlives_stop_when_instances_start_concurrently(harness, tmp_path):
    """Overlapping starts: helper children and processes forked in start() itself stay attributed."""
    config = {name: dict(spec, script=str(HERE / spec["script"]))
              for name, spec in json.loads((HERE / "integration.json").read_text()).items()
              if name != "popen"}
    path = tmp_path / "concurrent.json"
    path.write_text(json.dumps(config))
    report, _ = harness("--config", str(path), "--concurrent")
    assert report["errors"] == []
    assert len(report["instances"]) == 4
    # helper: the supervisor (nexusws.sessions.supervisor), the program, its grandchild
    assert all(len(i["pids"]) == (3 if i["service"] == "helper" else 2) for i in report["instances"])
    assert report["left"] == []
    assert tagged(harness.tag) == []


def test_builtin_ensight_and_envision_run_the_stand_in_on_derived_ports_and_leave_nothing(
        harness, tmp_path):
    base = free_ports(4)
    ensight = stand_in(tmp_path, "ensight", harness.tag)
    envision = stand_in(tmp_path, "envision", harness.tag)
    report, log = harness("--local", "ensight=2", "--local", "envision=1", "--ensight", ensight,
                          "--envision", envision, "--vnc-port-base", str(base))
    assert report["errors"] == []
    got = sorted((i["service"], i["index"], tuple(i["address"]), i["greeting"])
                 for i in report["instances"])
    assert got == [("ensight", 0, ("127.0.0.1", base), "RFB 003.008\n"),
                   ("ensight", 1, ("127.0.0.1", base + 2), "RFB 003.008\n"),
                   ("envision", 0, ("127.0.0.1", base + 1), "RFB 003.008\n")]
    assert f"VNC on 127.0.0.1:{base + 2}, auth none" in log
    assert report["left"] == []
    assert tagged(harness.tag) == []


def test_builtin_password_reaches_the_stand_in_as_primary_password(harness, tmp_path):
    base = free_ports(1)
    ensight = stand_in(tmp_path, "ensight", harness.tag)
    report, log = harness("--local", "ensight=1", "--ensight", ensight,
                          "--vnc-port-base", str(base), "--password", "veronica")
    assert report["errors"] == []
    assert f"VNC on 127.0.0.1:{base}, auth password" in log


def test_builtin_program_that_exits_at_once_fails_its_start_quickly_with_the_status(
        harness, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENSIGHT_EXIT", "4")
    ensight = stand_in(tmp_path, "ensight", harness.tag)
    report, _ = harness("--local", "ensight=1", "--ensight", ensight,
                        "--vnc-port-base", str(free_ports(1)))
    [error] = report["errors"]
    assert error.startswith("service 'ensight' instance 0: ensight[0] exited (status 4) before ")
    assert tagged(harness.tag) == []


def test_builtin_missing_executable_is_a_start_error_under_the_real_reactor(harness, tmp_path):
    report, _ = harness("--local", "ensight=1", "--ensight", str(tmp_path / "none"))
    assert report["errors"] == [
        (f"service 'ensight' instance 0: no ensight executable: {tmp_path / 'none'} does not "
         f"exist or is not executable (set --ensight_executable or NEXUSWS_ENSIGHT)")]
