"""Which client bytes of a VNC tunnel are user input: an RFB follower for idle detection.

L{InputTracker} follows one tunnel. The gateway feeds it the backend's bytes
(L{InputTracker.server}, only until it says it needs no more) and every
client-to-backend payload (L{InputTracker.client}), which answers whether
that payload holds user input: a key, a pointer event, pasted text. What
noVNC sends on its own (C{FramebufferUpdateRequest}s above all, encodings,
fences, resizes, clipboard capabilities) is not input, so a session whose
viewer is open but untouched is seen to be idle.

The rules (RFC 6143 and U{rfbproto<https://github.com/rfbproto/rfbproto>}):

  - The server speaks first. Its first 12 bytes decide: C{RFB ddd.ddd\\n}
    and the stream is RFB (L{InputTracker.mode} C{"rfb"}); as soon as a
    prefix cannot begin such a greeting it is some other protocol (C{"bytes"},
    quietly: every client byte then counts as input). Client bytes before
    the greeting count as input; if it is RFB after all, the tracker falls
    back (below).
  - The lower of the client's 12-byte version and the server's picks the
    handshake (a 3.8 client of a 3.3 server speaks 3.3). Before 3.7 (C{003.003},
    C{003.005}): the server names the security type, a C{u32} right after its
    greeting. From 3.7 on (Apple's C{003.889} and any C{004.x} too): the client
    names it, in one byte. Type 1 (None) is followed by C{ClientInit}; type 2 (VNC
    authentication) by a 16-byte response, then C{ClientInit}; any other is
    not followed. A server type 0 is a refusal: nothing should follow.
  - Then client messages, each framed by its header. Input: C{KeyEvent} (4),
    C{PointerEvent} (5), C{ClientCutText} (6) with text, or with an extended
    clipboard I{notify} or I{provide} (not I{caps}, which lists every action,
    nor I{request} or I{peek}, which noVNC sends on its own), gii event
    injection (253, sub-type 0) and QEMU's extended key event (255, 0). Not
    input: C{SetPixelFormat} (0), C{SetEncodings} (2), C{FramebufferUpdateRequest}
    (3), C{EnableContinuousUpdates} (150), C{ClientFence} (248), xvp (250),
    C{SetDesktopSize} (251), gii's version and device messages, QEMU audio.
  - A C{PointerEvent} is 7 bytes, not 6, when its button mask's top bit is
    set and the client's latest C{SetEncodings} listed I{ExtendedMouseButtons}
    (-316): a server that supports it reads it so, and one that does not never
    sees the bit (a client must not set it before the server confirms).

Anything else (an unknown message type, another security type, a client
version that is not one) and the tracker gives up: it calls C{on_fallback}
once with a short reason and from then on counts every client byte as input,
which errs towards keeping a session alive.

A message counts as input in the chunk that holds the last byte of its header
(what it takes to know its length and kind: the type byte of a C{KeyEvent},
the 8 bytes of a C{ClientCutText} header, 12 for an extended one, which adds
its flags), so every chunking of a stream counts each input message once.

It is cheap: fixed-size messages are stepped over by a table look-up, a body
(a 10 MB paste) is skipped by counting, never copied or scanned, and only a
header split across chunks is kept (at most 11 bytes).
"""

#: A version line's shape; C{0} stands for any digit.
_SHAPE = b"RFB 000.000\n"

#: I{ExtendedMouseButtons} (-316) as C{SetEncodings} lists it.
_EXTENDED_MOUSE = (-316).to_bytes(4, "big", signed=True)

#: Extended clipboard actions in the flags' top byte (bits 24 to 28: caps, request, peek, notify, provide).
_CAPS, _NOTIFY, _PROVIDE = 0x01, 0x08, 0x10

#: Each client message type's size when it is fixed, negated for user input; 0: read its header.
_SIZES = [0] * 256
for _kind, _size in ((0, 20), (3, 10), (4, -8), (5, -6), (150, 10), (250, 4)):
    _SIZES[_kind] = _size
del _kind, _size

# Where the client's side of the handshake is.
_UNKNOWN, _VERSION, _TYPE, _CHOICE, _AUTH, _INIT, _REFUSED, _MESSAGES, _BYTES = range(9)


def _like_version(line):
    """Whether C{line} (up to 12 bytes) is, or begins, an C{RFB ddd.ddd\\n} line."""
    return all(48 <= got <= 57 if want == 48 else got == want for got, want in zip(line, _SHAPE, strict=False))


class InputTracker:
    """Follows one tunnel's RFB stream and says which client bytes are user input.

    @ivar mode: C{"unknown"} until the server's greeting is seen, C{"rfb"} while
        following, C{"bytes"} when every client byte counts (not RFB, or given up).
    """

    __slots__ = ("mode", "_on_fallback", "_phase", "_slow", "_hit", "_skip", "_head", "_scan_left", "_carry",
                 "_seen", "_sizes", "_early", "_listening", "_greeting", "_typebuf", "_flavour", "_auth_left")

    def __init__(self, on_fallback=None):
        """
        @param on_fallback: called at most once, with a short lower-case reason,
            when the tracker stops following an RFB stream.
        """
        self.mode = "unknown"
        self._on_fallback = on_fallback
        self._phase = _UNKNOWN
        self._slow = True  # anything but a message boundary with nothing pending
        self._hit = False  # the answer of the last helper that looked at a header
        self._skip = 0  # bytes of a message still to come
        self._head = b""  # a split header (or the client's version line so far)
        self._scan_left = 0  # bytes of a SetEncodings list still to come
        self._carry = b""  # a split encoding of that list
        self._seen = False  # whether that list names ExtendedMouseButtons
        self._sizes = list(_SIZES)
        self._early = False  # the client spoke before the server's greeting
        self._listening = True
        self._greeting = b""
        self._typebuf = b""
        self._flavour = 0  # 33 or 38 once the client's version is known
        self._auth_left = 0

    def server(self, data):
        """Feed the backend's bytes, in order.

        @return: whether it still needs them; once C{False}, it needs no more.
        """
        if not self._listening:
            return False
        pos = 0
        if self.mode == "unknown":
            pos = 12 - len(self._greeting)
            line = self._greeting + bytes(data[:pos])
            if not _like_version(line):
                self.mode, self._phase, self._listening = "bytes", _BYTES, False
                return False
            self._greeting = line
            if len(line) < 12:
                return True
            self.mode = "rfb"
            if self._early:
                self._fall("the client spoke before the server's greeting")
                return False
            self._phase = _VERSION
        self._typebuf += bytes(data[pos:pos + 4 - len(self._typebuf)])
        if len(self._typebuf) < 4:
            return True
        self._listening = False
        if self._phase == _TYPE:
            self._security(int.from_bytes(self._typebuf, "big"))
        return False

    def client(self, data):
        """Feed client-to-backend bytes, in order, in any chunks.

        @return: whether C{data} holds user input.
        """
        if self._slow:
            skip = self._skip
            if skip > len(data):  # the middle of a body: the common case of a long paste
                self._skip = skip - len(data)
                return False
            if self.mode == "bytes":
                return bool(data)
            pos = self._prepare(data)
            if pos < 0:
                return self._hit
            found = self._hit
        else:
            pos = 0
            found = False
        sizes = self._sizes
        n = len(data)
        while pos < n:
            size = sizes[data[pos]]
            if size > 0:
                pos += size
            elif size:
                pos -= size
                found = True
            elif data[pos] == 5 and pos + 1 < n:  # a PointerEvent once ExtendedMouseButtons was asked for
                pos += 7 if data[pos + 1] & 0x80 else 6
                found = True
            else:
                pos = self._message(data, pos)
                if pos < 0:
                    return found or self._hit
                found = found or self._hit
        if pos > n:
            self._skip = pos - n
            self._slow = True
        return found

    def _prepare(self, data):
        """Deal with what is pending (a handshake, a body, a split header) at the start of C{data}.

        @return: where messages begin in C{data}, or -1 if it is all dealt with
            (C{_hit} then says whether it held input).
        """
        self._hit = False
        n = len(data)
        if not n:
            return -1
        if self._phase != _MESSAGES:
            return self._handshake(data)
        pos = 0
        if self._skip:  # ends within data (client() took the case of a longer one)
            pos, self._skip = self._skip, 0
        elif self._head:
            head = self._head
            buf = head + bytes(data[:12])
            end = self._header(buf, 0)
            if end is None:
                self._head = buf
                return -1
            if end < 0:
                return -1
            self._head = b""
            pos = end - len(head)
            if pos > n:
                self._skip = pos - n
                return -1
        if self._scan_left:
            pos = self._scan(data, pos)
            if self._scan_left:
                return -1
        self._slow = False
        return pos

    def _message(self, data, pos):
        """Step over the message at C{pos} whose header must be read.

        @return: where the next one begins, or -1 if C{data} is all dealt with.
        """
        end = self._header(data, pos)
        if end is None:
            self._head = bytes(data[pos:])
            self._slow = True
            return -1
        if end >= 0 and self._scan_left:
            end = self._scan(data, end)
            if self._scan_left:
                self._slow = True
                return -1
        return end

    def _header(self, buf, pos):
        """Read the header of the client message at C{buf[pos]}; set C{_hit} to whether it is input.

        @return: where the message ends (perhaps beyond C{buf}; a C{SetEncodings}
            list is left to L{_scan}), C{None} if the header is not all there,
            -1 on giving up.
        """
        self._hit = False
        avail = len(buf) - pos
        kind = buf[pos]  # not one of fixed size: the loop in client() steps over those
        if kind == 5:  # a PointerEvent, once ExtendedMouseButtons was asked for
            if avail < 2:
                return None
            self._hit = True
            return pos + (7 if buf[pos + 1] & 0x80 else 6)
        if kind == 2:  # SetEncodings: type, padding, u16 count, s32 each
            if avail < 4:
                return None
            count = buf[pos + 2] << 8 | buf[pos + 3]
            self._scan_left, self._carry, self._seen = 4 * count, b"", False
            if not count:
                self._sizes[5] = -6
            return pos + 4
        if kind == 6:  # ClientCutText: type, 3 padding, s32 length (negative: extended, flags first)
            if avail < 8:
                return None
            length = int.from_bytes(buf[pos + 4:pos + 8], "big", signed=True)
            if length >= 0:
                self._hit = True
                return pos + 8 + length
            if length > -4:
                return self._fall("an extended clipboard message is shorter than its flags")
            if avail < 12:
                return None
            actions = buf[pos + 8]
            self._hit = not actions & _CAPS and bool(actions & (_NOTIFY | _PROVIDE))
            return pos + 8 - length
        if kind == 248:  # ClientFence: type, 3 padding, u32 flags, u8 length
            return None if avail < 9 else pos + 9 + buf[pos + 8]
        if kind == 251:  # SetDesktopSize: type, padding, u16 w, u16 h, u8 screens, padding; 16 a screen
            return None if avail < 8 else pos + 8 + 16 * buf[pos + 6]
        if kind == 253:  # gii: type, endian (top bit: big) and sub-type, EU16 length
            if avail < 4:
                return None
            sub = buf[pos + 1]
            self._hit = not sub & 0x7F  # 0: injected events
            return pos + 4 + int.from_bytes(buf[pos + 2:pos + 4], "big" if sub & 0x80 else "little")
        if kind == 255:  # QEMU: type, sub-type
            if avail < 2:
                return None
            sub = buf[pos + 1]
            if sub == 0:  # extended key event
                self._hit = True
                return pos + 12
            if sub != 1:
                return self._fall(f"unknown qemu client message type {sub}")
            if avail < 4:
                return None
            operation = buf[pos + 2] << 8 | buf[pos + 3]
            if operation > 2:
                return self._fall(f"qemu audio operation {operation} is unknown")
            return pos + (10 if operation == 2 else 4)
        return self._fall(f"unknown client message type {kind}")

    def _scan(self, data, pos):
        """Look through a C{SetEncodings} list (what of it is in C{data} from C{pos}) for ExtendedMouseButtons.

        @return: where the list, or C{data}, ends.
        """
        end = min(len(data), pos + self._scan_left)
        self._scan_left -= end - pos
        if self._carry:
            piece = bytes(data[pos:min(end, pos + 4 - len(self._carry))])
            self._carry += piece
            pos += len(piece)
            if len(self._carry) < 4:
                return end
            self._seen = self._seen or self._carry == _EXTENDED_MOUSE
            self._carry = b""
        whole = end - (end - pos) % 4
        at = data.find(_EXTENDED_MOUSE, pos, whole)
        while at >= 0 and (at - pos) % 4:
            at = data.find(_EXTENDED_MOUSE, at + 1, whole)
        self._seen = self._seen or at >= 0
        self._carry = bytes(data[whole:end])
        if not self._scan_left:
            self._sizes[5] = 0 if self._seen else -6
        return end

    def _handshake(self, data):
        """Follow the client's side of the handshake through C{data}.

        @return: where its messages begin, or -1 if C{data} is all dealt with.
        """
        pos, n = 0, len(data)
        while pos < n:
            phase = self._phase
            if phase == _BYTES or phase == _UNKNOWN:
                self._early = self._early or phase == _UNKNOWN
                self._hit = True
                return -1
            if phase == _VERSION:
                take = 12 - len(self._head)
                self._head += bytes(data[pos:pos + take])
                pos += take
                if len(self._head) == 12:
                    self._version()
            elif phase == _CHOICE:
                self._security(data[pos])
                pos += 1
            elif phase == _AUTH:
                take = min(self._auth_left, n - pos)
                self._auth_left -= take
                pos += take
                if not self._auth_left:
                    self._phase = _INIT
            elif phase == _INIT:
                self._phase = _MESSAGES
                self._slow = False
                return pos + 1
            elif phase == _TYPE:
                return self._fall("the client spoke before the server's security type")
            else:
                return self._fall("the client spoke after the server refused it")
        return -1

    def _version(self):
        """Pick the handshake by the version both sides speak: the lower of the client's
        line (in C{_head}) and the server's greeting (a server need not follow a client
        that asks for more than it offered)."""
        line, self._head = self._head, b""
        if not _like_version(line):
            self._fall("the client's version is not an rfb version")
        elif min((int(line[4:7]), int(line[8:11])),
                 (int(self._greeting[4:7]), int(self._greeting[8:11]))) >= (3, 7):
            self._flavour, self._phase, self._listening = 38, _CHOICE, False
        else:
            self._flavour, self._phase = 33, _TYPE
            if len(self._typebuf) == 4:
                self._security(int.from_bytes(self._typebuf, "big"))

    def _security(self, kind):
        """Go on after security type C{kind} (the server's choice below 3.7, the client's from 3.7)."""
        if kind == 1:
            self._phase = _INIT
        elif kind == 2:
            self._phase, self._auth_left = _AUTH, 16
        elif kind == 0 and self._flavour == 33:
            self._phase = _REFUSED
        else:
            self._fall(f"security type {kind} is not followed")

    def _fall(self, reason):
        """Stop following: every client byte counts from now on. Tell C{on_fallback}, once.

        @return: -1, for the helpers that return where messages end.
        """
        self.mode, self._phase, self._slow, self._listening, self._hit = "bytes", _BYTES, True, False, True
        self._skip = self._scan_left = 0
        self._head = self._carry = b""
        callback, self._on_fallback = self._on_fallback, None
        if callback is not None:
            callback(reason)
        return -1
