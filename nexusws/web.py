"""The HTTP side: a read-only file server, the /ansys/ tree and the /v1/ API root.

Layout of the tree (the reference's "HTTP Server" section)::

  /          read-only copy of --http_directory (listing, HEAD, Range)
  /ansys/    the tree shipped inside the package (nexusws/ansys)
  /v1/       the REST API (see L{nexusws.api})

The pieces: L{nexusws.files} serves the trees (confinement, dot-files,
types), L{nexusws.ranges} plans Range answers and sends every file,
L{nexusws.responses} writes the plain answers. Here: the L{Site}, whose
L{Channel} limits slow and oversized requests, the access log, and the tree.
"""

import os
from importlib import resources

from OpenSSL import SSL
from twisted.web import http, resource, server

from nexusws.files import ConfinedFile
from nexusws.logs import logger, printable
from nexusws.portal import AdminGuard
from nexusws.scrub import redact
from nexusws.tls import openssl_reason

ANSYS_ROOT = str(resources.files("nexusws") / "ansys")

_log = logger("nexusws.web")

#: Defaults of --http_max_header_size, --http_idle_timeout and --hsts_max_age.
MAX_HEADER_SIZE = 16 * 1024
IDLE_TIMEOUT = 60.0
HSTS_MAX_AGE = 365 * 24 * 3600
#: The tree is read-only: no request needs a body beyond this (413 beyond).
MAX_BODY_SIZE = 64 * 1024


def parse_header_size(value):
    """--http_max_header_size: bytes (16384, 16K, 1M), at least 1K."""
    text = str(value).strip()
    scale = 1024 ** (" KM".index(text[-1:].upper()) if text[-1:].upper() in ("K", "M") else 0)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) * scale < 1024:
        raise ValueError(f"{value!r} is not a size in bytes of at least 1K (e.g. 16384, 16K, 1M)")
    return int(digits) * scale


def parse_max_age(value):
    """--hsts_max_age: whole seconds >= 0 (0: no HSTS header)."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{value!r} is not a whole number of seconds >= 0 (0: no HSTS)")
    return int(text)


class Request(server.Request):
    """A Request whose repr masks secrets (twisted.web puts the repr in log
    lines) and whose every https response carries HSTS."""

    def __repr__(self):
        return "<Request method={} uri={}>".format(
            printable(self.method.decode("latin-1")), printable(redact(self.uri))
        )

    def process(self):
        max_age = getattr(self.channel.site, "hsts_max_age", 0)
        if max_age and self.isSecure():
            self.setHeader(b"strict-transport-security", b"max-age=%d" % max_age)
        super().process()


class Channel(http.HTTPChannel):
    """An HTTPChannel with the site's limits against slow and oversized requests.

    The request head (request line and header lines, CRLFs not counted) may
    hold at most C{site.max_header_size} bytes and C{maxHeaders} headers
    (431 beyond; 414 for a request line alone too long), and must arrive
    within C{site.timeOut} seconds of its first byte however slowly it
    trickles in (408). A body may be at most L{MAX_BODY_SIZE} bytes, with a
    Content-Length (413 beyond, 411 for a chunked one). A connection idle for
    C{site.timeOut} seconds is closed (after a 408 if a request head was
    under way).
    """

    maxHeaders = 100
    _head_size = 0
    _head_lines = 0
    _head_started = None
    _refused = False
    _abort = None

    def dataReceived(self, data):
        if self._refused:
            return
        if self.line_mode:  # reading a request head (not a body, not buffering)
            now = self.site.reactor.seconds()
            if self._head_started is None:
                self._head_started = now
            elif self.site.timeOut and now - self._head_started > self.site.timeOut:
                return self._refuse(408, "Request Timeout", self._late())
        super().dataReceived(data)

    def lineReceived(self, line):
        first = self._head_lines == 0
        self._head_size += len(line)
        self._head_lines += bool(line) and line[:1] not in b" \t"
        if self._head_size > self.site.max_header_size:
            return self._refuse(*self._too_large(first))
        if self._head_lines > self.maxHeaders + 1:  # the request line is no header
            return self._refuse(431, "Request Header Fields Too Large", f"over {self.maxHeaders} headers")
        return super().lineReceived(line)

    def lineLengthExceeded(self, line):
        self._refuse(*self._too_large(self._head_lines == 0))

    def _too_large(self, request_line):
        if request_line:
            return 414, "URI Too Long", f"request line over {self.site.max_header_size} bytes"
        return 431, "Request Header Fields Too Large", f"request head over {self.site.max_header_size} bytes"

    def _late(self):
        return f"request head not complete within {self.site.timeOut:g} s"

    def allHeadersReceived(self):
        self._head_size = self._head_lines = 0
        self._head_started = None
        if self.length is None:  # chunked: unbounded, and nothing here takes a body
            return self._refuse(411, "Length Required", "chunked request body")
        if self.length > MAX_BODY_SIZE:
            return self._refuse(413, "Content Too Large", f"request body over {MAX_BODY_SIZE} bytes")
        return super().allHeadersReceived()

    def timeoutConnection(self):
        # Twisted's own version logs every idle keep-alive connection at info.
        if self._head_started is not None and not self._refused:
            self._refuse(408, "Request Timeout", self._late())
        else:
            _log.debug("http {client}: idle connection closed", client=self._client())
            self.loseConnection()
        # A client that does not take the close (its window full) is cut off.
        self._abort = self.callLater(self.abortTimeout, self.forceAbortClient)

    def _refuse(self, code, phrase, why, close=True):
        """Answer C{code} (plain text, connection closing), log it once, read no more."""
        self._refused = True
        body = f"{phrase}: {why}.\n".encode()
        head = [b"HTTP/1.1 %d %s" % (code, phrase.encode()), b"Content-Type: text/plain; charset=utf-8",
                b"Content-Length: %d" % len(body), b"Connection: close"]
        if self.site.hsts_max_age and self.isSecure():
            head.append(b"Strict-Transport-Security: max-age=%d" % self.site.hsts_max_age)
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        _log.info("http {client} refused: {why} ({code})", client=self._client(), why=why, code=code)
        if close:
            self.loseConnection()

    def connectionLost(self, reason):
        if reason.check(SSL.Error):  # a failed handshake: no client certificate, no shared cipher...
            _log.info("https {client} TLS failed: {why}", client=self._client(), why=openssl_reason(reason.value))
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def _client(self):
        return getattr(self.transport.getPeer(), "host", None) or "-"  # a UNIX peer has no host


class Site(server.Site):
    """A Site with L{Channel}'s limits, HSTS on https, and an access log that
    goes through nexusws logging with secrets masked.

    @param idle_timeout: seconds (0 or None: no limit).
    @param hsts_max_age: seconds of C{Strict-Transport-Security} (0: none).
    """

    protocol = Channel

    def __init__(self, resource, *, max_header_size=MAX_HEADER_SIZE, idle_timeout=IDLE_TIMEOUT,
                 hsts_max_age=HSTS_MAX_AGE, **kwargs):
        # Nothing here takes a form upload: never parse one into memory.
        super().__init__(resource, timeout=idle_timeout or None, parsePOSTFormSubmission=False, **kwargs)
        self.max_header_size = max_header_size
        self.hsts_max_age = hsts_max_age

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        # Twisted's own limits, as a backstop (it answers 400 or just closes):
        # one line (+1: a line of exactly the limit may be read with its CR
        # before its LF arrives) and the whole head.
        channel.MAX_LENGTH = self.max_header_size + 1
        channel.totalHeadersSize = self.max_header_size
        return channel

    def log(self, request):
        log_request(request)


def log_request(request, log=_log):
    """The access log line of C{request}: secrets in its query and Referer masked."""
    address = request.getClientAddress()
    referer = request.getHeader(b"referer") or b"-"
    agent = request.getHeader(b"user-agent") or b"-"
    log.info(
        'http {client} "{method} {uri} {proto}" {code} {length} "{referer}" "{agent}"',
        # A UNIX-socket peer has no host.
        client=getattr(address, "host", None) or "-",
        method=printable(request.method.decode("latin-1")),
        uri=printable(redact(request.uri), limit=400),
        proto=printable(request.clientproto.decode("latin-1")),
        code=request.code,
        length=request.sentLength or "-",
        referer=printable(redact(referer)),
        agent=printable(agent.decode("latin-1")),
    )


class SameOriginFrames(resource.Resource):
    """C{inner}, whose pages only pages of the same origin may frame (C{frame-ancestors 'self'},
    C{X-Frame-Options: SAMEORIGIN}): another site framing the portal or the dashboard could
    make its user click Launch or End unawares. The children named in C{exempt} (the viewer,
    which a Nexus page of another origin may embed) are left alone."""

    def __init__(self, inner, exempt=()):
        super().__init__()
        self.inner, self.exempt = inner, exempt

    @staticmethod
    def _mark(request):
        request.setHeader(b"content-security-policy", b"frame-ancestors 'self'")
        request.setHeader(b"x-frame-options", b"SAMEORIGIN")

    def getChildWithDefault(self, path, request):
        if path not in self.exempt:
            self._mark(request)
        return self.inner.getChildWithDefault(path, request)

    def render(self, request):
        self._mark(request)
        return self.inner.render(request)


def build_root(http_directory, api, viewer=None, allow_dotfiles=False):
    """Build the resource tree for C{http_directory} with C{api} mounted at /v1.

    C{viewer}, if given, answers /ansys/nexus/novnc/ (L{nexusws.viewer}).
    C{allow_dotfiles} serves and lists dot-files of C{http_directory} (not of /ansys).
    """
    root = ConfinedFile(os.path.abspath(http_directory), allow_dotfiles=allow_dotfiles)
    ansys = ConfinedFile(ANSYS_ROOT)
    nexus = ConfinedFile(os.path.join(ANSYS_ROOT, "nexus"), root=ANSYS_ROOT)
    if viewer is not None:
        nexus.putChild(b"novnc", viewer)
    # The dashboard's page: administrators only (its scripts, in js/, hold no secret).
    nexus.putChild(b"admin", AdminGuard(api, ConfinedFile(os.path.join(ANSYS_ROOT, "nexus", "admin"),
                                                          root=ANSYS_ROOT)))
    ansys.putChild(b"nexus", SameOriginFrames(nexus, exempt=(b"novnc",)))
    root.putChild(b"ansys", ansys)
    root.putChild(b"v1", api)
    return root


def make_site(http_directory, api, reactor=None, viewer=None, allow_dotfiles=False, **limits):
    """The L{Site} serving L{build_root}; C{reactor} drives its timeouts (default: global).

    C{limits}: L{Site}'s C{max_header_size}, C{idle_timeout} and C{hsts_max_age}.
    """
    site = Site(build_root(http_directory, api, viewer, allow_dotfiles), requestFactory=Request, reactor=reactor,
                **limits)
    site.noisy = False
    site.displayTracebacks = False
    return site
