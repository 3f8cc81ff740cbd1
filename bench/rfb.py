"""Figure 10: client -> backend over RFB (VNC), nexusws's input tracking on.

The client speaks RFB 3.8 through the tunnel to C{backend.py --rfb}: the
handshake (security type None), then what noVNC 1.7 sends first
(SetPixelFormat, SetEncodings with noVNC's list, ExtendedMouseButtons
included, and a FramebufferUpdateRequest, each message in a WebSocket message
of its own, as noVNC flushes them), then one of the streams below. A stream
is announced by a ClientCutText C{SINK n} (n: the stream's bytes) and timed
from that message to the backend's ServerCutText C{K}, sent once it has read
all n bytes (figure 2's way: the time to the backend, not to the gateway).

  bulk     ClientCutText messages of 64 KiB (8-byte header + 65,528 bytes of
           text), one message a WebSocket frame: the issue's figure, and the
           tracker's bulk path at its busiest (a header to read in every frame)
  paste    one ClientCutText of n bytes cut into 10 KiB frames, as noVNC sends
           a paste (its send buffer is 10 KiB): after the first frame the
           tracker only counts down the body
  events   PointerEvent and FramebufferUpdateRequest alternating, one message
           a frame: what noVNC sends (it flushes every event on its own, a
           mouse move at most every 17 ms); the per-message, per-frame cost
  batched  4,096 PointerEvent + FramebufferUpdateRequest pairs in each 64 KiB
           frame: no client sends this, it isolates the tracker's per-message
           loop (8,192 messages a frame)

nexusws is measured through a SESSION tunnel (a token of the bench's C{Rfb}
service, bench/service/rfb_session.py): only a session tunnel has an
InputTracker. Before each measurement L{check_tracking} proves the tracker
follows RFB (a FramebufferUpdateRequest does not count as input, a
PointerEvent does: C{/v1/session/{token}}'s C{idle}); after it the gateway's
log must hold no C{input tracking:} line (the tracker's fallback, after which
every byte counts and nothing is parsed), and the session's C{bytes_up} must
hold the stream. A measurement failing either is discarded, with a note.
"""

import struct
import time

from backend import RFB_ACK, RFB_EMPTY_UPDATE, RFB_PIXEL_FORMAT, RFB_VERSION
from figures import Rest, Target
from wsproto import frame

KiB = 1024
FRAME = 64 * KiB
NOVNC_FRAME = 10 * KiB  # noVNC's send buffer (core/websock.js: _sQbufferSize)
PAIRS = FRAME // 16  # PointerEvent (6) + FramebufferUpdateRequest (10)
EVENTS_BLOCK = 1024  # messages a pre-built block of the events stream
IDLE_PROBE = 0.5  # seconds of silence before the tracking check's first probe
#: The suffix of the metrics of nexusws through a basic-mode tunnel (no InputTracker).
NO_TRACKING = ", basic mode (no tracking)"

# noVNC 1.7's SetEncodings list (core/rfb.js _sendEncodings, 24-bit depth, no H.264),
# quality 6 and compression 2 (its defaults).
NOVNC_ENCODINGS = (1, 7, -260, 16, 21, 5, 2, 6, 0, -32 + 6, -256 + 2, -223, -224, -258, -261,
                   -308, -309, -312, -313, -307, 0xC0A1E5CE - (1 << 32), -316, 0x574D5664, -239)


def set_pixel_format():
    return struct.pack(">Bxxx", 0) + RFB_PIXEL_FORMAT


def set_encodings(encodings=NOVNC_ENCODINGS):
    return struct.pack(">BxH", 2, len(encodings)) + struct.pack(f">{len(encodings)}i", *encodings)


def update_request(incremental=True, w=1280, h=800):
    return struct.pack(">BBHHHH", 3, 1 if incremental else 0, 0, 0, w, h)


def pointer_event(x, y, buttons=0):
    return struct.pack(">BBHH", 5, buttons, x, y)


def cut_text_header(length):
    return struct.pack(">BxxxI", 6, length)


def cut_text(text):
    return cut_text_header(len(text)) + text


_TEXT = (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
         * (FRAME // 80 + 1))


def text(n):
    """C{n} bytes of Latin-1 text (what a paste carries)."""
    return (_TEXT * (n // len(_TEXT) + 1))[:n]


# --- the streams ---------------------------------------------------------------------


class Stream:
    """One kind of client -> backend traffic: C{units(ws, amount)} gives what to send.

    @ivar unit_name: what C{amount} counts (bytes or messages).
    @ivar inputs_to_end: whether user input keeps coming to the stream's end (so the
        session's idle time is about 0 after it).
    """

    inputs_to_end = True

    def __init__(self):
        self._cache = {}

    def units(self, ws, amount):
        """C{(prefix, unit, repeats, payload bytes, messages, frames)}: send C{prefix}, then
        C{unit} C{repeats} times; masked WebSocket frames if C{ws}, else the bare RFB bytes."""
        key = (ws, amount)
        if key not in self._cache:
            self._cache[key] = self._build(ws, amount)
        return self._cache[key]


def _wrap(payloads, ws):
    """Each payload a masked binary frame (WebSocket), or all of them back to back (TCP)."""
    return b"".join(frame(p) for p in payloads) if ws else b"".join(payloads)


class Bulk(Stream):
    """ClientCutText messages of 64 KiB, one a frame; C{amount}: bytes (a multiple of 64 KiB)."""

    name = "bulk"

    def _build(self, ws, amount):
        unit = _wrap([cut_text(text(FRAME - 8))], ws)
        return b"", unit, amount // FRAME, amount // FRAME * FRAME, amount // FRAME, amount // FRAME


class Paste(Stream):
    """One ClientCutText of C{amount} bytes (a multiple of 10 KiB) in 10 KiB frames, like noVNC."""

    name = "paste"
    inputs_to_end = False  # the one input is the message's header, at the start

    def _build(self, ws, amount):
        k = amount // NOVNC_FRAME
        first = _wrap([cut_text_header(k * NOVNC_FRAME - 8) + text(NOVNC_FRAME - 8)], ws)
        unit = _wrap([text(NOVNC_FRAME)], ws)
        return first, unit, k - 1, k * NOVNC_FRAME, 1, k


class Events(Stream):
    """PointerEvent and FramebufferUpdateRequest alternating, one a frame; C{amount}: messages
    (a multiple of L{EVENTS_BLOCK})."""

    name = "events"

    def _build(self, ws, amount):
        payloads = []
        for i in range(EVENTS_BLOCK // 2):
            payloads.append(pointer_event(100 + i % 800, 100 + i // 800))
            payloads.append(update_request())
        unit = _wrap(payloads, ws)
        blocks = amount // EVENTS_BLOCK
        n = blocks * EVENTS_BLOCK
        return b"", unit, blocks, blocks * sum(map(len, payloads)), n, n


class Batched(Stream):
    """4,096 PointerEvent + FramebufferUpdateRequest pairs a 64 KiB frame; C{amount}: bytes."""

    name = "batched"

    def _build(self, ws, amount):
        payload = b"".join(pointer_event(100 + i % 800, 100 + i // 800) + update_request()
                           for i in range(PAIRS))
        unit = _wrap([payload], ws)
        k = amount // FRAME
        return b"", unit, k, k * FRAME, k * 2 * PAIRS, k


STREAMS = {s.name: s for s in (Bulk(), Paste(), Events(), Batched())}


# --- targets ---------------------------------------------------------------------------


class RfbTarget(Target):
    """A target of figure 10. C{column}, C{suffix}: where its samples are recorded (the
    basic-mode nexusws goes to the nexusws column under metrics of its own).

    @param rest_port: nexusws's HTTP port for a session target: each tunnel then presents a
        token of C{service}, reserved for it and released after it.
    @param log_path: the session gateway's log, checked for the tracker's fallback line.
    @param cpu: C{() -> CPU seconds} of the gateway (nexusws is one process), or None.
    """

    def __init__(self, name, port, ws=True, proc=None, column=None, suffix="", rest_port=None,
                 service="Rfb", log_path=None, cpu=None):
        super().__init__(name, port, ws=ws, proc=proc)
        self.column = column or name
        self.suffix = suffix
        self.rest_port = rest_port
        self.service = service
        self.log_path = log_path
        self.cpu = cpu
        self.rest = None

    @property
    def session(self):
        return self.rest_port is not None

    def reserve(self):
        if self.rest is None:
            self.rest = Rest(self.rest_port)
        return self.rest.get(f"/v1/reserve/{self.service}")["token"]

    def release(self, token):
        try:
            self.rest.get(f"/v1/release/{token}")
        except Exception:  # moot in cleanup (released already, or the connection broke)
            self.close_rest()

    def snapshot(self, token):
        return self.rest.get(f"/v1/session/{token}")

    def fallbacks(self):
        """How many times the gateway's log says a tracker fell back so far."""
        if self.log_path is None:
            return 0
        return self.log_path.read_text(errors="replace").count("input tracking:")

    def close_rest(self):
        if self.rest is not None:
            self.rest.close()
            self.rest = None


def handshake(c):
    """The client's side of RFB 3.8 with security type None, through C{c}; the ServerInit."""
    greeting = c.read_bytes(12)
    if greeting != RFB_VERSION:
        raise AssertionError(f"RFB greeting {greeting!r}")
    c.send(RFB_VERSION)
    types = c.read_bytes(c.read_bytes(1)[0])
    if 1 not in types:
        raise AssertionError(f"security types {types!r}: no None")
    c.send(b"\x01")
    result = c.read_bytes(4)
    if result != b"\0\0\0\0":
        raise AssertionError(f"SecurityResult {result!r}")
    c.send(b"\x01")  # ClientInit: shared
    init = c.read_bytes(24)
    name = c.read_bytes(struct.unpack(">I", init[20:24])[0])
    return init, name


def preface(c):
    """What noVNC sends once connected, each its own message; waits for the update's answer."""
    c.send(set_pixel_format())
    c.send(set_encodings())
    c.send(update_request(incremental=False))
    _update(c)


def _update(c):
    got = c.read_bytes(len(RFB_EMPTY_UPDATE))
    if got != RFB_EMPTY_UPDATE:
        raise AssertionError(f"expected an empty FramebufferUpdate, got {got!r}")


def check_tracking(c, target, token):
    """Prove that this session tunnel's tracker follows RFB: after L{IDLE_PROBE} s of nothing,
    a FramebufferUpdateRequest (not input) leaves the session idle; a PointerEvent (input)
    makes it active. The backend's answer to each request shows it went through the gateway
    (and its tracker, which sees each payload as it is written) before the snapshot is asked."""
    time.sleep(IDLE_PROBE)
    c.send(update_request())
    _update(c)
    idle = target.snapshot(token)["idle"]
    if idle is None or idle < IDLE_PROBE - 0.15:
        raise AssertionError(f"a FramebufferUpdateRequest counted as user input (idle {idle}):"
                             " the tracker is not following RFB")
    c.send(pointer_event(640, 400))
    c.send(update_request())
    _update(c)
    idle = target.snapshot(token)["idle"]
    if idle is None or idle > 0.25:
        raise AssertionError(f"a PointerEvent did not count as user input (idle {idle})")


def measure(target, stream, amount):
    """One tunnel, one stream: dict of seconds, bytes, messages, frames and (nexusws) gateway CPU
    seconds over the timed part."""
    token = target.reserve() if target.session else None
    fell = target.fallbacks()
    path = f"/?token={token}" if token else "/"
    c = target.open(path=path)
    try:
        handshake(c)
        preface(c)
        if token:
            check_tracking(c, target, token)
        prefix, unit, repeats, nbytes, messages, frames = stream.units(target.ws, amount)
        send = c.send_raw
        cpu0 = target.cpu() if target.cpu else None
        t0 = time.perf_counter()
        c.send(cut_text(b"SINK %d" % nbytes))
        if prefix:
            send(prefix)
        for _ in range(repeats):
            send(unit)
        ack = c.read_bytes(len(RFB_ACK))
        seconds = time.perf_counter() - t0
        cpu = target.cpu() - cpu0 if target.cpu else None
        if ack != RFB_ACK:
            raise AssertionError(f"expected the sink's ServerCutText K, got {ack!r}")
        if token:
            snap = target.snapshot(token)
            if snap["bytes_up"] < nbytes:
                raise AssertionError(f"the session's bytes_up {snap['bytes_up']} < the {nbytes} sent")
            if stream.inputs_to_end and (snap["idle"] is None or snap["idle"] > 1.0):
                raise AssertionError(f"idle {snap['idle']} s after a stream of input")
        if target.fallbacks() != fell:
            raise AssertionError("the gateway logged an input tracking fallback during the"
                                 f" measurement (see {target.log_path})")
        return {"seconds": seconds, "bytes": nbytes, "messages": messages, "frames": frames,
                "cpu": cpu}
    finally:
        c.close(wait=False)
        if token:
            target.release(token)
