"""Re-attach within a grace period (issue 15, item 1), in memory: the registry on a Clock,
the token router and the bridge over iosim, the config file's and the command line's checks."""

import hashlib
import json

import pytest
from autobahn.websocket.types import ConnectionDeny
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error
from twisted.logger import formatEvent
from twisted.python import usage

from nexusws.errors import StartupError
from nexusws.logs import show
from nexusws.metrics import Metrics
from nexusws.routing import Launch, NoRouter, Target, TokenRouter
from nexusws.sessions import timeouts
from nexusws.sessions.config import read_config
from nexusws.sessions.records import check_reservation
from nexusws.sessions.registry import Registry, TokenInUse
from nexusws.sessions.reservation import LIVE
from nexusws.status_page import status_page
from support.bridge import Harness
from support.deferreds import result_of
from support.options import parse
from support.reservations import ADDRESS, EPOCH, FakeService, World

GRACE = 60.0


class Attachment:
    """What the router gives the registry for one WebSocket: records take_over()."""

    def __init__(self):
        self.taken_over = 0

    def take_over(self):
        self.taken_over += 1


def world_with(grace=GRACE, **kwargs):
    metrics = Metrics()
    return World(reconnect_grace=grace, metrics=metrics, **kwargs), metrics


def active(world, user=None):
    """A reservation whose instance runs, attached to a new L{Attachment}."""
    r = world.registry.reserve("demo", user=user)
    attachment = Attachment()
    assert result_of(world.registry.activate(r.token, attachment=attachment)) == ADDRESS
    assert r.state == "active"
    return r, attachment


def lines(events):
    return [formatEvent(e) for e in events]


def sample(metrics, name, **labels):
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in text_string_to_metric_families(metrics.exposition().decode())
             for s in family.samples}
    return found.get((name, frozenset(labels.items())), 0)


# --- the registry --------------------------------------------------------------------


def test_the_default_grace_is_60_seconds_and_the_state_list_has_detached_once():
    assert timeouts.RECONNECT_GRACE == 60.0
    assert Registry([FakeService()], None).reconnect_grace == 60.0
    assert LIVE.count("detached") == 1 and "detached" in LIVE


def test_losing_the_websocket_detaches_the_instance_and_logs_it_without_the_token(events):
    world, _ = world_with()
    r, attachment = active(world)
    assert result_of(world.registry.deactivate(r.token, attachment)) is None
    assert r.state == "detached" and world.service.stops == []
    assert r.attached is None
    tag = "#" + hashlib.sha256(r.token.encode()).hexdigest()[:8]
    logged = [line for line in lines(events) if "-> detached" in line]
    assert logged == [f"reservation {tag} demo#0: active -> detached (WebSocket closed; grace 60 s)"]
    assert not any(r.token in line for line in lines(events))
    (instance,) = world.registry.status()[0]["instances"]
    assert (instance["state"], instance["grace_left"]) == ("detached", 60.0)
    world.clock.advance(20.5)
    (instance,) = world.registry.status()[0]["instances"]
    assert instance["grace_left"] == 39.5


def test_the_same_token_within_the_grace_re_attaches_without_a_second_start(events):
    world, metrics = world_with()
    r, first = active(world)
    world.registry.deactivate(r.token, first)
    world.clock.advance(GRACE - 1)
    second = Attachment()
    assert result_of(world.registry.activate(r.token, attachment=second)) == ADDRESS
    assert r.state == "active" and r.attached is second
    assert len(world.service.starts) == 1, "nothing launched again"
    assert len(world.ports.calls) == 1, "no port wait for a re-attach"
    assert "grace_left" not in world.registry.status()[0]["instances"][0]
    world.clock.advance(GRACE * 3)  # the old grace timer was cancelled
    assert r.state == "active" and world.service.stops == []
    assert any(line.endswith("demo#0: detached -> active (re-attached)") for line in lines(events))
    assert sample(metrics, "nexusws_reattaches_total", service="demo") == 1
    # Lost again: a fresh grace.
    world.registry.deactivate(r.token, second)
    world.clock.advance(GRACE - 0.1)
    assert r.state == "detached"
    world.clock.advance(0.1)
    assert world.states() == {} and world.service.stops == [0]


def test_the_grace_running_out_stops_the_instance_and_frees_its_index(events):
    world, _ = world_with(services=[FakeService(count=1)])
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    world.clock.advance(GRACE - 0.01)
    assert r.state == "detached" and world.service.stops == []
    world.clock.advance(0.01)
    assert world.service.stops == [0] and world.states() == {}
    assert any(line.endswith("demo#0: detached -> stopping (grace_expired)") for line in lines(events))
    assert world.registry.reserve("demo").index == 0, "the index is free again"


def test_session_ends_are_counted_by_reason():
    world, metrics = world_with()
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    world.clock.advance(GRACE)  # grace_expired
    world.registry.release(world.registry.reserve("demo").token)  # released, unused
    r, attachment = active(world)
    world.registry.release(r.token)  # released, running
    counted = {reason: sample(metrics, "nexusws_session_ends_total", service="demo", reason=reason)
               for reason in ("grace_expired", "released", "closed")}
    assert counted == {"grace_expired": 1, "released": 2, "closed": 0}
    with pytest.raises(Exception, match="unknown"):
        world.registry.activate(r.token, attachment=Attachment())


def test_release_while_detached_stops_it_at_once_and_cancels_the_grace():
    world, _ = world_with()
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    assert result_of(world.registry.release(r.token)) is None
    assert world.service.stops == [0] and world.states() == {}
    assert world.clock.getDelayedCalls() == []
    world.clock.advance(GRACE * 2)
    assert world.service.stops == [0], "stopped once"


def test_shutdown_stops_detached_instances():
    world, _ = world_with()
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    done = world.registry.shutdown()
    assert result_of(done) is None
    assert world.service.stops == [0] and world.states() == {}
    assert world.clock.getDelayedCalls() == []


def test_a_websocket_lost_during_a_shutdown_stops_its_instance_at_once():
    world, _ = world_with()
    r, attachment = active(world)
    world.service.stop_result = lambda i: defer.Deferred()
    world.registry.shutdown()
    assert r.state == "stopping"
    world.registry.deactivate(r.token, attachment)
    assert r.state == "stopping"


def test_grace_zero_is_the_reference_behaviour_stop_when_the_websocket_is_lost():
    world, _ = world_with(grace=0)
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    assert world.service.stops == [0] and world.states() == {}
    assert world.clock.getDelayedCalls() == []


def test_a_service_option_overrides_the_default_grace_either_way():
    none = FakeService("none", common_options={"reconnect_grace": 0})
    some = FakeService("some", common_options={"reconnect_grace": 5})
    world, _ = world_with(grace=GRACE, services=[none, some])
    assert world.registry.grace_of(none) == 0 and world.registry.grace_of(some) == 5.0
    for service in (none, some):
        r = world.registry.reserve(service.name)
        attachment = Attachment()
        world.registry.activate(r.token, attachment=attachment)
        world.registry.deactivate(r.token, attachment)
    assert none.stops == [0] and some.stops == []
    world.clock.advance(5)
    assert some.stops == [0]
    default = World(reconnect_grace=7.0).registry
    assert default.grace_of(FakeService()) == 7.0


def test_an_explicit_end_such_as_the_backend_closing_stops_at_once(events):
    world, _ = world_with()
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment, "backend closed the connection")
    assert world.service.stops == [0] and world.states() == {}
    assert any(line.endswith("demo#0: active -> stopping (backend closed the connection)")
               for line in lines(events))


def test_a_websocket_lost_while_starting_stops_the_start_as_before():
    world, _ = world_with()
    world.service.start_result = lambda index: defer.Deferred()
    r = world.registry.reserve("demo")
    attachment = Attachment()
    d = world.registry.activate(r.token, attachment=attachment)
    d.addErrback(lambda f: None)
    world.registry.deactivate(r.token, attachment)
    assert r.state in ("stopping", "released") and world.clock.getDelayedCalls() == []


def test_a_detached_reservation_counts_in_the_quota_and_the_reservation_timeout_does_not_reap_it():
    world, _ = world_with(timeout=10.0)
    r, attachment = active(world, user="alice")
    world.registry.deactivate(r.token, attachment)
    assert world.registry.outstanding("alice", None) == 1
    world.clock.advance(30)
    world.registry.reap()
    assert r.state == "detached", "the timeout is for unused reservations"
    assert world.registry.outstanding("alice", None) == 1
    world.clock.advance(GRACE - 30)
    assert world.registry.outstanding("alice", None) == 0


def test_a_second_websocket_is_refused_unless_it_takes_over(events):
    world, metrics = world_with()
    r, first = active(world)
    with pytest.raises(TokenInUse):
        world.registry.activate(r.token, attachment=Attachment())
    assert r.attached is first and first.taken_over == 0
    second = Attachment()
    assert result_of(world.registry.activate(r.token, attachment=second, takeover=True)) == ADDRESS
    assert first.taken_over == 1 and r.attached is second and r.state == "active"
    assert len(world.service.starts) == 1
    assert any(line.endswith("demo#0: taken over by a new WebSocket (the previous one is closed)")
               for line in lines(events))
    assert sample(metrics, "nexusws_takeovers_total", service="demo") == 1
    # The displaced WebSocket's end changes nothing; the new one's detaches.
    world.registry.deactivate(r.token, first)
    assert r.state == "active" and r.attached is second
    world.registry.deactivate(r.token, second)
    assert r.state == "detached"


def test_takeover_of_a_detached_session_just_attaches_and_of_a_starting_one_is_refused():
    world, metrics = world_with()
    r, first = active(world)
    world.registry.deactivate(r.token, first)
    second = Attachment()
    result_of(world.registry.activate(r.token, attachment=second, takeover=True))
    assert r.attached is second and first.taken_over == 0
    assert sample(metrics, "nexusws_takeovers_total", service="demo") == 0
    assert sample(metrics, "nexusws_reattaches_total", service="demo") == 1
    world.service.start_result = lambda index: defer.Deferred()
    starting = world.registry.reserve("demo")
    world.registry.activate(starting.token, attachment=Attachment())
    with pytest.raises(TokenInUse):
        world.registry.activate(starting.token, attachment=Attachment(), takeover=True)


def test_the_state_file_records_detached_and_a_restart_ends_its_processes():
    world, _ = world_with()
    world.service.processes = {0: [(4242, 1000)]}
    r, attachment = active(world)
    world.registry.deactivate(r.token, attachment)
    saved = json.loads(json.dumps(world.changes[-1]))
    (record,) = saved["reservations"]
    assert record["state"] == "detached" and record["pids"] == [[4242, 1000]]
    assert check_reservation(record)["state"] == "detached"
    later = World()
    killed = later.registry.restore(saved, now=EPOCH + 1)
    ((procs, _, pending),) = later.killer.calls
    assert procs == [(4242, 1000)] and later.states() == {}
    pending.callback([4242])
    assert result_of(killed) == [4242]


def test_metrics_report_sessions_by_state_including_detached():
    world, metrics = world_with()
    metrics.watch_sessions(world.registry, LIVE)
    r, attachment = active(world)
    world.registry.reserve("demo")
    world.registry.deactivate(r.token, attachment)
    assert sample(metrics, "nexusws_sessions", service="demo", state="detached") == 1
    assert sample(metrics, "nexusws_sessions", service="demo", state="reserved") == 1
    assert sample(metrics, "nexusws_sessions", service="demo", state="active") == 0
    world.clock.advance(GRACE)
    assert sample(metrics, "nexusws_sessions", service="demo", state="detached") == 0


def test_the_status_page_shows_the_grace_left():
    page = status_page([{"name": "demo", "count": 1, "instances": [
        {"index": 0, "state": "detached", "grace_left": 41.6, "user": None, "timestamp": "t", "options": {}}]}])
    assert "<td>detached (42 s left)</td>" in page


# --- the token router and the bridge ----------------------------------------------


def url(token, query=""):
    return f"ws://127.0.0.1:9090/websockify?token={token}{query}"


def session_tunnel(world, token, like=None, query="", headers=None):
    """A client presenting C{token} through a TokenRouter over C{world}'s registry."""
    if like is None:
        h = Harness(router=TokenRouter(world.registry, NoRouter()), url=url(token, query), headers=headers)
    else:
        h = Harness(like=like, url=url(token, query), headers=headers)
    h.written = []
    original = h.server_transport.write
    h.server_transport.write = lambda data: (h.written.append(data), original(data))
    h.flush()
    return h


def attached(world, token, like=None, query="", headers=None, greeting=b"RFB 003.008\n"):
    h = session_tunnel(world, token, like, query, headers)
    assert h.client.opened, h.written[:1]
    h.connect_backend(greeting)
    h.flush()
    assert h.client.received.endswith(greeting)
    return h


def test_closing_the_client_detaches_and_the_same_token_re_attaches_to_the_same_address():
    world, _ = world_with()
    r = world.registry.reserve("demo")
    first = attached(world, r.token)
    first.client.sendClose(1000)
    first.flush()
    assert first.backend.eof, "the backend got EOF after the client's data"
    assert r.state == "detached" and world.service.stops == []
    second = attached(world, r.token, like=first)
    assert r.state == "active" and len(world.service.starts) == 1
    assert first.targets == [Target(*ADDRESS), Target(*ADDRESS)]
    second.client.sendMessage(b"hello", isBinary=True)
    second.flush()
    assert bytes(second.backend.received) == b"hello"


def test_a_dropped_client_connection_detaches_too():
    world, _ = world_with()
    r = world.registry.reserve("demo")
    h = attached(world, r.token)
    h.server_transport.loseConnection()
    h.flush()
    assert r.state == "detached"


def test_the_backend_closing_the_tunnel_stops_the_session_at_once():
    world, _ = world_with()
    r = world.registry.reserve("demo")
    h = attached(world, r.token)
    h.backend_transport.loseConnection()
    h.flush()
    assert h.client.closed[1] == 1000
    assert world.service.stops == [0] and world.states() == {}


def test_an_unreachable_backend_on_re_attach_closes_1011_and_stops_the_session():
    world, _ = world_with()
    r = world.registry.reserve("demo")
    first = attached(world, r.token)
    first.client.sendClose(1000)
    first.flush()
    second = session_tunnel(world, r.token, like=first)
    assert second.client.opened
    second.fail_backend(error.ConnectionRefusedError())
    second.flush()
    assert second.client.closed[1] == 1011 and "unreachable" in second.client.closed[2]
    assert world.service.stops == [0] and world.states() == {}


def test_takeover_closes_the_old_websocket_4001_taken_over_and_attaches_the_new_one(events):
    world, _ = world_with()
    r = world.registry.reserve("demo", user="alice")
    alice = {"X-Remote-User": "alice"}
    first = attached(world, r.token, headers=alice)
    second = session_tunnel(world, r.token, like=first, query="&takeover=1", headers=alice)
    assert second.client.opened
    # What the old client sends before it reads its close reaches no backend
    # connection and is not counted: the session is the new WebSocket's.
    up = first.server.bytes_up
    first.client.sendMessage(b"late", isBinary=True)
    first.flush()
    assert b"late" not in bytes(first.backend.received) and first.server.bytes_up == up
    assert first.client.closed is not None and first.client.closed[1:] == (4001, "taken over")
    assert first.backend.lost is not None, "the old backend connection is closed"
    second.connect_backend(b"RFB 003.008\n")
    second.flush()
    assert second.client.received == b"RFB 003.008\n"
    assert r.state == "active" and len(world.service.starts) == 1 and world.service.stops == []
    second.client.sendMessage(b"new", isBinary=True)
    second.flush()
    assert bytes(second.backend.received) == b"new"
    assert any("close 4001 taken over" in line for line in lines(events))
    # The new WebSocket is the session's: losing it detaches.
    second.client.sendClose(1000)
    second.flush()
    assert r.state == "detached"


def test_takeover_by_another_user_is_refused_403_and_changes_nothing():
    world, _ = world_with()
    r = world.registry.reserve("demo", user="alice")
    first = attached(world, r.token, headers={"X-Remote-User": "alice"})
    intruder = session_tunnel(world, r.token, like=first, query="&takeover=1", headers={"X-Remote-User": "bob"})
    assert not intruder.client.opened
    assert intruder.written[0].startswith(b"HTTP/1.1 403 ")
    assert first.client.closed is None and r.state == "active"
    first.client.sendMessage(b"still", isBinary=True)
    first.flush()
    assert bytes(first.backend.received) == b"still"


@pytest.mark.parametrize("query", ["", "&takeover=0", "&takeover=yes", "&takeover="])
def test_a_second_websocket_without_takeover_1_is_refused_409(query):
    world, _ = world_with()
    r = world.registry.reserve("demo")
    first = attached(world, r.token)
    second = session_tunnel(world, r.token, like=first, query=query)
    assert not second.client.opened
    assert second.written[0].startswith(b"HTTP/1.1 409 ")
    assert first.client.closed is None and r.state == "active"


def test_a_launch_taken_over_before_its_tunnel_is_set_only_stops_ending_things():
    ended = []
    launch = Launch(defer.succeed(Target(*ADDRESS)), ended.append, "demo#0")
    launch.take_over()
    result_of(launch.end(None))
    assert ended == []


def test_the_router_hands_the_registry_why_a_tunnel_ended():
    calls = []

    class Registry:
        def get(self, token):
            return None

        def activate(self, token, attachment=None, takeover=False):
            calls.append(("activate", takeover))
            return defer.succeed(ADDRESS)

        def deactivate(self, token, attachment=None, ended=None):
            calls.append(("deactivate", ended))

    class Request:
        params = {"token": ["T"], "takeover": ["1"]}

    launch = TokenRouter(Registry(), NoRouter()).route(Request())
    launch.end("backend closed the connection")
    assert calls == [("activate", True), ("deactivate", "backend closed the connection")]


def test_shutdown_closes_tunnels_as_an_explicit_end():
    world, _ = world_with()
    r = world.registry.reserve("demo")
    h = attached(world, r.token)
    h.factory.close_all()
    h.flush()
    assert h.client.closed[1] == 1001
    assert world.service.stops == [0] and world.states() == {}


# --- configuration -----------------------------------------------------------------


SCRIPT = "../sessions/helper_echo.py"


@pytest.mark.parametrize("value, shown", [(-1, "-1"), ("30", '"30"'), (True, "true"), (None, "null"),
                                          ([5], "[5]"), (10 ** 400, show(10 ** 400))])
def test_a_bad_reconnect_grace_in_the_config_file_is_one_line_naming_file_service_and_key(tmp_path, value, shown):
    config = tmp_path / "services.json"
    config.write_text(json.dumps({"desk": {"script": "missing.py", "count": 1,
                                           "options": {"reconnect_grace": value}}}))
    with pytest.raises(StartupError) as info:
        read_config(config)
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"{config}: service 'desk': 'options.reconnect_grace' must be a number of "
                       f"seconds >= 0, not {shown}")


def test_a_good_reconnect_grace_in_the_config_file_is_the_services_grace(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parent / "sessions" / "helper_echo.py"
    config = tmp_path / "services.json"
    config.write_text(json.dumps({"desk": {"script": str(script), "count": 1,
                                           "options": {"reconnect_grace": 2.5}},
                                  "zero": {"script": str(script), "count": 1,
                                           "options": {"reconnect_grace": 0}}}))
    desk, zero = read_config(config)
    registry = Registry([], None)
    grace = [registry.grace_of(FakeService(common_options=spec.options)) for spec in (desk, zero)]
    assert grace == [2.5, 0]


def test_the_reconnect_grace_option_defaults_to_60_and_takes_seconds():
    assert parse("9090")["reconnect_grace"] == 60.0
    assert parse("--reconnect_grace", "0", "9090")["reconnect_grace"] == 0.0
    assert parse("--reconnect-grace", "2.5", "9090")["reconnect_grace"] == 2.5


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf", ""])
def test_a_bad_reconnect_grace_option_is_a_usage_error_naming_it(value):
    with pytest.raises(usage.UsageError) as info:
        parse("--reconnect_grace", value, "9090")
    assert str(info.value) == f"--reconnect_grace: {value!r} is not a number of seconds >= 0"


def test_a_router_refusal_for_a_busy_token_is_409_with_the_same_reason_as_before():
    world, _ = world_with()
    r, _attachment = active(world)

    class Request:
        params = {"token": [r.token]}

    with pytest.raises(ConnectionDeny) as info:
        TokenRouter(world.registry, NoRouter()).route(Request())
    assert (info.value.code, info.value.reason) == (409, "token already in use by another WebSocket")
