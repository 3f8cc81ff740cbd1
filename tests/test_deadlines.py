"""Idle and time limits (issue 15, items 2-4) in memory: the registry's timers on a Clock,
its events and snapshot, and /v1/touch and /v1/extend through a real ApiRoot and Site.

The attachments are the router's real L{Launch} objects, so what the bridge calls
(C{input}, C{session_ending}) is what these tests call."""

import json

import pytest
from twisted.logger import formatEvent
from twisted.python import usage

from nexusws.api import CALLS
from nexusws.errors import StartupError
from nexusws.metrics import Metrics
from nexusws.routing import Launch
from nexusws.scrub import TOKEN_CALLS, redact
from nexusws.sessions.config import read_config
from nexusws.sessions.deadlines import EXTEND_MAX_SECONDS, LIMITS, ExtendRefused
from support.api import SECRET, Api
from support.deferreds import result_of
from support.options import parse
from support.reservations import ADDRESS, FakeService, World
from support.sse import names, stream_of


class Tunnel:
    """What a Launch's bridge protocol shows the registry: its bytes; records its close."""

    def __init__(self, up=0, down=0):
        self.bytes_up, self.bytes_down, self.ended = up, down, []

    def session_ended(self, code, reason):
        self.ended.append((code, reason))


def attachment(registry, token, tunnel=None):
    launch = Launch(None, lambda why: registry.deactivate(token, launch, why), "demo#0")
    launch.tunnel = tunnel if tunnel is not None else Tunnel()
    return launch


def running(world, **options):
    """A session whose instance runs, attached to a real Launch."""
    r = world.registry.reserve("demo", options)
    launch = attachment(world.registry, r.token)
    assert result_of(world.registry.activate(r.token, attachment=launch)) == ADDRESS
    return r, launch


def emitted(world, r):
    return [(e["event"], {k: v for k, v in e.items() if k not in ("id", "event", "time")})
            for e in world.registry.events_of(r.token).events]


def after_ready(world, r):
    events = emitted(world, r)
    return events[[name for name, _ in events].index("attached") + 1:]


def lines(log_events):
    return [formatEvent(e) for e in log_events]


# --- idle ---------------------------------------------------------------------------


def test_an_idle_session_is_warned_then_ended_with_reason_idle_and_its_websocket_told(events):
    metrics = Metrics()
    world = World(limits={"idle_timeout": 300, "idle_warning": 60}, metrics=metrics)
    r, launch = running(world)
    world.clock.advance(239.9)
    assert after_ready(world, r) == []
    world.clock.advance(0.1)
    assert after_ready(world, r) == [("idle_warning", {"seconds_left": 60.0})]
    world.clock.advance(59.9)
    assert r.state == "active"
    world.clock.advance(0.1)
    assert r.state in ("stopping", "released") and world.service.stops == [0]
    assert after_ready(world, r)[1:] == [("ending", {"reason": "idle"}), ("ended", {})]
    assert launch.tunnel.ended == [(4002, "session ended: idle")]
    text = "\n".join(lines(events))
    assert "idle for 240 s: it ends in 60 s without input" in text
    assert "idle for 300 s (idle_timeout 300 s): ending it" in text and r.token not in text
    assert b'nexusws_session_ends_total{reason="idle",service="demo"} 1.0' in metrics.exposition()


def test_input_before_the_warning_postpones_it_without_any_event():
    world = World(limits={"idle_timeout": 300, "idle_warning": 60})
    r, launch = running(world)
    world.clock.advance(200)
    launch.input(world.clock.seconds())
    world.clock.advance(200)  # 440 would be the first check after the input
    assert after_ready(world, r) == [] and r.state == "active"
    world.clock.advance(40)
    assert after_ready(world, r) == [("idle_warning", {"seconds_left": 60.0})]
    world.clock.advance(60)
    assert r.state != "active"


def test_input_after_the_warning_clears_it_at_once_and_restarts_the_count():
    world = World(limits={"idle_timeout": 300, "idle_warning": 60})
    r, launch = running(world)
    world.clock.advance(250)
    assert [n for n, _ in after_ready(world, r)] == ["idle_warning"]
    launch.input(world.clock.seconds())  # the bridge's call on a key or pointer event
    assert after_ready(world, r)[-1] == ("active", {"by": "input"})
    launch.input(world.clock.seconds())
    assert [n for n, _ in after_ready(world, r)].count("active") == 1, "once per warning"
    world.clock.advance(239)
    assert r.state == "active" and [n for n, _ in after_ready(world, r)] == ["idle_warning", "active"]
    world.clock.advance(1)
    assert [n for n, _ in after_ready(world, r)] == ["idle_warning", "active", "idle_warning"]
    world.clock.advance(60)
    assert r.state != "active" and launch.tunnel.ended == [(4002, "session ended: idle")]


def test_a_touch_counts_as_input_and_clears_a_warning():
    world = World(limits={"idle_timeout": 100, "idle_warning": 20})
    r, _ = running(world)
    world.clock.advance(90)
    world.registry.touch(r)
    assert after_ready(world, r)[-1] == ("active", {"by": "touch"})
    world.clock.advance(99)
    assert r.state == "active"
    world.clock.advance(1)
    assert r.state != "active"


def test_the_warning_is_at_most_half_the_idle_limit_and_a_service_option_overrides_the_default():
    quick = FakeService("quick", common_options={"idle_timeout": 40})
    never = FakeService("never", common_options={"idle_timeout": 0})
    world = World(services=[quick, never], limits={"idle_timeout": 10})
    a = world.registry.reserve("quick")
    b = world.registry.reserve("never")
    for r in (a, b):
        world.registry.activate(r.token, attachment=attachment(world.registry, r.token))
    world.clock.advance(19.9)
    assert after_ready(world, a) == []
    world.clock.advance(0.1)  # the default 120 s warning, cut to half the 40 s limit
    assert after_ready(world, a) == [("idle_warning", {"seconds_left": 20.0})]
    world.clock.advance(1000)
    assert a.state != "active" and b.state == "active" and after_ready(world, b) == []


def test_a_detached_session_goes_on_counting_idle_and_a_reattach_watches_the_new_websocket():
    world = World(limits={"idle_timeout": 100, "idle_warning": 30}, reconnect_grace=1000)
    r, first = running(world)
    world.clock.advance(50)
    first.input(world.clock.seconds())
    world.registry.deactivate(r.token, first)  # its last input is kept
    world.clock.advance(75)  # warned at 120 (idle 70): the grace has not run out
    assert r.state == "detached" and [n for n, _ in after_ready(world, r)] == ["detached", "idle_warning"]
    second = attachment(world.registry, r.token)
    world.registry.activate(r.token, attachment=second)
    second.input(world.clock.seconds())
    assert after_ready(world, r)[-1] == ("active", {"by": "input"})
    world.clock.advance(99)
    assert r.state == "active"
    world.clock.advance(1)
    assert r.state != "active" and second.tunnel.ended == [(4002, "session ended: idle")]


def test_without_an_idle_limit_nothing_is_scheduled_and_idle_seconds_are_still_reported():
    world = World()
    r, launch = running(world)
    assert world.clock.getDelayedCalls() == []
    world.clock.advance(30)
    launch.input(world.clock.seconds())
    world.clock.advance(12.5)
    assert world.registry.session(r.token)["idle"] == 12.5
    assert world.registry.session(r.token)["time_left"] is None


# --- the time limit -------------------------------------------------------------------


def test_a_time_limit_warns_ends_and_extend_postpones_it(events):
    metrics = Metrics()
    world = World(limits={"max_duration": 3600, "time_warning": 300, "max_extend": 1000}, metrics=metrics)
    r, launch = running(world)
    launch.input(0)  # input does not matter to the time limit
    world.clock.advance(3299)
    assert after_ready(world, r) == [] and world.registry.session(r.token)["time_left"] == 301.0
    world.clock.advance(1)
    assert after_ready(world, r) == [("time_warning", {"seconds_left": 300.0})]
    world.clock.advance(100)
    assert world.registry.extend(r, 600) == 800.0
    assert after_ready(world, r)[-1] == ("extended", {"seconds": 600, "time_left": 800.0})
    world.clock.advance(499)
    assert [n for n, _ in after_ready(world, r)] == ["time_warning", "extended"]
    world.clock.advance(1)  # 300 s before the new limit: warned again
    assert after_ready(world, r)[-1] == ("time_warning", {"seconds_left": 300.0})
    world.clock.advance(300)
    assert r.state != "active"
    assert after_ready(world, r)[-2:] == [("ending", {"reason": "max_duration"}), ("ended", {})]
    assert launch.tunnel.ended == [(4003, "session ended: time limit reached")]
    assert b'nexusws_session_extends_total{service="demo"} 1.0' in metrics.exposition()
    assert any("time limit extended by 600 s (800 s left)" in line for line in lines(events))


def test_extend_is_bounded_by_max_extend_in_all_and_a_refusal_changes_nothing():
    world = World(limits={"max_duration": 100, "max_extend": 50})
    r, _ = running(world)
    world.registry.extend(r, 30)
    with pytest.raises(ExtendRefused) as refused:
        world.registry.extend(r, 21)
    assert refused.value.status == 403
    assert str(refused.value) == "extending by 21 s is beyond max_extend (50 s in all; 20 s left to extend)"
    assert world.registry.session(r.token)["time_left"] == 130.0 and r.extended == 30
    world.registry.extend(r, 20)
    world.clock.advance(149.9)
    assert r.state == "active"
    world.clock.advance(0.1)
    assert r.state != "active"


def test_extend_without_a_time_limit_or_before_the_start_is_a_conflict():
    world = World(limits={"max_extend": 50})
    r, _ = running(world)
    with pytest.raises(ExtendRefused) as refused:
        world.registry.extend(r, 10)
    assert (refused.value.status, str(refused.value)) == (409, "this session has no time limit")
    timed = World(limits={"max_duration": 100, "max_extend": 50})
    waiting = timed.registry.reserve("demo")
    with pytest.raises(ExtendRefused) as refused:
        timed.registry.extend(waiting, 10)
    assert (refused.value.status, str(refused.value)) == (409, "this session has not started")
    no_extension = World(limits={"max_duration": 100})
    r, _ = running(no_extension)
    with pytest.raises(ExtendRefused) as refused:
        no_extension.registry.extend(r, 1)
    assert refused.value.status == 403 and "max_extend (0 s in all" in str(refused.value)


def test_a_released_session_has_no_timer_left():
    world = World(limits={"max_duration": 100, "idle_timeout": 50})
    r, _ = running(world)
    assert len(world.clock.getDelayedCalls()) == 2
    world.registry.release(r.token)
    assert world.clock.getDelayedCalls() == []
    world.clock.advance(59)  # its events are kept a minute after its end
    assert [n for n, _ in after_ready(world, r)] == ["ending", "ended"] and world.service.stops == [0]


def test_the_limits_default_off_and_their_names_are_the_options():
    assert LIMITS == {"idle_timeout": 0.0, "idle_warning": 120.0, "max_duration": 0.0,
                      "time_warning": 300.0, "max_extend": 0.0}


def test_bytes_of_every_websocket_of_a_session_add_up_in_the_snapshot():
    world = World(reconnect_grace=100)
    r, first = running(world)
    first.tunnel.bytes_up, first.tunnel.bytes_down = 10, 2000
    assert world.registry.session(r.token)["bytes_up"] == 10
    world.registry.deactivate(r.token, first)
    second = attachment(world.registry, r.token, Tunnel(5, 500))
    world.registry.activate(r.token, attachment=second)
    snapshot = world.registry.session(r.token)
    assert (snapshot["bytes_up"], snapshot["bytes_down"]) == (15, 2500)
    world.registry.release(r.token)
    world.registry.deactivate(r.token, second, "backend closed the connection")
    snapshot = world.registry.session(r.token)
    assert (snapshot["state"], snapshot["bytes_up"], snapshot["bytes_down"]) == ("released", 15, 2500)


# --- the API --------------------------------------------------------------------------


def timed_api(tmp_path, **limits):
    return Api(tmp_path, limits={"max_duration": 600, "time_warning": 60, "max_extend": 300, **limits})


def started(api, query=""):
    token = api.reserve(query)
    api.registry.activate(token)
    return token


def test_touch_and_extend_answer_the_snapshot(tmp_path):
    api = timed_api(tmp_path, idle_timeout=100)
    token = started(api)
    api.clock.advance(40)
    r = api.get(f"/v1/touch/{token}")
    assert r.status == 200 and r.json()["idle"] == 0.0 and r.json()["state"] == "active"
    r = api.get(f"/v1/extend/{token}?seconds=120")
    assert r.status == 200 and r.json()["time_left"] == 680.0
    assert r.headers.get("cache-control") == "no-store"


@pytest.mark.parametrize("query, why", [
    ("", "seconds: missing (a whole number of seconds)"),
    ("?seconds=5&seconds=5", "seconds: give it once, a whole number of seconds"),
    ("?seconds=-5", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=0", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=1.5", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=1e9", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=abc", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=" + "9" * 5000, f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    ("?seconds=%D9%A3", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),  # Arabic 3
    ("?seconds=%2B5", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
    (f"?seconds={EXTEND_MAX_SECONDS + 1}", f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}"),
])
def test_a_bad_seconds_is_400_and_changes_nothing(tmp_path, query, why):
    api = timed_api(tmp_path)
    token = started(api)
    r = api.get(f"/v1/extend/{token}{query}")
    assert (r.status, r.json()) == (400, {"error": why})
    assert api.registry.get(token).extended == 0 and api.get(f"/v1/session/{token}").json()["time_left"] == 600


def test_extend_beyond_max_extend_is_403_with_the_reason_and_changes_nothing(tmp_path):
    api = timed_api(tmp_path)
    token = started(api)
    assert api.get(f"/v1/extend/{token}?seconds=200").status == 200
    r = api.get(f"/v1/extend/{token}?seconds=101")
    assert (r.status, r.json()) == (403, {"error": "extending by 101 s is beyond max_extend "
                                                   "(300 s in all; 100 s left to extend)"})
    assert api.get(f"/v1/session/{token}").json()["time_left"] == 800


def test_extend_without_a_limit_or_before_the_start_is_409(tmp_path):
    api = Api(tmp_path, limits={"max_extend": 300})
    r = api.get(f"/v1/extend/{started(api)}?seconds=10")
    assert (r.status, r.json()) == (409, {"error": "this session has no time limit"})
    api = timed_api(tmp_path)
    r = api.get(f"/v1/extend/{api.reserve()}?seconds=10")
    assert (r.status, r.json()) == (409, {"error": "this session has not started"})


@pytest.mark.parametrize("call", ["touch", "extend"])
def test_unknown_ended_and_another_users_tokens(tmp_path, call):
    api = timed_api(tmp_path)
    query = "?seconds=10" if call == "extend" else ""
    assert api.get(f"/v1/{call}/no-such-token{query}").status == 404
    as_alice = f"?security_token={SECRET}&user=alice"
    api = Api(tmp_path, security_token=SECRET, limits={"max_duration": 600, "max_extend": 300})
    token = api.reserve(as_alice)
    api.registry.activate(token)
    sep = "&" if query else "?"
    r = api.get(f"/v1/{call}/{token}{query}{sep}security_token={SECRET}&user=bob")
    assert (r.status, r.json()) == (403, {"error": "this token was reserved by another user"})
    assert api.registry.get(token).extended == 0
    assert api.get(f"/v1/{call}/{token}{query}{sep}security_token={SECRET}&user=alice").status == 200
    assert api.get(f"/v1/{call}/{token}{query}{sep}security_token={SECRET}").status == 200  # the operator
    api.registry.release(token)
    r = api.get(f"/v1/{call}/{token}{query}{sep}security_token={SECRET}&user=alice")
    assert (r.status, r.json()) == (404, {"error": "this session has ended"})
    assert api.get(f"/v1/session/{token}?security_token={SECRET}&user=alice").status == 200


@pytest.mark.parametrize("call", ["touch", "extend"])
def test_touch_and_extend_change_things_so_head_is_405(tmp_path, call):
    api = timed_api(tmp_path)
    r = api.get(f"/v1/{call}/{started(api)}?seconds=5", method=b"HEAD")
    assert r.status == 405 and r.headers.get("allow") == "GET"


@pytest.mark.parametrize("call", ["touch", "extend"])
def test_the_token_in_their_paths_is_masked_in_logs(call):
    token = "0b6a8f0e-1f53-4bd5-9d0c-6d2d55b9b5f1"
    assert token not in redact(f"GET /v1/{call}/{token}?seconds=5 HTTP/1.1")
    assert token not in redact(f"GET /v1/{call}/{token.replace('-', '%2D')} HTTP/1.1")


def test_the_event_stream_tells_a_launch_a_warning_activity_and_an_idle_end_in_order(tmp_path):
    api = Api(tmp_path, limits={"idle_timeout": 100, "idle_warning": 30})
    token = api.reserve()
    stream = api.send(f"/v1/events/{token}")
    api.registry.activate(token)
    api.clock.advance(75)
    assert api.get(f"/v1/touch/{token}").status == 200
    api.clock.pump([0, 70, 30])  # the Clock runs a call late if advanced past it at once
    events, _, done = stream_of(stream.transport.value())
    assert names(events) == ["reserved", "starting", "ready", "attached", "idle_warning", "active",
                             "idle_warning", "ending", "ended"]
    assert [e["data"].get("seconds_left") for e in events if e["event"] == "idle_warning"] == [25.0, 30.0]
    assert events[-2]["data"]["reason"] == "idle" and done


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(LIMITS))
@pytest.mark.parametrize("value, shown", [(-1, "-1"), ("30", '"30"'), (True, "true"), (None, "null")])
def test_a_bad_limit_in_the_config_file_is_one_line_naming_file_service_and_key(tmp_path, key, value, shown):
    config = tmp_path / "services.json"
    config.write_text(json.dumps({"desk": {"script": "missing.py", "count": 1, "options": {key: value}}}))
    with pytest.raises(StartupError) as info:
        read_config(config)
    assert str(info.value) == (f"{config}: service 'desk': 'options.{key}' must be a number of "
                               f"seconds >= 0, not {shown}")


def test_the_limit_options_default_off_and_reach_the_registry(tmp_path):
    options = parse("9090")
    assert {name: options[name] for name in LIMITS} == LIMITS
    options = parse("--idle_timeout", "600", "--idle-warning", "60", "--max_duration", "3600",
                    "--time_warning", "120", "--max_extend", "1800", "9090")
    assert [options[name] for name in LIMITS] == [600.0, 60.0, 3600.0, 120.0, 1800.0]


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("value", ["-1", "soon", "nan", ""])
def test_a_bad_limit_option_is_a_usage_error_naming_it(name, value):
    with pytest.raises(usage.UsageError) as info:
        parse(f"--{name}", value, "9090")
    assert str(info.value) == f"--{name}: {value!r} is not a number of seconds >= 0"


def test_every_call_with_a_token_in_its_path_has_it_masked():
    # reserve's is a service; the dashboard's, a session's id (its token's tag, no secret).
    with_token = {name for name, call in CALLS.items()
                  if call.arity == 1 and name != "reserve" and not name.startswith("admin_")}
    assert with_token == set(TOKEN_CALLS)


def test_a_sessions_own_calls_need_no_security_token_only_the_reservation_token(tmp_path):
    """As the token's WebSocket: a page behind the proxy reads and keeps its session alive
    without the operator's secret; everything else still needs it."""
    api = Api(tmp_path, services=[FakeService(count=2)], security_token=SECRET,
              limits={"max_duration": 600, "max_extend": 300})
    alices = api.reserve(f"?security_token={SECRET}&user=alice")
    anonymous = api.reserve(f"?security_token={SECRET}")
    for token in (alices, anonymous):
        api.registry.activate(token)
    as_alice = [("X-Remote-User", "alice")]
    for call in ("session", "touch", "extend?seconds=5"):
        path, _, query = call.partition("?")
        target = f"/v1/{path}/{alices}" + (f"?{query}" if query else "")
        assert api.get(target, headers=as_alice).status == 200
        assert api.get(target).status == 403, "anonymous, for alice's token"
        assert api.get(target, headers=[("X-Remote-User", "bob")]).status == 403
        anyone = f"/v1/{path}/{anonymous}" + (f"?{query}" if query else "")
        assert api.get(anyone).status == 200
    assert api.registry.get(alices).extended == 5 and api.registry.get(anonymous).extended == 5
    for other in ("status", "metrics", "stop"):
        assert api.get(f"/v1/{other}", headers=as_alice).status == 401, other
    # A user the proxy names makes their own reservations without it, under the access
    # rules: from behind a proxy, only with --allow_remote_api.
    for own in (f"release/{alices}", "reserve/demo"):
        assert api.get(f"/v1/{own}", headers=as_alice).status == 403, own
        assert api.get(f"/v1/{own}").status == 401, own
    assert api.registry.get(alices) is not None and api.stop_calls == []


def test_touch_before_the_start_is_409_and_idle_stays_unknown(tmp_path):
    """Found by the hostile review: a touch of a reserved session answered 200 and made its
    snapshot say idle 0.0 (README: null until active)."""
    api = Api(tmp_path)
    token = api.reserve()
    r = api.get(f"/v1/touch/{token}")
    assert (r.status, r.json()) == (409, {"error": "this session has not started"})
    assert api.get(f"/v1/session/{token}").json()["idle"] is None


def test_extend_checks_the_token_before_seconds_and_logs_an_owners_refusal_at_info(tmp_path, events):
    api = Api(tmp_path, security_token=SECRET, limits={"max_duration": 600, "max_extend": 10})
    token = api.reserve(f"?security_token={SECRET}&user=alice")
    api.registry.activate(token)
    assert api.get(f"/v1/extend/{token}?seconds=abc", headers=[("X-Remote-User", "bob")]).status == 403
    assert api.get("/v1/extend/no-such-token?seconds=abc").status == 404
    for _ in range(3):
        assert api.get(f"/v1/extend/{token}?seconds=11", headers=[("X-Remote-User", "alice")]).status == 403
    refusals = [e for e in events if "/v1/extend refused" in formatEvent(e) and "max_extend" in formatEvent(e)]
    assert len(refusals) == 3 and {e["log_level"].name for e in refusals} == {"info"}
    assert "beyond max_extend" in formatEvent(refusals[0]) and token not in formatEvent(refusals[0])
