"""In memory: WebSockets whose backend is started on demand (sessions), and the token router."""

import re

import pytest
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, error

from nexusws.routing import FixedRouter, Launch, LaunchFailed, NoRouter, Target, TokenRouter
from nexusws.sessions.backend import (
    BUSY,
    CRASHED,
    CUT_SHORT,
    FAILED,
    NO_INSTANCE,
    NOT_READY,
    NOT_RECORDED,
    StartFailure,
)
from nexusws.sessions.registry import TokenInUse, UnknownToken
from support.bridge import Harness, lines


class LaunchRouter:
    """Routes every WebSocket to a launch the test completes by hand."""

    def __init__(self):
        self.started = defer.Deferred()
        self.ended = []

    def route(self, request):
        return Launch(self.started, lambda why: self.ended.append(True), "Demo#0")


def launching():
    router = LaunchRouter()
    h = Harness(router=router)
    h.flush()
    return h, router


def test_launch_opens_at_once_and_holds_client_data_until_the_backend_is_up():
    """The client is read meanwhile (so its leaving is noticed), its payload kept, and
    delivered first once the backend is up."""
    h, router = launching()
    assert h.client.opened, "101 is sent before the instance is started"
    assert h.endpoint.attempts == []
    h.client.sendMessage(b"early ", isBinary=True)
    h.flush()
    assert not h.server_transport.paused
    router.started.callback(Target("127.0.0.1", 7000))
    h.flush()
    assert h.targets == [Target("127.0.0.1", 7000)]
    h.connect_backend(b"hello")
    h.flush()
    assert not h.server_transport.paused
    assert h.client.received == b"hello"
    h.client.sendMessage(b"up", isBinary=True)
    h.flush()
    assert bytes(h.backend.received) == b"early up"


def test_a_client_sending_more_than_the_held_limit_during_a_launch_is_read_no_more():
    """What waits for the backend is bounded: past HELD_LIMIT the client is paused,
    and read again once the backend is up; nothing is lost."""
    from nexusws.handshake import HELD_LIMIT

    h, router = launching()
    chunk = b"x" * 65536
    for _ in range(HELD_LIMIT // len(chunk) + 1):
        h.client.sendMessage(chunk, isBinary=True)
    h.flush()
    assert h.server_transport.paused
    router.started.callback(Target("127.0.0.1", 7000))
    h.flush()
    h.connect_backend()
    h.flush()
    assert not h.server_transport.paused
    assert len(h.backend.received) == (HELD_LIMIT // len(chunk) + 1) * len(chunk)


def test_failed_launch_closes_the_client_with_1011_and_the_reason(events):
    h, router = launching()
    router.started.errback(RuntimeError("port 7000 did not accept connections within 30s"))
    h.flush()
    assert h.client.closed[1] == 1011
    assert "did not accept" in h.client.closed[2]
    assert any("tunnel failed" in line for line in lines(events))
    assert router.ended == [True], "the reservation is ended after a failed launch"


def test_the_close_reason_of_a_failed_launch_has_its_secrets_masked():
    """A script's exception may quote its options: the client is not shown the secrets."""
    h, router = launching()
    router.started.errback(RuntimeError("cannot start with {'vnc_password': 'hunter2'} ?password=swordfish"))
    h.flush()
    assert h.client.closed[1] == 1011
    assert "hunter2" not in h.client.closed[2] and "swordfish" not in h.client.closed[2]
    assert "***" in h.client.closed[2]


def test_a_long_failure_reason_keeps_its_start_and_end_within_the_close_frame_limit():
    h, router = launching()
    router.started.errback(RuntimeError("what failed: " + "x" * 200 + " the remedy"))
    h.flush()
    reason = h.client.closed[2]
    assert len(reason.encode()) <= 123 and "..." in reason
    assert reason.startswith("what failed:") and reason.endswith("the remedy")


def test_unreachable_backend_after_launch_closes_with_1011():
    h, router = launching()
    router.started.callback(Target("127.0.0.1", 7000))
    h.flush()
    h.fail_backend(error.ConnectionRefusedError())
    h.flush()
    assert h.client.closed[1] == 1011
    assert "unreachable" in h.client.closed[2]
    assert router.ended == [True]


def test_closing_the_websocket_ends_the_launch_exactly_once():
    h, router = launching()
    router.started.callback(Target("127.0.0.1", 7000))
    h.flush()
    h.connect_backend()
    h.flush()
    h.client.sendClose(1000)
    h.flush()
    assert router.ended == [True]
    assert h.backend.lost is not None


def test_client_leaving_during_the_launch_ends_it_and_connects_nothing():
    h, router = launching()
    h.client.sendClose(1000)
    h.flush()
    assert router.ended == [True]
    router.started.callback(Target("127.0.0.1", 7000))
    h.flush()
    assert h.endpoint.attempts == [], "no backend connection for a client that left"


# --- the token router ---------------------------------------------------------


class Request:
    def __init__(self, **params):
        self.params = {k: [v] for k, v in params.items()}


class Reservation:
    class service:
        name = "Demo Session"

    index = 1


class Registry:
    def __init__(self, error=None):
        self.error = error
        self.activated = []
        self.deactivated = []
        self.started = defer.Deferred()

    def get(self, token):
        return Reservation() if self.error is None else None

    def activate(self, token, attachment=None, takeover=False):
        if self.error is not None:
            raise self.error
        self.activated.append(token)
        return self.started

    def deactivate(self, token, attachment=None, ended=None):
        self.deactivated.append(token)


def test_token_router_activates_the_reservation_and_ends_it_on_close():
    registry = Registry()
    launch = TokenRouter(registry, NoRouter()).route(Request(token="T1"))
    assert isinstance(launch, Launch) and str(launch) == "Demo Session#1"
    assert registry.activated == ["T1"]
    registry.started.callback(("127.0.0.1", 7001))
    assert launch.started.result == Target("127.0.0.1", 7001)
    launch.end()
    launch.end()
    assert registry.deactivated == ["T1"]


@pytest.mark.parametrize("exc, code", [(UnknownToken("x"), 404), (TokenInUse("x"), 409)])
def test_token_router_refuses_unknown_and_busy_tokens_at_the_handshake(exc, code):
    with pytest.raises(ConnectionDeny) as info:
        TokenRouter(Registry(error=exc), NoRouter()).route(Request(token="T1"))
    assert info.value.code == code


def test_token_router_sends_token_less_requests_to_basic_mode():
    router = TokenRouter(Registry(), FixedRouter(Target("127.0.0.1", 5900)))
    assert router.route(Request()) == Target("127.0.0.1", 5900)
    with pytest.raises(ConnectionDeny) as info:
        TokenRouter(Registry(), NoRouter()).route(Request())
    assert info.value.code == 404


# --- a failed start, as the client and the log see it --------------------------

EXITED = "demo[1] app exited (status 3) before 127.0.0.1:7000 accepted connections"
FAILURES = [  # (the registry's StartFailure, the close reason)
    (StartFailure("Demo Session", 1, FAILED, EXITED, exit_status=3), EXITED),
    (StartFailure("Demo Session", 1, CRASHED, "RuntimeError: boom"), "RuntimeError: boom"),
    (StartFailure("Demo Session", 1, NOT_READY, "127.0.0.1:7000 did not accept connections within 2 s"),
     "failed to start: 127.0.0.1:7000 did not accept connections within 2 s"),
    (StartFailure("Demo Session", 1, CUT_SHORT, "released"), "was stopped before it started (released)"),
    (StartFailure("Demo Session", 1, NOT_RECORDED, "the session state cannot be recorded (disk full)"),
     "Demo Session instance 1 not started: the session state cannot be recorded (disk full)"),
    (StartFailure("Demo Session", 1, BUSY), "is already running"),
    (StartFailure("Demo Session", 1, FAILED, " "), "no reason given"),  # a script's ServiceError("")
    (StartFailure("Demo Session", 1, NO_INSTANCE), "service 'Demo Session' has no instance 1"),
]


@pytest.mark.parametrize("failure, reason", FAILURES, ids=lambda v: getattr(v, "what", None))
def test_a_failed_start_closes_the_tunnel_1011_with_its_cause_and_logs_it(events, failure, reason):
    """The StartFailure's fields (what, why; the exit status inside why) reach the close
    reason and the "tunnel failed" line; the service and index, which the client knows, do not."""
    registry = Registry()
    h = Harness(router=TokenRouter(registry, NoRouter()))
    h.flush()
    registry.started.errback(failure)
    h.flush()
    assert h.client.closed[1] == 1011 and h.client.closed[2] == reason
    assert any(line.startswith("tunnel failed: ") and line.endswith(f" -> Demo Session#1: {reason}")
               for line in lines(events))
    assert registry.deactivated == ["SECRET"]


def test_a_start_an_administrator_cut_short_closes_the_tunnel_4004_as_a_running_ones_end_does():
    registry = Registry()
    h = Harness(router=TokenRouter(registry, NoRouter()))
    h.flush()
    registry.started.errback(StartFailure("Demo Session", 1, CUT_SHORT, "admin"))
    h.flush()
    assert h.client.closed[1:] == (4004, "session ended by an administrator")


def test_the_launch_failure_carries_the_start_failures_fields():
    registry = Registry()
    launch = TokenRouter(registry, NoRouter()).route(Request(token="T1"))
    registry.started.errback(FAILURES[0][0])
    failed = []
    launch.started.addErrback(failed.append)
    e = failed[0].value
    assert isinstance(e, LaunchFailed) and str(e) == EXITED
    assert (e.what, e.why, e.exit_status) == (FAILED, EXITED, 3)


#: How routing took the registry's messages apart before StartFailure had fields.
_OLD_PREFIX = re.compile(r"^service '.*?' instance \d+(: start failed)?: |^service '.*?' instance \d+ ")


@pytest.mark.parametrize("what", [FAILED, CRASHED, NOT_READY, CUT_SHORT, NOT_RECORDED, BUSY, NO_INSTANCE])
def test_the_close_reason_from_the_fields_is_what_parsing_the_message_gave(what):
    """No change for clients: the reason built from the fields equals the old regex's result."""
    e = StartFailure("demo", 0, what, "ValueError: no display free")
    assert e.reason == (_OLD_PREFIX.sub("", str(e), count=1) or str(e))



def test_a_start_failure_without_a_reason_still_tells_the_client_something():
    e = StartFailure("modes", 0, FAILED, "")
    assert (str(e), e.reason) == ("service 'modes' instance 0: no reason given", "no reason given")
    assert str(StartFailure("modes", 0, BUSY)) == "service 'modes' instance 0 is already running"
