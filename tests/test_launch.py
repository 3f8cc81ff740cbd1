"""In memory: WebSockets whose backend is started on demand (sessions), and the token router."""

import pytest
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, error

from nexusws.reservations import TokenInUse, UnknownToken
from nexusws.routing import FixedRouter, Launch, NoRouter, Target, TokenRouter
from support.bridge import Harness, lines


class LaunchRouter:
    """Routes every WebSocket to a launch the test completes by hand."""

    def __init__(self):
        self.started = defer.Deferred()
        self.ended = []

    def route(self, request):
        return Launch(self.started, lambda: self.ended.append(True), "Demo#0")


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
    from nexusws.bridge import HELD_LIMIT

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

    def activate(self, token):
        if self.error is not None:
            raise self.error
        self.activated.append(token)
        return self.started

    def deactivate(self, token):
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
