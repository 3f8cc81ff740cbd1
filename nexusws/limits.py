"""What the gateway admits: WebSocket origins, tunnel counts, reservation quotas.

Pure policy, no I/O: the bridge (L{nexusws.bridge}) asks L{OriginPolicy} and
L{TunnelCounter} during each opening handshake, the REST API asks
L{check_reservation_quota} before each reservation, and L{nexusws.tap} uses
the converters for the options.

Origins (C{--allowed_origin}, repeatable). Without a pattern every origin is
allowed. With patterns, a WebSocket's C{Origin} must match one of them:

  - C{https://app.example.com}: that exact origin (scheme and host compared
    without regard to case; a missing port is the scheme's default, so
    C{https://app.example.com:443} is the same origin);
  - C{https://*.example.com}: any subdomain, at any depth (not C{example.com}
    itself, list that too if wanted);
  - C{http://localhost:*}: any port; C{https://*}: any host over https;
  - C{null}: the opaque origin of pages loaded from files or sandboxed frames
    (browsers send C{Origin: null}; Chrome sends C{file://}, taken as null).

A request without an C{Origin} header is not a browser's (browsers always send
one on a WebSocket), so it is allowed: origins defend browsers' users against
other sites' pages, not the gateway against programs, which can send anything.
"""

import re

from autobahn.websocket.types import ConnectionDeny

from nexusws.logs import printable

MiB = 1024 * 1024

#: Defaults of the options (C{--handshake_timeout}...).
HANDSHAKE_TIMEOUT = 10.0
MAX_FRAME_SIZE = 16 * MiB
MAX_MESSAGE_SIZE = 16 * MiB
#: A WebSocket request head, bytes: the default of --http_max_header_size, which sets both.
MAX_REQUEST_SIZE = 16 * 1024
MAX_TUNNELS = 256
MAX_TUNNELS_PER_ADDRESS = 32
MAX_RESERVATIONS_PER_USER = 8

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SERIAL = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^:/?#@\[\]\s]+)"
    r"(?::(?P<port>\d{1,5}|\*))?/?$",
    re.IGNORECASE,
)
_LABELS = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$", re.IGNORECASE)


class Refused(ConnectionDeny):
    """A handshake refusal: C{reason} goes to the client, C{detail} to the log line."""

    def __init__(self, code, reason, detail=None):
        super().__init__(code, reason)
        self.detail = detail or reason


# --- option converters --------------------------------------------------------


def parse_size(value):
    """Bytes from C{"1048576"}, C{"64K"}, C{"16M"}, C{"1GiB"} (binary units); 0: no limit."""
    m = _SIZE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a size in bytes (e.g. 1048576, 64K, 16M; 0: no limit)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_count(value):
    """A whole number >= 0 (0: no limit)."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{value!r} is not a whole number >= 0 (0: no limit)")
    return int(text)


# --- origins ------------------------------------------------------------------


class OriginPattern:
    """One C{--allowed_origin} value, parsed; C{str()} gives it back normalized."""

    def __init__(self, text):
        self.text = text.strip()
        if self.text.lower() == "null":
            self.scheme = self.host = self.port = None
            return
        m = _SERIAL.match(self.text)
        if m is None:
            raise ValueError(
                f"{text!r} is not an origin pattern: give scheme://host[:port] (no path), "
                "where host may be *.domain or * and port may be *, or null"
            )
        self.scheme = m["scheme"].lower()
        self.host = m["host"].lower()
        if "*" in self.host and not (self.host == "*" or (
                self.host.startswith("*.") and _LABELS.match(self.host[2:]))):
            raise ValueError(f"{text!r}: a wildcard may only be the whole host (*) "
                             "or its first label (*.example.com)")
        if self.host != "*" and not self.host.startswith("[") and not _LABELS.match(
                self.host.removeprefix("*.")):
            raise ValueError(f"{text!r}: {m['host']!r} is not a host name")
        port = m["port"]
        self.port = "*" if port == "*" else _port(port, self.scheme)
        if isinstance(self.port, int) and not 0 < self.port < 65536:
            raise ValueError(f"{text!r}: port {port} is out of range")

    def matches(self, origin):
        """True when the parsed origin C{(scheme, host, port)} or C{"null"} matches."""
        if self.scheme is None:
            return origin == "null"
        if origin == "null":
            return False
        scheme, host, port = origin
        if scheme != self.scheme or (self.port != "*" and port != self.port):
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"<OriginPattern {self.text!r}>"


def _port(port, scheme):
    return int(port) if port is not None else DEFAULT_PORTS.get(scheme)


def parse_origin(text):
    """An C{Origin} header value as C{(scheme, host, port)}, or C{"null"}.

    @raise ValueError: not a serialized origin (a path, user info, a bad port...).
    """
    text = text.strip()
    if text.lower() == "null" or text.lower().startswith("file:"):
        return "null"
    m = _SERIAL.match(text)
    if m is None or m["port"] == "*" or not (m["host"].startswith("[") or _LABELS.match(m["host"])):
        raise ValueError("not a serialized origin")
    scheme = m["scheme"].lower()
    return scheme, m["host"].lower(), _port(m["port"], scheme)


class OriginPolicy:
    """The C{--allowed_origin} allow-list; empty: every origin is allowed.

    @param patterns: strings (or L{OriginPattern}s); a bad one raises ValueError.
    """

    def __init__(self, patterns=()):
        self.patterns = [p if isinstance(p, OriginPattern) else OriginPattern(p) for p in patterns]

    def check(self, origin):
        """Accept C{origin} (the header's value, "" when absent) or raise L{Refused} 403."""
        if not self.patterns or not origin:
            return
        try:
            parsed = parse_origin(origin)
        except ValueError:
            parsed = None
        if parsed is None or not any(p.matches(parsed) for p in self.patterns):
            raise Refused(403, "origin not allowed",
                          f"origin {printable(origin, limit=100)!r} not allowed")


# --- tunnels ------------------------------------------------------------------


class TunnelCounter:
    """Counts the tunnels of the gateway in total and per client address.

    A tunnel counts from its handshake request (before any backend is touched)
    until its connection is gone.

    @param max_total: refuse beyond this many tunnels with 503 (0: no limit).
    @param max_per_address: refuse beyond this many from one address with 429 (0: no limit).
    """

    def __init__(self, max_total=0, max_per_address=0):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.by_address = {}

    def acquire(self, address):
        """Count one tunnel from C{address}; return the function that releases it (idempotent).

        @raise Refused: 503 when the gateway is full, 429 when C{address} is.
        """
        if 0 < self.max_total <= self.total:
            raise Refused(503, "too many tunnels open",
                          f"too many tunnels open ({self.total}, --max_tunnels {self.max_total})")
        held = self.by_address.get(address, 0)
        if 0 < self.max_per_address <= held:
            raise Refused(429, "too many tunnels from this address",
                          f"too many tunnels from {printable(address)} ({held}, "
                          f"--max_tunnels_per_address {self.max_per_address})")
        self.total += 1
        self.by_address[address] = held + 1
        released = []

        def release():
            if released:
                return
            released.append(True)
            self.total -= 1
            left = self.by_address[address] - 1
            if left:
                self.by_address[address] = left
            else:
                del self.by_address[address]

        return release


# --- reservations -------------------------------------------------------------


class QuotaExceeded(Exception):
    """The user (or address) already holds as many reservations as allowed."""


def check_reservation_quota(held, user, address, limit):
    """Refuse a new reservation when C{user} (or, anonymous, C{address}) is at C{limit}.

    A known user is counted across every address (behind a proxy they all look
    alike); an anonymous client by its address (a reservation records it as
    C{client}). The caller counts: C{held} is how many reservations that user
    (or address) holds now (L{nexusws.sessions.registry.Registry.outstanding}).
    C{limit} 0: no quota.

    @raise QuotaExceeded: with a message fit for the client.
    """
    if not limit or (user is None and address is None):
        return
    if held >= limit:
        who = f"user {printable(user)!r}" if user is not None else f"address {printable(address)}"
        raise QuotaExceeded(
            f"{who} already holds {held} reservation(s), the most allowed "
            f"(--max_reservations_per_user {limit}); release one first"
        )
