"""--keep_sessions (issue 15, item 6) in memory: the registry keeps its running instances at
shutdown, records them, and the next run's registry adopts them from that record.

Two registries on Clocks stand for two runs; the state file is the snapshot the first
recorded last. Processes are a fake table (C{Family}); the real thing, with a real
gateway, SIGTERM and a restart: test_keep_sessions_gateway.py."""

import copy
import json

import pytest
from twisted.internet import defer
from twisted.logger import formatEvent

from nexusws.routing import Launch
from nexusws.sessions.records import check_reservation
from support.deferreds import result_of
from support.reservations import ADDRESS, EPOCH, World

PROCS = [(4101, 777), (4102, 778)]


class Family:
    """The injected process lookup: the processes in C{alive} (pid -> start time) that
    are among the roots asked about, or descend from them (C{children})."""

    def __init__(self, alive=None, children=None):
        self.alive = dict(PROCS) if alive is None else alive
        self.children = children or {}

    def __call__(self, roots):
        found = {pid: st for pid, st in roots.items() if self.alive.get(pid) == st}
        for pid in list(found):
            found.update((c, self.alive[c]) for c in self.children.get(pid, ()) if c in self.alive)
        return found


def first_run(family=None, **kwargs):
    world = World(keep_sessions=True, family=family or Family(), reconnect_grace=30.0, **kwargs)
    world.service.processes[0] = list(PROCS)
    return world


def running(world):
    r = world.registry.reserve("demo", {"size": "800x600"}, user="alice")
    launch = Launch(None, lambda why: world.registry.deactivate(r.token, launch, why), "demo#0")
    assert result_of(world.registry.activate(r.token, attachment=launch)) == ADDRESS
    return r, launch


def state_file(world):
    """What the state file holds after the run: its last snapshot, as JSON gives it back."""
    return json.loads(json.dumps(world.changes[-1]))


def second_run(data, family=None, at=10.0, **kwargs):
    """The next run, started C{at} seconds (wall clock) after the first began."""
    kwargs.setdefault("reconnect_grace", 30.0)
    world = World(keep_sessions=True, family=family or Family(), **kwargs)
    world.clock.advance(1000)  # another run's reactor clock: nothing to do with the first's
    world.registry.restore(data, now=EPOCH + at)
    return world


def test_shutdown_keeps_a_running_instance_and_records_what_the_next_run_needs(events):
    world = first_run()
    r, launch = running(world)
    world.clock.advance(5)
    launch.input(world.clock.seconds())
    world.clock.advance(3)
    assert result_of(world.registry.shutdown()) is None
    assert world.service.stops == [] and world.killer.calls == [], "nothing stopped or killed"
    (record,) = state_file(world)["reservations"]
    assert record["state"] == "active" and record["kept"] is True
    assert record["address"] == list(ADDRESS) and record["pids"] == [list(p) for p in PROCS]
    assert (record["started"], record["last_input"]) == (EPOCH, EPOCH + 5)
    assert "token" in record and record["user"] == "alice"
    lines = [formatEvent(e) for e in events]
    assert any(line.endswith("demo#0: kept running for the next run (2 process(es))") for line in lines)
    # Its WebSocket closing at shutdown (1001) ends nothing.
    assert result_of(launch.end("server shutting down")) is None
    assert r.state == "active" and world.service.stops == []


def test_the_next_run_adopts_it_detached_and_the_token_re_attaches_without_a_launch(events):
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    second = second_run(state_file(first))
    adopted = second.registry.get(r.token)
    assert adopted is not None and (adopted.state, adopted.index, adopted.user) == ("detached", 0, "alice")
    assert second.killer.calls == [], "its processes are not the previous run's leftovers"
    assert second.registry.status()[0]["instances"][0]["grace_left"] == 30.0
    launch = Launch(None, lambda why: None, "demo#0")
    assert result_of(second.registry.activate(r.token, attachment=launch)) == ADDRESS
    assert second.service.starts == [] and second.ports.calls == []
    lines = [formatEvent(e) for e in events]
    assert any("demo#0: kept -> detached (adopted from the previous run; grace 30 s)" in line for line in lines)
    assert r.token not in "\n".join(lines)


def test_stopping_an_adopted_instance_ends_its_processes_not_the_services_stop():
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    family = Family(alive={**dict(PROCS), 4200: 900}, children={4101: [4200]})
    second = second_run(state_file(first), family=family)
    assert second.registry.get(r.token).pids == [(4101, 777), (4102, 778)]
    second.registry.reap()  # its processes as they are now: a child appeared
    assert second.registry.get(r.token).pids == [(4101, 777), (4102, 778), (4200, 900)]
    d = second.registry.release(r.token)
    (procs, grace, killed) = second.killer.calls[0]
    assert sorted(procs) == [(4101, 777), (4102, 778), (4200, 900)] and second.service.stops == []
    killed.callback([])
    assert result_of(d) is None and second.registry.get(r.token) is None


def test_its_grace_runs_out_like_any_detached_ones():
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    second = second_run(state_file(first))
    second.clock.advance(29.9)
    assert second.registry.get(r.token).state == "detached"
    second.clock.advance(0.1)
    assert second.registry.get(r.token).state == "stopping" and len(second.killer.calls) == 1


def test_its_limits_go_on_from_where_they_were():
    limits = {"max_duration": 100, "idle_timeout": 60, "idle_warning": 10}
    first = first_run(limits=limits)
    r, launch = running(first)
    first.clock.advance(20)
    launch.input(first.clock.seconds())
    first.clock.advance(10)
    first.registry.shutdown()
    # Stopped 30 s after its start, started again 10 s later.
    second = second_run(state_file(first), at=40.0, limits=limits, reconnect_grace=1000)
    snapshot = second.registry.session(r.token)
    assert snapshot["time_left"] == 100 - 40 and snapshot["idle"] == 40 - 20
    second.clock.pump([0, 39.9])
    assert second.registry.get(r.token).state == "detached"
    second.clock.advance(0.1)  # 60 s without input since the one 20 s in
    assert second.registry.get(r.token).state == "stopping"
    last = second.registry.events_of(r.token).events[-1]
    assert (last["event"], last["reason"]) == ("ending", "idle")


def test_a_kept_instance_whose_processes_are_gone_is_ended(events):
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    second = second_run(state_file(first), family=Family(alive={}))
    assert second.registry.get(r.token) is None
    assert any("kept instance" in formatEvent(e) and "ended: its processes are gone" in formatEvent(e)
               for e in events)


def test_a_pid_reused_by_another_process_is_not_adopted():
    first = first_run()
    running(first)
    first.registry.shutdown()
    second = second_run(state_file(first), family=Family(alive={4101: 999, 4102: 998}))
    assert second.registry.status()[0]["instances"] == []


def test_a_starting_instance_is_stopped_even_when_keeping():
    first = first_run()
    first.service.start_result = lambda index: defer.Deferred()
    r = first.registry.reserve("demo")
    starting = first.registry.activate(r.token)
    first.registry.shutdown()
    assert r.state in ("stopping", "released") and first.service.stops == [0]
    failures = []
    starting.addErrback(failures.append)
    assert "stopped before it started (server shutting down)" in failures[0].getErrorMessage()


def test_without_keep_sessions_shutdown_stops_everything_as_before():
    world = World(family=Family(), reconnect_grace=30.0)
    world.service.processes[0] = list(PROCS)
    running(world)
    world.registry.shutdown()
    assert world.service.stops == [0]
    assert state_file(world)["reservations"] == [], "stopped and released: nothing to keep"
    assert not any("kept" in record for data in world.changes for record in data["reservations"])


def test_an_adopted_instance_that_is_not_kept_again_is_ended_by_the_run_after():
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    second = second_run(state_file(first))
    # The second run crashes (no shutdown): its state file says detached, not kept.
    data = state_file(second)
    (record,) = data["reservations"]
    assert record["state"] == "detached" and "kept" not in record
    third = second_run(data)
    assert third.registry.get(r.token) is None
    assert sorted(third.killer.calls[0][0]) == sorted(PROCS)


@pytest.mark.parametrize("field, value", [
    ("address", None), ("address", ["127.0.0.1"]), ("address", ["127.0.0.1", 0]), ("address", ["", 5900]),
    ("address", ["127.0.0.1", "5900"]), ("started", "yesterday"), ("started", -1.0),
    ("last_input", float("inf")), ("extended", True), ("bytes", [1]), ("bytes", [-1, 0]),
])
def test_a_malformed_kept_record_is_refused_field_by_field(field, value):
    first = first_run()
    running(first)
    first.registry.shutdown()
    (record,) = state_file(first)["reservations"]
    check_reservation(record)
    bad = copy.deepcopy(record)
    bad[field] = value
    with pytest.raises((TypeError, ValueError), match=field.split("_")[0]):
        check_reservation(bad)


def test_a_kept_record_checked_twice_is_the_same():
    """The state file's reader checks each record, and the restore checks it again."""
    first = first_run()
    running(first)
    first.registry.shutdown()
    (record,) = state_file(first)["reservations"]
    once = check_reservation(record)
    assert check_reservation(once) == once and once["kept"] is True and once["address"] == list(ADDRESS)


def test_event_ids_go_on_across_the_adoption_so_a_pages_last_event_id_misses_nothing():
    """Found by the hostile review: the next run's log began at 1 again, and a page
    reconnecting with Last-Event-ID 4 skipped its first four events (how the session ended)."""
    first = first_run()
    r, _ = running(first)
    seen = first.registry.events_of(r.token).last_id
    assert seen == 4  # reserved, starting, ready, attached
    first.registry.shutdown()
    assert state_file(first)["reservations"][0]["events"] == seen
    second = second_run(state_file(first))
    log = second.registry.events_of(r.token)
    assert [(e["id"], e["event"]) for e in log.events] == [(5, "detached")]
    events, lost = log.after(seen)
    assert [e["event"] for e in events] == ["detached"] and not lost


def test_a_state_file_of_another_boot_names_no_process_nothing_is_adopted_or_signalled(events):
    """After a reboot a recorded pid and start time may be anyone's process now."""
    first = first_run()
    r, _ = running(first)
    first.registry.shutdown()
    data = dict(state_file(first), boot="boot-A", orphans=[[4300, 12]])
    second = second_run(data, boot_id="boot-B")
    assert second.registry.get(r.token) is None and second.killer.calls == []
    assert any("recorded before a reboot; its processes are gone (1 kept instance(s) ended, 3 process(es) "
               "left alone)" in formatEvent(e) for e in events)
    same_boot = second_run(dict(data, boot="boot-B"), boot_id="boot-B")
    assert same_boot.registry.get(r.token).state == "detached"
