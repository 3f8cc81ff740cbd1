"""A session's events (issue 15, item 4) in memory: the registry's event log, the
/v1/events/{token} Server-Sent Events stream and the /v1/session/{token} snapshot.

A real L{Registry} of fake services behind a real L{ApiRoot} and Site (support/api.py),
every timer on a L{Clock}; the stream's bytes read from the in-memory transport.
The same through a real gateway and session script: test_events_sessions.py.
"""

import pytest
from twisted.internet import defer

from nexusws.sessions.backend import FAILED, StartFailure
from nexusws.sessions.events import KEEP_EVENTS, PROGRESS_MAX, progress_text
from nexusws.sessions.timeouts import EVENTS_KEPT_AFTER_END
from nexusws.streams import KEEPALIVE
from support.api import SECRET, Api, FakeService
from support.sse import Cramped, names, stream_of

LAUNCH = ["reserved", "starting", "ready", "attached"]


class FailingService(FakeService):
    def start(self, index, options):
        self.starts.append((index, dict(options)))
        return defer.fail(StartFailure(self.name, index, FAILED, "no licence left"))


@pytest.fixture
def api(tmp_path):
    return Api(tmp_path)


def read(exchange):
    return stream_of(exchange.transport.value())


def launch(api, token):
    d = api.registry.activate(token)
    assert d.called
    return d


def test_a_launch_detach_reattach_and_release_stream_every_event_in_order(api):
    token = api.reserve()
    stream = api.send(f"/v1/events/{token}")
    launch(api, token)
    api.registry._progress(api.services[0], 0, "warming up")
    api.clock.advance(5)
    api.registry.deactivate(token)
    api.registry.activate(token)
    api.registry.release(token)
    r = stream.transport.value()
    head = r.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"content-type: text/event-stream" in head
    assert b"cache-control: no-store" in head
    events, comments, done = read(stream)
    assert names(events) == [*LAUNCH, "progress", "detached", "reattached", "ending", "ended"]
    assert [int(e["id"]) for e in events] == list(range(1, 10))
    assert all(e["data"]["id"] == int(e["id"]) and e["data"]["event"] == e["event"] for e in events)
    assert all(e["data"]["time"].startswith("2026-01-01T00:00:") and e["data"]["time"].endswith("Z")
               for e in events)
    data = {e["event"]: e["data"] for e in events}
    assert data["progress"]["text"] == "warming up"
    assert data["detached"]["grace_left"] == 60
    assert data["ending"]["reason"] == "released"
    assert done and stream.finished, "the stream ends after ended"


def test_a_failed_start_ends_with_the_failure(tmp_path):
    api = Api(tmp_path, services=[FailingService()])
    token = api.reserve()
    stream = api.send(f"/v1/events/{token}")
    d = api.registry.activate(token)
    d.addErrback(lambda f: f.trap(StartFailure))
    events, _, done = read(stream)
    assert names(events) == ["reserved", "starting", "ending", "ended"]
    assert events[2]["data"]["reason"] == "failed" and events[2]["data"]["failure"] == "no licence left"
    assert done


@pytest.mark.parametrize(("end", "reason"), [
    (lambda api, token: api.registry.deactivate(token, ended="the backend closed"), "closed"),
    (lambda api, token: api.registry.shutdown(), "stopped"),
])
def test_other_ends_name_their_reason(api, end, reason):
    token = api.reserve()
    launch(api, token)
    end(api, token)
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert names(events)[-2:] == ["ending", "ended"] and events[-2]["data"]["reason"] == reason


def test_a_grace_that_runs_out_ends_with_grace_expired(api):
    token = api.reserve()
    launch(api, token)
    api.registry.deactivate(token)
    api.clock.advance(60)
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert names(events)[-3:] == ["detached", "ending", "ended"]
    assert events[-2]["data"]["reason"] == "grace_expired"


def test_an_unused_reservation_that_expires_or_is_released_ends(api):
    token = api.reserve()
    api.registry.release(token)
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert names(events) == ["reserved", "ending", "ended"] and events[1]["data"]["reason"] == "released"
    token = api.reserve()
    api.clock.advance(api.registry.timeout)
    api.registry.reap()
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert names(events) == ["reserved", "ending", "ended"] and events[1]["data"]["reason"] == "expired"


def test_last_event_id_resumes_without_loss_or_duplicates(api):
    token = api.reserve()
    first = api.send(f"/v1/events/{token}")
    launch(api, token)
    events, _, _ = read(first)
    assert names(events) == LAUNCH
    first.hang_up()
    for step in range(3):
        api.registry._progress(api.services[0], 0, f"step {step}")
    api.registry.deactivate(token)
    again = api.send(f"/v1/events/{token}", headers=[("Last-Event-ID", "2")])
    resumed, _, _ = read(again)
    assert [int(e["id"]) for e in resumed] == list(range(3, 9))
    assert names(resumed) == ["ready", "attached", "progress", "progress", "progress", "detached"]
    by_query, _, _ = read(api.send(f"/v1/events/{token}?last_event_id=7"))
    assert [int(e["id"]) for e in by_query] == [8]
    api.registry.activate(token)  # new ones follow on both open streams, once each
    assert [int(e["id"]) for e in read(again)[0]] == list(range(3, 10))
    assert [int(e["id"]) for e in read(api.exchanges[-1])[0]] == [8, 9]


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "+1", "1_0", "-0", "9" * 5000])
def test_a_bad_last_event_id_is_400(api, value):
    token = api.reserve()
    assert api.get(f"/v1/events/{token}", headers=[("Last-Event-ID", value)]).status == 400


def test_an_id_the_log_never_gave_sends_everything_kept(api):
    token = api.reserve()
    events, _, _ = read(api.send(f"/v1/events/{token}?last_event_id=99"))
    assert names(events) == ["reserved"]


def test_a_keep_alive_comment_every_15_seconds_on_the_clock(api):
    token = api.reserve()
    stream = api.send(f"/v1/events/{token}")
    assert KEEPALIVE == 15
    api.clock.advance(KEEPALIVE - 0.1)
    assert read(stream)[1] == []
    api.clock.advance(0.1)
    assert read(stream)[1] == ["keep-alive"]
    api.clock.advance(KEEPALIVE)
    assert read(stream)[1] == ["keep-alive", "keep-alive"]
    stream.hang_up()
    assert not api.clock.getDelayedCalls() or all(
        c.func.__name__ != "_keep_alive" for c in api.clock.getDelayedCalls())


def test_access_follows_the_token_user_or_the_security_token(tmp_path):
    api = Api(tmp_path, security_token=SECRET)
    token = api.reserve(f"?security_token={SECRET}&user=alice")
    for call in ("events", "session"):
        assert api.get(f"/v1/{call}/{token}?security_token={SECRET}&user=bob").status == 403
        # Without the security token: the token's own rule (its user, from the trusted proxy).
        assert api.get(f"/v1/{call}/{token}").status == 403
        assert api.get(f"/v1/{call}/{token}", method=b"HEAD", headers=[("X-Remote-User", "bob")]).status == 403
        assert api.get(f"/v1/{call}/{token}", method=b"HEAD", headers=[("X-Remote-User", "alice")]).status == 200
        assert api.get(f"/v1/{call}/{token}?security_token=wrong", method=b"HEAD",
                       headers=[("X-Remote-User", "alice")]).status == 200
        assert api.get(f"/v1/{call}/no-such-token?security_token={SECRET}").status == 404
        assert api.get(f"/v1/{call}/no-such-token").status == 404
    assert api.get(f"/v1/session/{token}?security_token={SECRET}&user=alice").json()["user"] == "alice"
    assert api.get(f"/v1/session/{token}?security_token={SECRET}").json()["user"] == "alice"
    mine = api.send(f"/v1/events/{token}?security_token={SECRET}&user=alice")
    operator = api.send(f"/v1/events/{token}", headers=[("Authorization", f"Bearer {SECRET}")])
    assert names(read(mine)[0]) == names(read(operator)[0]) == ["reserved"]


def test_an_anonymous_reservation_is_readable_by_whoever_has_its_token(api):
    token = api.reserve()
    assert api.get(f"/v1/session/{token}").status == 200


def test_head_and_other_methods_follow_the_table(api):
    token = api.reserve()
    head = api.get(f"/v1/events/{token}", method=b"HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"].startswith("text/event-stream")
    assert api.get(f"/v1/session/{token}", method=b"HEAD").status == 200
    for call in ("events", "session"):
        r = api.get(f"/v1/{call}/{token}", method=b"POST")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
        assert api.get(f"/v1/{call}").status == 404


def test_an_ended_reservation_is_readable_for_a_while_then_404(api):
    token = api.reserve()
    api.registry.release(token)
    assert api.get(f"/v1/session/{token}").json()["state"] == "released"
    api.clock.advance(EVENTS_KEPT_AFTER_END - 1)
    assert api.get(f"/v1/events/{token}", method=b"HEAD").status == 200
    api.clock.advance(1)
    assert api.get(f"/v1/events/{token}").status == 404
    assert api.get(f"/v1/session/{token}").status == 404


def test_the_snapshot_in_each_state(tmp_path):
    service = FakeService()
    service.stopping = defer.Deferred()  # stop() takes until the test says so
    api = Api(tmp_path, services=[service])
    token = api.reserve()

    def snapshot():
        r = api.get(f"/v1/session/{token}")
        assert r.status == 200, r.raw
        return r.json()

    quiet = {"idle": None, "time_left": None, "bytes_up": 0, "bytes_down": 0}
    assert snapshot() == {"service": "demo", "index": 0, "user": None, "state": "reserved",
                          "since": "2026-01-01T00:00:00Z", "attached": False, "grace_left": None, **quiet}
    api.clock.advance(3)
    launch(api, token)
    assert snapshot() | {"since": None} == {"service": "demo", "index": 0, "user": None, "state": "active",
                                            "since": None, "attached": True, "grace_left": None,
                                            **quiet, "idle": 0.0}
    assert snapshot()["since"] == "2026-01-01T00:00:03Z"
    api.clock.advance(2)
    api.registry.deactivate(token)
    api.clock.advance(10.5)
    assert snapshot() | {"since": None} == {"service": "demo", "index": 0, "user": None,
                                            "state": "detached", "since": None, "attached": False,
                                            "grace_left": 49.5, **quiet, "idle": 12.5}
    assert snapshot()["since"] == "2026-01-01T00:00:05Z"
    api.registry.release(token)
    assert snapshot()["state"] == "stopping" and snapshot()["attached"] is False
    api.clock.advance(1)
    service.stopping.callback(None)
    assert snapshot() == {"service": "demo", "index": 0, "user": None, "state": "released",
                          "since": "2026-01-01T00:00:16Z", "attached": False, "grace_left": None, **quiet}


def test_a_starting_session_is_attached_and_reports_its_progress(tmp_path):
    service = FakeService()
    started = defer.Deferred()
    service.start = lambda index, options: started
    api = Api(tmp_path, services=[service])
    token = api.reserve()
    stream = api.send(f"/v1/events/{token}")
    api.registry.activate(token)
    assert api.get(f"/v1/session/{token}").json()["state"] == "starting"
    assert api.get(f"/v1/session/{token}").json()["attached"] is True
    service.on_progress(service, 0, "line one\nline\ttwo \x00" + "x" * 500)
    started.callback(("127.0.0.1", 5900))
    events, _, _ = read(stream)
    assert names(events) == LAUNCH[:2] + ["progress"] + LAUNCH[2:]
    text = events[2]["data"]["text"]
    assert text.startswith("line one line two x") and len(text) == PROGRESS_MAX and "\n" not in text


def test_progress_text_is_one_bounded_printable_line():
    assert progress_text("  a\r\nb\x1b[31m c ") == "a b [31m c"
    assert progress_text(42) == "42"
    assert progress_text("é" * 300) == "é" * (PROGRESS_MAX - 3) + "..."


def test_a_takeover_is_reported_as_attached(api):
    token = api.reserve()
    launch(api, token)
    api.registry.activate(token, attachment=object(), takeover=True)
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert names(events)[-1] == "attached" and events[-1]["data"]["takeover"] is True


def test_a_log_keeps_a_bounded_number_of_events(api):
    token = api.reserve()
    launch(api, token)
    for step in range(1000):
        api.registry._progress(api.services[0], 0, f"step {step}")
    log = api.registry.events_of(token)
    assert len(log.events) == KEEP_EVENTS and log.events[-1]["id"] == 1004
    events, _, _ = read(api.send(f"/v1/events/{token}"))
    assert [int(e["id"]) for e in events] == list(range(1005 - KEEP_EVENTS, 1005))


def test_a_client_that_never_reads_costs_bounded_memory_and_its_stream_is_closed(api):
    token = api.reserve()
    launch(api, token)
    cramped = Cramped(limit=4096)
    stream = api.send(f"/v1/events/{token}", transport=cramped)
    for step in range(10_000):
        api.registry._progress(api.services[0], 0, f"step {step} of a long start")
    assert cramped.full and cramped.most < 4096 + 512, cramped.most
    api.clock.advance(KEEPALIVE * 4)  # no keep-alive into a full buffer either
    assert cramped.most < 4096 + 512
    cramped.drain()
    events, _, done = stream_of(cramped.everything())
    assert done and stream.finished, "lagged past what is kept: closed, so that the client reconnects"
    last = int(events[-1]["id"])
    assert [int(e["id"]) for e in events] == list(range(1, last + 1))
    resumed, _, _ = read(api.send(f"/v1/events/{token}", headers=[("Last-Event-ID", str(last))]))
    assert [int(e["id"]) for e in resumed] == list(range(10_005 - KEEP_EVENTS, 10_005))


def test_a_client_that_lags_within_what_is_kept_resumes_without_loss(api):
    token = api.reserve()
    launch(api, token)
    cramped = Cramped(limit=2048)
    stream = api.send(f"/v1/events/{token}", transport=cramped)
    for step in range(100):
        api.registry._progress(api.services[0], 0, f"step {step}")
    assert cramped.full
    cramped.drain()
    while cramped.full:
        cramped.drain()
    api.registry.release(token)
    cramped.drain()
    events, _, done = stream_of(cramped.everything())
    assert [int(e["id"]) for e in events] == list(range(1, 107))
    assert names(events)[-2:] == ["ending", "ended"] and done and stream.finished


def test_a_session_that_ends_while_its_client_lags_closes_the_stream(api):
    token = api.reserve()
    launch(api, token)
    cramped = Cramped(limit=512)
    stream = api.send(f"/v1/events/{token}", transport=cramped)
    for step in range(20):
        api.registry._progress(api.services[0], 0, f"step {step}")
    api.registry.release(token)
    assert stream.finished
    cramped.drain()
    last = int(stream_of(cramped.everything())[0][-1]["id"])
    rest, _, done = read(api.send(f"/v1/events/{token}", headers=[("Last-Event-ID", str(last))]))
    assert names(rest)[-2:] == ["ending", "ended"] and done
