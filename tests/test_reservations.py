"""In-memory tests of the reservation registry: fake services, a Clock, no processes."""

import hashlib
import json
import re
import uuid

import pytest
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nexusws.errors import StartupError
from nexusws.logs import printable
from nexusws.sessions.backend import (
    CRASHED,
    CUT_SHORT,
    FAILED,
    NOT_READY,
    IQueuedBackend,
    ISessionBackend,
    StartFailure,
    as_address,
)
from nexusws.sessions.registry import (
    NoFreeInstance,
    TokenInUse,
    UnknownService,
    UnknownToken,
)
from support.deferreds import failure_of, result_of
from support.reservations import ADDRESS, EPOCH, FakeService, World


@pytest.fixture
def world():
    return World()


@pytest.fixture
def log():
    """The text of every log event emitted during the test."""
    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def not_fired(d):
    """True if C{d} has not fired (its result, if any, is left in place)."""
    return not d.called


# --- reserve ---------------------------------------------------------------------


def test_reserve_hands_out_the_lowest_free_index():
    w = World([FakeService(count=3)])
    a, b, c = (w.registry.reserve("demo", {}) for _ in range(3))
    assert [a.index, b.index, c.index] == [0, 1, 2]
    result_of(w.registry.release(b.token))
    assert w.registry.reserve("demo", {}).index == 1


def test_reserve_beyond_count_raises_no_free_instance(world):
    world.registry.reserve("demo")
    world.registry.reserve("demo")
    with pytest.raises(NoFreeInstance, match="all 2 instance"):
        world.registry.reserve("demo")


def test_reserve_of_an_unknown_service_raises_unknown_service(world):
    with pytest.raises(UnknownService, match="nope"):
        world.registry.reserve("nope", {})
    assert world.changes == []


def test_aliases_reach_the_same_service_and_share_its_indices():
    w = World([FakeService("ensight", count=2, aliases=("local_ensight",))])
    a = w.registry.reserve("ensight")
    b = w.registry.reserve("local_ensight")
    assert (a.service, b.service, a.index, b.index) == (w.service, w.service, 0, 1)
    with pytest.raises(NoFreeInstance):
        w.registry.reserve("local_ensight")
    assert w.registry.service("ensight") is w.registry.service("local_ensight") is w.service
    assert w.registry.service("nope") is None


def test_two_services_sharing_a_name_or_alias_is_a_startup_error():
    with pytest.raises(StartupError, match="'local_ensight' is used by two services"):
        World([FakeService("ensight", aliases=("local_ensight",)), FakeService("local_ensight")])


def test_tokens_are_distinct_uuid4_strings(world):
    tokens = [world.registry.reserve("demo").token for _ in range(2)]
    assert len(set(tokens)) == 2
    for token in tokens:
        assert isinstance(token, str) and uuid.UUID(token).version == 4


def test_reserve_keeps_options_and_user(world):
    r = world.registry.reserve("demo", {"size": "800x600"}, user="alice")
    assert (r.options, r.user, r.state) == ({"size": "800x600"}, "alice", "reserved")


# --- activate --------------------------------------------------------------------


def test_activate_starts_with_options_token_and_user_then_waits_for_the_port(world):
    r = world.registry.reserve("demo", {"size": "800x600"}, user="alice")
    world.ports.open = set()
    d = world.registry.activate(r.token)
    assert world.service.starts == [(0, {"size": "800x600", "token": r.token, "user": "alice"})]
    assert world.ports.calls == [("127.0.0.1", 5900, 30.0)]
    assert r.state == "starting" and not_fired(d)
    world.ports.pending[0].callback(None)
    assert result_of(d) == ADDRESS
    assert r.state == "active" and r.address == ADDRESS
    assert r.options == {"size": "800x600"}, "the reservation's own options are not touched"


def test_activate_without_a_user_passes_no_user_option(world):
    r = world.registry.reserve("demo", {"a": "1"})
    result_of(world.registry.activate(r.token))
    assert world.service.starts == [(0, {"a": "1", "token": r.token})]


def test_activate_accepts_a_start_returning_a_deferred(world):
    pending = defer.Deferred()
    world.service.start_result = lambda index: pending
    r = world.registry.reserve("demo")
    d = world.registry.activate(r.token)
    assert not_fired(d) and world.ports.calls == []
    pending.callback(["127.0.0.1", "5900"])
    assert result_of(d) == ADDRESS


@pytest.mark.parametrize("how", ["never issued", "released", "expired"])
def test_activate_of_an_unknown_released_or_expired_token_raises_unknown_token(world, how):
    token = str(uuid.uuid4())
    if how != "never issued":
        token = world.registry.reserve("demo").token
        if how == "released":
            world.registry.release(token)
        else:
            world.registry.start_reaper()
            world.clock.advance(301)
    with pytest.raises(UnknownToken):
        world.registry.activate(token)
    assert world.service.starts == []


def test_activate_of_a_token_already_starting_or_active_raises_token_in_use(world):
    world.ports.open = set()
    r = world.registry.reserve("demo")
    world.registry.activate(r.token)
    with pytest.raises(TokenInUse):
        world.registry.activate(r.token)
    world.ports.pending[0].callback(None)
    assert r.state == "active"
    with pytest.raises(TokenInUse):
        world.registry.activate(r.token)
    assert len(world.service.starts) == 1


def _raise(exc):
    raise exc


@pytest.mark.parametrize("how", ["raises", "errbacks", "returns garbage"])
def test_a_failed_start_stops_the_instance_frees_the_index_and_fails_with_one_line(world, log, how):
    world.service.start_result = {
        "raises": lambda i: _raise(RuntimeError("boom\nsecond line")),
        "errbacks": lambda i: defer.fail(RuntimeError("boom\nsecond line")),
        "returns garbage": lambda i: None,
    }[how]
    r = world.registry.reserve("demo")
    error = failure_of(world.registry.activate(r.token), StartFailure).value
    assert "\n" not in str(error)
    assert str(error).startswith("service 'demo' instance 0 failed to start: ")
    assert ("RuntimeError: boom" if how != "returns garbage" else "not (host, port)") in str(error)
    assert world.service.stops == [0]
    assert world.states() == {}
    assert world.registry.reserve("demo").index == 0
    assert any("starting -> stopping (start failed: " in line for line in log)


@pytest.mark.parametrize("address", [None, "127.0.0.1:5900", ("127.0.0.1",), ("127.0.0.1", "x"),
                                     ("127.0.0.1", 5900, 1)], ids=repr)
def test_a_start_that_delivers_no_address_fails_and_frees_the_index(world, address):
    """What a backend's start delivers must be a (host, port) pair whose port is a number
    (nexusws.sessions.backend.as_address, lenient; the local backend checks its scripts strictly)."""
    world.service.start_result = lambda i: address
    r = world.registry.reserve("demo")
    error = failure_of(world.registry.activate(r.token), StartFailure).value
    assert error.what == NOT_READY, str(error)
    assert error.why == f"start() returned {printable(repr(address))}, not (host, port)"
    assert world.service.stops == [0] and world.states() == {}


def test_as_address_is_strict_for_scripts_and_lenient_for_any_backend():
    assert as_address(("127.0.0.1", 5900)) == as_address(["127.0.0.1", 5900]) == ("127.0.0.1", 5900)
    for loose in [("127.0.0.1", "5900"), ("", 5900), ("a b", 1), ("127.0.0.1", 0), ("127.0.0.1", True)]:
        assert as_address(loose) is None, loose
        assert as_address(loose, lenient=True) == (str(loose[0]), int(loose[1]))
    for bad in [None, "127.0.0.1:5900", ("127.0.0.1",), ("127.0.0.1", "x")]:
        assert as_address(bad) is None and as_address(bad, lenient=True) is None, bad


def test_a_backends_start_failure_is_passed_on_as_it_is_not_named_twice(world, log):
    """The backend's StartFailure names the instance: the registry fails with it unchanged,
    and logs it whole."""
    error = StartFailure("demo", 0, CRASHED, "RuntimeError: script crashed")
    world.service.start_result = lambda i: defer.fail(error)
    r = world.registry.reserve("demo")
    assert failure_of(world.registry.activate(r.token), StartFailure).value is error
    assert str(error) == "service 'demo' instance 0: start failed: RuntimeError: script crashed"
    assert any(line.endswith("starting -> stopping (start failed: service 'demo' instance 0: "
                             "start failed: RuntimeError: script crashed)") for line in log)


def test_a_port_that_never_opens_times_out_at_start_timeout_and_is_cleaned_up(world, log):
    world.ports.open = set()
    r = world.registry.reserve("demo")
    d = world.registry.activate(r.token)
    world.clock.advance(29.9)
    assert not_fired(d) and world.service.stops == []
    world.clock.advance(0.1)
    error = failure_of(d, StartFailure).value
    assert str(error) == ("service 'demo' instance 0 failed to start: "
                          "127.0.0.1:5900 did not accept connections within 30 s")
    assert (error.service, error.index, error.what, error.exit_status) == ("demo", 0, NOT_READY, None)
    assert error.why == "127.0.0.1:5900 did not accept connections within 30 s"
    assert error.reason == "failed to start: 127.0.0.1:5900 did not accept connections within 30 s"
    assert any(line.endswith("starting -> stopping (start failed: 127.0.0.1:5900 did not accept "
                             "connections within 30 s)") for line in log)
    assert world.service.stops == [0]
    assert world.states() == {} and world.registry.reserve("demo").index == 0
    assert world.clock.getDelayedCalls() == []


def test_cancelling_the_activation_stops_the_instance_and_does_not_cut_the_stop_short(world, log):
    world.ports.open = set()
    stopping = defer.Deferred()
    world.service.stop_result = lambda i: stopping
    r = world.registry.reserve("demo")
    d = world.registry.activate(r.token)
    d.cancel()  # while waiting for the port
    assert r.state == "stopping" and world.service.stops == [0]
    d.cancel()  # again, while the instance stops
    d.addErrback(lambda f: None)
    assert r.state == "stopping"
    stopping.callback(None)
    assert r.state == "released"
    assert not any("stop failed" in line for line in log)


def test_a_start_that_never_returns_times_out_too(world):
    world.service.start_result = lambda i: defer.Deferred()
    r = world.registry.reserve("demo")
    d = world.registry.activate(r.token)
    world.clock.advance(30)
    assert "start() gave no address within 30 s" in str(failure_of(d, StartFailure).value)
    assert world.service.stops == [0] and world.states() == {}


def test_the_port_waiter_gets_only_the_time_left_of_the_start_timeout(world):
    pending = defer.Deferred()
    world.service.start_result = lambda i: pending
    r = world.registry.reserve("demo")
    world.registry.activate(r.token)
    world.clock.advance(10)
    pending.callback(ADDRESS)
    assert world.ports.calls == [("127.0.0.1", 5900, 20.0)]


def test_an_address_accepting_in_time_cancels_the_start_timer(world):
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    assert world.clock.getDelayedCalls() == []
    world.clock.advance(1000)
    assert r.state == "active" and world.service.stops == []


# --- deactivate, release -------------------------------------------------------


def test_deactivate_of_an_active_instance_stops_it_and_frees_the_index(world):
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    stopping = defer.Deferred()
    world.service.stop_result = lambda i: stopping
    d = world.registry.deactivate(r.token)
    assert r.state == "stopping" and world.service.stops == [0] and not_fired(d)
    assert world.registry.reserve("demo").index == 1, "a stopping instance still holds its index"
    stopping.callback(None)
    assert result_of(d) is None and r.state == "released"
    assert world.registry.reserve("demo").index == 0


def test_deactivate_while_starting_cancels_the_start_stops_and_fails_the_activation(world):
    world.ports.open = set()
    r = world.registry.reserve("demo")
    activation = world.registry.activate(r.token)
    done = world.registry.deactivate(r.token)
    assert result_of(done) is None
    error = failure_of(activation, StartFailure).value
    assert str(error) == "service 'demo' instance 0 was stopped before it started (WebSocket closed)"
    assert (error.what, error.why) == (CUT_SHORT, "WebSocket closed")
    assert error.reason == "was stopped before it started (WebSocket closed)"
    assert world.service.stops == [0] and world.states() == {}
    assert world.clock.getDelayedCalls() == []


def test_deactivate_of_a_reserved_unknown_or_ended_token_is_a_harmless_no_op(world):
    r = world.registry.reserve("demo")
    assert result_of(world.registry.deactivate(r.token)) is None
    assert r.state == "reserved", "a stray deactivate must not free someone's reservation"
    assert result_of(world.registry.deactivate(str(uuid.uuid4()))) is None
    world.registry.release(r.token)
    assert result_of(world.registry.deactivate(r.token)) is None
    assert world.service.stops == []


def test_release_of_a_reserved_token_frees_it_at_once_without_stopping(world):
    r = world.registry.reserve("demo")
    assert result_of(world.registry.release(r.token)) is None
    assert r.state == "released" and world.service.stops == [] and world.states() == {}
    with pytest.raises(UnknownToken):
        world.registry.release(r.token)


def test_release_of_an_active_token_stops_the_instance_then_frees_it(world):
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    stopping = defer.Deferred()
    world.service.stop_result = lambda i: stopping
    d = world.registry.release(r.token)
    again = world.registry.release(r.token)
    assert r.state == "stopping" and not_fired(d) and not_fired(again)
    with pytest.raises(UnknownToken):
        world.registry.activate(r.token)
    stopping.callback(None)
    assert result_of(d) is None and result_of(again) is None
    assert world.service.stops == [0] and world.states() == {}


def test_release_while_starting_stops_and_frees(world):
    world.ports.open = set()
    r = world.registry.reserve("demo")
    activation = world.registry.activate(r.token)
    assert result_of(world.registry.release(r.token)) is None
    failure_of(activation, StartFailure)
    assert world.service.stops == [0] and world.states() == {}


def test_release_of_an_unknown_token_raises_unknown_token(world):
    with pytest.raises(UnknownToken):
        world.registry.release(str(uuid.uuid4()))


def test_a_stop_that_fails_or_hangs_still_frees_the_index(world, log):
    a, b = world.registry.reserve("demo"), world.registry.reserve("demo")
    result_of(world.registry.activate(a.token))
    result_of(world.registry.activate(b.token))
    world.service.stop_result = lambda i: _raise(OSError("gone")) if i == 0 else defer.Deferred()
    assert result_of(world.registry.release(a.token)) is None
    hanging = world.registry.release(b.token)
    world.clock.advance(59)
    assert b.state == "stopping"
    world.clock.advance(1)
    assert result_of(hanging) is None and world.states() == {}
    assert any("stop failed: OSError: gone; freeing the index anyway" in line for line in log)
    assert any("stop() did not finish within 60 s" in line for line in log)


# --- the reaper ------------------------------------------------------------------


def test_reaper_expires_a_reservation_unused_for_the_timeout(world):
    world.registry.start_reaper()
    r = world.registry.reserve("demo")
    world.clock.advance(299)
    assert r.state == "reserved"
    world.clock.advance(5)
    assert r.state == "expired" and world.states() == {}
    assert world.registry.reserve("demo").index == 0
    with pytest.raises(UnknownToken):
        world.registry.activate(r.token)


def test_reaper_leaves_a_reservation_activated_in_time_running(world):
    world.registry.start_reaper()
    r = world.registry.reserve("demo")
    world.clock.advance(299)
    result_of(world.registry.activate(r.token))
    world.clock.advance(3000)
    assert r.state == "active" and world.service.stops == []


def test_reaper_runs_at_most_a_tenth_of_the_timeout_late_and_no_oftener_than_twice_a_second():
    w = World(timeout=300.0)
    w.registry.start_reaper()
    w.clock.advance(1)
    r = w.registry.reserve("demo")  # due at 301; the reaper passes every 5 s
    w.clock.advance(299.9)
    assert r.state == "reserved"
    w.clock.advance(4.1)
    assert r.state == "expired"
    short = World(timeout=1.0)
    short.registry.start_reaper()
    short.registry.reserve("demo")
    short.clock.advance(0.4)
    assert [c.getTime() for c in short.clock.getDelayedCalls()] == [0.5]


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_reaper_survives_failing_steps_and_keeps_running(log):
    broken, fine = FakeService("broken", count=1), FakeService("fine", count=2)
    w = World([broken, fine])
    w.registry.start_reaper()
    active = w.registry.reserve("broken")
    result_of(w.registry.activate(active.token))
    broken.pids_error = RuntimeError("proc table unreadable")
    w.registry.on_change = lambda: _raise(RuntimeError("disk full"))
    first = w.registry.reserve("fine")
    w.clock.advance(305)
    assert first.state == "expired"
    second = w.registry.reserve("fine")
    w.clock.advance(305)
    assert second.state == "expired", "the loop went on after failing steps"
    assert any("reaper: " in line and "broken#0 failed" in line for line in log)
    assert any("on_change callback failed" in line for line in log)


def test_stop_reaper_stops_reclaiming(world):
    world.registry.start_reaper()
    world.registry.stop_reaper()
    r = world.registry.reserve("demo")
    world.clock.advance(1000)
    assert r.state == "reserved"


# --- status, shutdown, on_change, logging ------------------------------------------


def test_status_lists_every_service_with_exact_keys_and_instances_sorted_by_index():
    w = World([FakeService("demo", count=3), FakeService("idle", count=1, common_options={})])
    w.clock.advance(61)
    a, b = w.registry.reserve("demo", {"k": "v"}, user="bob"), w.registry.reserve("demo")
    w.registry.release(a.token)
    c = w.registry.reserve("demo")  # takes index 0 again, after b in creation order
    result_of(w.registry.activate(c.token))
    status = json.loads(json.dumps(w.registry.status()))
    assert [sorted(s) for s in status] == [["common_options", "count", "instances", "name"]] * 2
    demo, idle = status
    assert (demo["name"], demo["count"], demo["common_options"]) == ("demo", 3, {"sizes": ["1024x768"]})
    assert idle == {"name": "idle", "count": 1, "common_options": {}, "instances": []}
    assert [i["index"] for i in demo["instances"]] == [0, 1]
    first = demo["instances"][0]
    assert sorted(first) == ["index", "options", "state", "timestamp", "token", "user"]
    assert first == {"index": 0, "token": c.token, "timestamp": "2026-01-01T00:01:01Z",
                     "state": "active", "options": {}, "user": None}
    assert demo["instances"][1]["token"] == b.token and demo["instances"][1]["state"] == "reserved"


def test_shutdown_stops_every_instance_keeps_unused_reservations_and_refuses_new_ones():
    """Running instances stop; an unused reservation stays (the state file keeps it for a restart)."""
    w = World([FakeService("demo"), FakeService("other", count=3)])
    w.ports.open = set()
    reserved = w.registry.reserve("other")
    starting = w.registry.reserve("other")
    activation = w.registry.activate(starting.token)
    w.ports.open = {ADDRESS}
    active = w.registry.reserve("demo")
    result_of(w.registry.activate(active.token))
    stopping = defer.Deferred()
    w.services[0].stop_result = lambda i: stopping
    w.registry.start_reaper()
    done = w.registry.shutdown()
    assert not_fired(done)
    stopping.callback(None)
    assert result_of(done) is None
    assert starting.state == active.state == "released"
    assert reserved.state == "reserved" and w.states() == {reserved.token: "reserved"}
    assert [r["token"] for r in w.registry.snapshot()["reservations"]] == [reserved.token]
    assert w.services[0].stops == [0] and w.services[1].stops == [1]
    failure_of(activation, StartFailure)
    with pytest.raises(NoFreeInstance, match="shutting down"):
        w.registry.reserve("demo")
    assert w.clock.getDelayedCalls() == [], "the reaper is stopped"


def test_on_change_is_called_after_every_state_change_with_the_new_state_visible(world):
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    result_of(world.registry.deactivate(r.token))
    states = [[x["state"] for x in snap["reservations"]] for snap in world.changes]
    assert states == [["reserved"], ["starting"], ["active"], ["stopping"], []]


def test_every_transition_is_logged_once_with_the_tokens_tag_and_no_token_material(world, log):
    """Each line names the token by its tag (#, 8 hex digits of its SHA-256), never a piece of it."""
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    result_of(world.registry.release(r.token))
    transitions = [re.search(r": (\w+ -> \w+)", line).group(1) for line in log if " -> " in line]
    assert transitions == ["new -> reserved", "reserved -> starting", "starting -> active",
                           "active -> stopping", "stopping -> released"]
    tag = "#" + hashlib.sha256(r.token.encode()).hexdigest()[:8]
    assert all(f"reservation {tag} demo#0: " in line for line in log if " -> " in line)
    pieces = {r.token[i:i + 6] for i in range(len(r.token) - 5)}
    assert not any(piece in line for line in log for piece in pieces)


# --- snapshot and restore -----------------------------------------------------------


def _saved(world):
    return json.loads(json.dumps(world.registry.snapshot()))


def test_restore_brings_back_unused_reservations_with_token_index_and_time_left(world):
    a, b = world.registry.reserve("demo", {"k": "v"}, user="eve"), world.registry.reserve("demo")
    world.registry.release(a.token)
    data = _saved(world)

    later = World()
    later.clock.advance(10)
    result_of(later.registry.restore(data, now=EPOCH + 100))
    restored = later.registry.get(b.token)
    assert (restored.index, restored.state, restored.timestamp) == (1, "reserved", "2026-01-01T00:00:00Z")
    assert later.registry.get(a.token) is None
    assert later.registry.reserve("demo").index == 0
    later.registry.start_reaper()
    later.clock.advance(195)  # 100 s had passed before the restart: 200 s were left
    assert restored.state == "reserved"
    later.clock.advance(10)
    assert restored.state == "expired"


def test_a_restored_reservation_can_be_activated_with_its_old_token(world):
    r = world.registry.reserve("demo", {"k": "v"}, user="eve")
    later = World()
    result_of(later.registry.restore(_saved(world), now=EPOCH + 5))
    assert result_of(later.registry.activate(r.token)) == ADDRESS
    assert later.service.starts == [(0, {"k": "v", "token": r.token, "user": "eve"})]


def test_restore_drops_reservations_older_than_the_timeout(world, log):
    r = world.registry.reserve("demo")
    later = World()
    result_of(later.registry.restore(_saved(world), now=EPOCH + 300))
    assert later.registry.get(r.token) is None and later.states() == {}
    assert any("expired meanwhile" in line for line in log)


def test_restore_drops_reservations_of_services_no_longer_configured_with_a_warning(world, log):
    r = world.registry.reserve("demo")
    later = World([FakeService("other")])
    result_of(later.registry.restore(_saved(world), now=EPOCH + 1))
    assert later.registry.get(r.token) is None
    assert any("'demo' is not configured any more" in line for line in log)


def test_restore_drops_an_index_beyond_the_new_count(world):
    world.registry.reserve("demo")
    r = world.registry.reserve("demo")
    later = World([FakeService(count=1)])
    result_of(later.registry.restore(_saved(world), now=EPOCH + 1))
    assert later.registry.get(r.token) is None and len(later.states()) == 1


def test_snapshot_records_the_processes_of_live_instances(world):
    world.service.processes[0] = [(4242, 1000)]
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    assert world.changes[-1]["reservations"][0]["pids"] == [[4242, 1000]]
    world.registry.start_reaper()
    world.service.processes[0] = [(4242, 1000), (4243, 1001)]
    count = len(world.changes)
    world.clock.advance(5)
    assert len(world.changes) == count + 1, "the reaper reports processes started later"
    assert world.changes[-1]["reservations"][0]["pids"] == [[4242, 1000], [4243, 1001]]


def test_processes_seen_before_a_stop_stay_recorded_while_stopping(world):
    world.service.processes[0] = [(4242, 1000)]
    r = world.registry.reserve("demo")
    result_of(world.registry.activate(r.token))
    world.service.stop_result = lambda i: defer.Deferred()
    world.registry.release(r.token)
    world.service.processes[0] = []
    world.registry.reap()
    assert r.pids == [(4242, 1000)]


def test_restore_kills_the_processes_of_instances_live_in_the_previous_run(log):
    before = World([FakeService("demo"), FakeService("other", count=1)])
    before.services[0].processes = {0: [(4242, 1000)], 1: [(5151, 2000), (5152, 2001)]}
    a, b = before.registry.reserve("demo"), before.registry.reserve("demo")
    result_of(before.registry.activate(a.token))
    result_of(before.registry.activate(b.token))
    before.services[0].stop_result = lambda i: defer.Deferred()
    before.registry.release(b.token)  # stopping when the gateway died
    kept = before.registry.reserve("other")
    data = _saved(before)

    later = World([FakeService("demo"), FakeService("other", count=1)], kill_grace=2.0)
    killed = later.registry.restore(data, now=EPOCH + 1)
    (procs, grace, pending), = later.killer.calls
    assert sorted(procs) == [(4242, 1000), (5151, 2000), (5152, 2001)] and grace == 2.0
    assert later.states() == {kept.token: "reserved"}
    assert sorted(later.changes[-1]["orphans"]) == [[4242, 1000], [5151, 2000], [5152, 2001]]
    pending.callback([5152])
    assert result_of(killed) == [5152]
    assert later.changes[-1]["orphans"] == [], "orphans leave the state file once ended"
    assert any("terminating its leftover processes 4242" in line for line in log)
    assert any("(killed: 5152)" in line for line in log)


def test_orphans_recorded_by_a_run_that_died_while_killing_are_killed_again():
    data = {"reservations": [], "orphans": [[777, 12]]}
    w = World()
    w.registry.restore(data, now=EPOCH)
    assert w.killer.calls[0][0] == [(777, 12)]


def test_shutdown_waits_for_a_previous_run_s_processes_to_be_killed(world):
    later = World()
    later.registry.restore({"orphans": [[777, 12]]}, now=EPOCH)
    done = later.registry.shutdown()
    assert not_fired(done)
    later.killer.calls[0][2].callback([])
    assert result_of(done) is None


def test_restore_skips_malformed_records_with_a_warning_and_never_kills_pid_0_or_1(log):
    data = {
        "reservations": [
            "garbage",
            {"token": "t", "service": "demo"},
            {"token": "x", "service": "demo", "index": 0, "state": "active", "created": EPOCH,
             "pids": [[-1, 5]]},
            {"token": "y", "service": "demo", "index": 0, "state": "reserved", "created": EPOCH,
             "options": "not an object"},
        ],
        "orphans": [[1, 5], [0, None], "x"],
    }
    w = World()
    assert result_of(w.registry.restore(data, now=EPOCH)) == []
    assert w.killer.calls == [] and w.states() == {}
    assert len([line for line in log if "dropping a malformed" in line]) == 7
    w.registry.restore({"reservations": {"not": "a list"}}, now=EPOCH)
    assert any("'reservations' is not a list" in line for line in log)


def test_restore_of_no_state_file_does_nothing_quietly(world, log):
    assert result_of(world.registry.restore(None)) == []
    assert world.states() == {} and world.killer.calls == [] and log == []


# --- the backend seam -------------------------------------------------------------


def test_a_start_failures_message_is_one_printable_line_cut_as_the_registry_cut_it():
    """At most 1000 characters (then "..."), control and non-ASCII characters quoted:
    the whole message as printable() made it, its why the same minus the instance."""
    head = "service 'demo' instance 0: start failed: "
    cause = "RuntimeError: caf\u00e9 " + "x" * 2000
    e = StartFailure("demo", 0, CRASHED, cause)
    assert str(e) == printable(head + cause, limit=1000) and len(str(e)) == 1003
    assert e.reason == e.why == str(e)[len(head):]
    assert StartFailure("demo", 0, FAILED, "two\nlines").why == "two%0Alines"
    with pytest.raises(ValueError, match="unknown kind"):
        StartFailure("demo", 0, "exploded", "?")



@implementer(ISessionBackend)
class MinimalBackend:
    """A backend with nothing but ISessionBackend: where a Slurm backend would plug in."""

    name, aliases, count, common_options, group = "batch", ("hpc",), 1, {"partition": "gpu"}, None

    def __init__(self):
        self.running, self.outcome = {}, None

    def start(self, index, options):
        if self.outcome is not None:
            return defer.fail(self.outcome)
        self.running[index] = ("10.0.0.7", 5901)
        return defer.succeed(self.running[index])

    def stop(self, index):
        self.running.pop(index, None)
        return defer.succeed(None)

    def address(self, index):
        return self.running.get(index)

    def describe(self, index):
        return {"backend": "test", "state": "running" if index in self.running else None}

    def pids(self, index):
        return []


class OnlyTheInterface:
    """Lets through only what ISessionBackend declares (and the optional IQueuedBackend, which the
    registry asks for with getattr): anything else the registry asks for fails."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        if name not in ISessionBackend.names(all=True) and name not in IQueuedBackend.names(all=True):
            raise AssertionError(f"the registry used {name!r}, which ISessionBackend does not declare")
        return getattr(self._backend, name)


def test_the_registry_runs_a_backend_through_the_interface_alone(log):
    """Reserve, start, status, reap, stop, failures: all through ISessionBackend's names."""
    backend = MinimalBackend()
    assert verifyObject(ISessionBackend, backend)
    w = World([OnlyTheInterface(backend)])
    w.ports.open = {("10.0.0.7", 5901)}
    r = w.registry.reserve("hpc", {"x": "1"})
    assert result_of(w.registry.activate(r.token)) == ("10.0.0.7", 5901)
    assert r.state == "active" and backend.address(0) == ("10.0.0.7", 5901)
    [status] = w.registry.status()
    assert status["name"] == "batch" and status["common_options"] == {"partition": "gpu"}
    w.registry.reap()
    result_of(w.registry.deactivate(r.token))
    assert r.state == "released" and backend.running == {}

    backend.outcome = StartFailure("batch", 0, FAILED, "job 42 failed: exit 3", exit_status=3)
    r = w.registry.reserve("batch")
    error = failure_of(w.registry.activate(r.token), StartFailure).value
    assert error is backend.outcome and error.exit_status == 3
    assert error.reason == "job 42 failed: exit 3"
    assert any(line.endswith("(start failed: service 'batch' instance 0: job 42 failed: exit 3)")
               for line in log)
    assert w.states() == {} and w.registry.reserve("batch").index == 0

