"""The bridge tells a session's registry when its user gives input (issue 15, item 2), in memory:
a client, the gateway's bridge and an RFB (or other) backend over iosim, the registry on the
same clock, on both data paths. The RFB parser itself: test_activity.py."""

import struct

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent

from nexusws.routing import NoRouter, TokenRouter
from support.bridge import Harness
from support.data_path import both_paths
from support.reservations import World

IDLE = {"idle_timeout": 100, "idle_warning": 30}
HANDSHAKE = [b"RFB 003.008\n", b"\x01", b"\x01"]  # version, security None, ClientInit (shared)
SET_ENCODINGS = struct.pack("!BxHii", 2, 2, 0, -223)
FBUR = struct.pack("!BBHHHH", 3, 1, 0, 0, 1024, 768)
POINTER = struct.pack("!BBHH", 5, 0, 10, 20)
KEY = struct.pack("!BBxxI", 4, 1, 0x61)


class Session:
    """A world whose registry and bridge share one clock, and a client attached to its session."""

    def __init__(self, greeting=b"RFB 003.008\n", limits=IDLE, grace=0.0):
        self.world = World(clock=MemoryReactorClock(), limits=limits, reconnect_grace=grace)
        self.r = self.world.registry.reserve("demo")
        self.h = Harness(router=TokenRouter(self.world.registry, NoRouter()), reactor=self.world.clock,
                         url=f"ws://127.0.0.1:9090/websockify?token={self.r.token}")
        self.h.flush()
        assert self.h.client.opened
        self.h.connect_backend(greeting)
        self.h.flush()

    def send(self, *messages):
        for message in messages:
            self.h.client.sendMessage(message, isBinary=True)
        self.h.flush()

    def advance(self, seconds):
        self.h.reactor.advance(seconds)
        self.h.flush()

    def events(self):
        return [e["event"] for e in self.world.registry.events_of(self.r.token).events]


def lines(log_events):
    return [formatEvent(e) for e in log_events]


@both_paths
def test_a_vnc_viewer_that_only_asks_for_updates_is_idle_and_is_ended_with_4002():
    s = Session()
    s.send(*HANDSHAKE, SET_ENCODINGS, FBUR)
    for _ in range(15):  # a viewer left open: update requests all the time
        s.advance(5)
        s.send(FBUR)
    assert "idle_warning" in s.events() and s.r.state == "active"
    for _ in range(6):
        s.advance(5)
        if s.h.client.closed is None:
            s.send(FBUR)
    assert s.r.state != "active" and s.events()[-2:] == ["ending", "ended"]
    assert s.h.client.closed == (True, 4002, "session ended: idle")
    assert bytes(s.h.backend.received).startswith(b"".join(HANDSHAKE) + SET_ENCODINGS + FBUR)


@both_paths
def test_pointer_and_key_events_keep_it_alive_and_clear_a_warning_at_once():
    s = Session()
    s.send(*HANDSHAKE, SET_ENCODINGS, FBUR)
    for _ in range(10):
        s.advance(30)
        s.send(FBUR, POINTER if _ % 2 else KEY)
    assert s.r.state == "active" and "idle_warning" not in s.events()
    s.advance(70)
    assert s.events()[-1] == "idle_warning"
    s.send(FBUR)
    assert s.events()[-1] == "idle_warning", "an update request is no input"
    s.send(POINTER)
    assert s.events()[-1] == "active"
    assert s.world.registry.session(s.r.token)["idle"] == 0.0


@both_paths
def test_a_backend_that_does_not_speak_rfb_counts_every_client_byte(events):
    s = Session(greeting=b"SSH-2.0-OpenSSH_9.2\r\n")
    for _ in range(10):
        s.advance(30)
        s.send(b"\x03")
    assert s.r.state == "active" and "idle_warning" not in s.events()
    assert not any("input tracking" in line for line in lines(events))


def test_a_security_type_it_cannot_follow_is_logged_once_and_counts_bytes(events):
    s = Session()
    s.send(b"RFB 003.008\n", b"\x13")  # VeNCrypt: TLS follows
    for _ in range(10):
        s.advance(30)
        s.send(b"\x16\x03\x01 hello")
    assert s.r.state == "active" and "idle_warning" not in s.events()
    said = [line for line in lines(events) if "input tracking" in line]
    assert len(said) == 1 and "19" in said[0] and said[0].endswith("counting every byte from the client as input")


def test_a_reattached_websocket_is_followed_from_its_own_greeting():
    s = Session(grace=1000)
    s.send(*HANDSHAKE, POINTER)
    s.h.client.sendClose(1000)
    s.h.flush()
    assert s.r.state == "detached"
    second = Harness(like=s.h, url=f"ws://127.0.0.1:9090/websockify?token={s.r.token}")
    second.flush()
    second.connect_backend(b"RFB 003.008\n")
    second.flush()
    assert s.r.state == "active"
    for message in HANDSHAKE:  # its own handshake: a new connection to the server
        second.client.sendMessage(message, isBinary=True)
    for _ in range(4):
        second.reactor.advance(20)
        second.client.sendMessage(FBUR, isBinary=True)
        second.flush()
    assert s.events()[-1] == "idle_warning"
    second.client.sendMessage(POINTER, isBinary=True)
    second.flush()
    assert s.events()[-1] == "active"
