"""The HTTP side: a read-only file server, the /ansys/ tree and the /v1/ API root.

Layout of the tree (the reference's "HTTP Server" section)::

  /          read-only copy of --http_directory (listing, HEAD, Range)
  /ansys/    the tree shipped inside the package (nexusws/ansys)
  /v1/       the REST API (see L{nexusws.api})

Confinement: twisted.web percent-decodes each path segment exactly once and
L{static.File} refuses C{..} and separators inside a segment; L{ConfinedFile}
adds what static.File lacks (symlinks leading out, NUL bytes, non-UTF-8
names) and checks the file it actually opened.

Dot-files: a path segment starting with C{.} (after that one decoding, so
C{%2eenv} too) is 404 and such names are left out of listings, unless the
tree was built with C{allow_dotfiles} (--http_allow_dotfiles; /ansys never).

Ranges: L{plan_ranges} reads the Range header instead of static.File.
Overlapping and adjacent ranges are merged (parts keep the order of their
first range); a header that is malformed, asks for more bytes in all than
the file holds, or leaves more than L{MAX_RANGES} parts is ignored (200, the
whole file, as RFC 9110 allows); none satisfiable is 416 with
C{Content-Range: bytes */SIZE}. L{FileProducer} sends every file response:
a file that fails to read or ends early, or a response that makes no
progress for the idle timeout (a client that stopped reading), aborts the
connection and closes the file; nothing waits forever.
"""

import collections
import errno
import os
import re
from importlib import resources

from OpenSSL import SSL
from twisted.logger import LogLevel
from twisted.web import http, resource, server, static

from nexusws.logs import logger, printable, redact
from nexusws.tls import openssl_reason

ANSYS_ROOT = str(resources.files("nexusws") / "ansys")

#: Types that must not depend on the host's /etc/mime.types (which, for
#: example, may call .js application/javascript or lack .wasm).
PINNED_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".txt": "text/plain",
}


def content_types(system):
    """The extension-to-type map: C{system}'s entries overlaid with L{PINNED_TYPES}."""
    return {**system, **PINNED_TYPES}


READ_METHODS = (b"GET", b"HEAD")
TEXT = b"text/plain; charset=utf-8"

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


def respond(request, code, content_type, body):
    """Set status, type and length; return C{body}, or nothing for HEAD.

    Returning an empty body for HEAD keeps twisted.web from logging its
    "HEAD request ... is returning a message body" warning for every HEAD.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def refuse_method(request):
    """Answer 405 for anything but GET and HEAD: the tree is read-only."""
    request.setHeader(b"allow", b"GET, HEAD")
    return respond(request, 405, TEXT, b"Method not allowed: this server is read-only.\n")


class NotFound(resource.Resource):
    """A plain-text 404 for this path and everything below it."""

    def getChild(self, path, request):
        return self

    def render(self, request):
        return respond(request, 404, TEXT, b"File not found.\n")


NOT_FOUND = NotFound()


class ConfinedLister(static.DirectoryLister):
    """A directory listing that refuses writes and has no children."""

    def getChild(self, path, request):
        return NOT_FOUND

    def render(self, request):
        if request.method not in READ_METHODS:
            return refuse_method(request)
        return respond(request, 200, b"text/html; charset=utf-8", super().render(request))


#: Most parts a 206 answer may have after merging; beyond, the whole file (200).
MAX_RANGES = 16
#: Most range-specs read from one Range header; beyond, it is ignored unread.
MAX_RANGE_SPECS = 1024
# Optional whitespace is tolerated as static.File's int() did; 30 digits is
# past any file size and keeps int() far from its 4300-digit limit.
_RANGE_SPEC = re.compile(rb"\s*(\d{0,30})\s*-\s*(\d{0,30})\s*")


def plan_ranges(header, size):
    """The parts of a file of C{size} bytes that Range header C{header} asks for.

    @return: L{None} to ignore the header and send the whole file (200): it
        is malformed, its unit is not bytes, it asks for more bytes in all
        than the file holds, or its ranges leave more than L{MAX_RANGES}
        parts once merged. C{[]}: no range is satisfiable (416). Otherwise
        C{[(offset, length), ...]}: overlapping and adjacent ranges merged,
        unsatisfiable ones dropped, each part where its first range was.
    """
    unit, eq, value = header.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    # At most MAX_RANGE_SPECS splits: any commas left make the last spec malformed.
    specs = [spec for spec in value.split(b",", MAX_RANGE_SPECS) if spec.strip()]
    if not specs or len(specs) > MAX_RANGE_SPECS:
        return None
    wanted, total = [], 0
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first:
            start = int(first)
            if last and int(last) < start:
                return None
            end = min(int(last) + 1, size) if last else size
        elif last:
            start, end = max(size - int(last), 0), size
        else:
            return None
        if start >= end:  # starts past the end, or a suffix of 0 bytes
            continue
        total += end - start
        if total > size:
            return None
        wanted.append((start, end))
    merged = []  # [start, end, position of its first range in the header]
    for position, (start, end) in sorted(enumerate(wanted), key=lambda item: item[1]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] = min(merged[-1][2], position)
        else:
            merged.append([start, end, position])
    if len(merged) > MAX_RANGES:
        return None
    return [(start, end - start) for start, end, _ in sorted(merged, key=lambda part: part[2])]


class _FileEnded(Exception):
    """The file held fewer bytes than its response promised."""


class FileProducer(static.StaticProducer):
    """Writes C{parts}, C{[(prefix, offset, length)]}, of an open file to a request.

    It replaces static.File's producers, which a multi-range request could
    crash (leaving the response, its connection and the file held forever)
    and a file cut short could spin. A read that fails or comes up short
    aborts the connection (the head promised a length); so does no progress
    for C{timeout} seconds on C{reactor} (the client stopped reading). The
    file is closed either way.
    """

    def __init__(self, request, fileObject, parts, timeout=None, reactor=None):
        super().__init__(request, fileObject)
        self._parts = collections.deque(parts)
        self._left = 0
        self._timeout = timeout
        self._reactor = reactor
        self._watchdog = None

    def start(self):
        if self._timeout and self._reactor is not None:
            self._watchdog = self._reactor.callLater(self._timeout, self._stalled)
        self.request.registerProducer(self, False)

    def resumeProducing(self):
        if not self.request:
            return
        if self._watchdog is not None:
            self._watchdog.reset(self._timeout)
        try:
            chunk = self._read()
        except _FileEnded:
            _log.warn("{path} ended before its response did (changed while served?): connection aborted",
                      path=self._name())
            return self._abort()
        except Exception:  # never leave the response hanging with the file open
            _log.failure("reading {path} failed: connection aborted", path=self._name(), level=LogLevel.error)
            return self._abort()
        if chunk:
            self.request.write(chunk)
        if self.request and not self._left and not self._parts:
            self.request.unregisterProducer()
            self.request.finish()
            self.stopProducing()

    def _read(self):
        """Up to about a buffer of prefixes and file bytes, in order."""
        data, length = [], 0
        while length < self.bufferSize:
            if not self._left:
                if not self._parts:
                    break
                prefix, offset, self._left = self._parts.popleft()
                data.append(prefix)
                length += len(prefix)
                if self._left:
                    self.fileObject.seek(offset)
                continue
            read = self.fileObject.read(min(self.bufferSize, self._left))
            if not read:
                raise _FileEnded()
            data.append(read)
            length += len(read)
            self._left -= len(read)
        return b"".join(data)

    def _name(self):
        return printable(str(getattr(self.fileObject, "name", "a file")))

    def _stalled(self):
        self._watchdog = None
        channel = self.request.channel if self.request else None
        _log.info("http {client}: response made no progress for {timeout:g} s: connection aborted",
                  client=channel._client() if isinstance(channel, Channel) else "-", timeout=self._timeout)
        self._abort()

    def _abort(self):
        request = self.request
        self.stopProducing()
        if request is not None and request.channel is not None:
            request.unregisterProducer()
            request.channel.transport.abortConnection()

    def stopProducing(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        super().stopProducing()


class ConfinedFile(static.File):
    """A read-only L{static.File} that never serves anything outside its root.

    The real path of every child, after following symlinks, must lie inside
    the real path of the root; anything else is answered as not found. Names
    starting with a dot are not found either, unless C{allow_dotfiles}.
    """

    contentTypes = content_types(static.File.contentTypes)
    indexNames = ["index.html", "index.htm"]
    childNotFound = NOT_FOUND

    def __init__(self, path, root=None, defaultType="application/octet-stream", allow_dotfiles=False, **kwargs):
        # An unknown extension must not be served as text/html (static.File's
        # default): that would let any uploaded file run script in our origin.
        super().__init__(path, defaultType=defaultType, **kwargs)
        self.root = os.path.realpath(root if root is not None else path)
        self.allow_dotfiles = allow_dotfiles

    def createSimilarFile(self, path):
        f = self.__class__(
            path, root=self.root, defaultType=self.defaultType, allow_dotfiles=self.allow_dotfiles,
            ignoredExts=self.ignoredExts, registry=self.registry,
        )
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        f.forbidden = self.forbidden
        return f

    def getChild(self, path, request):
        # static.File logs a traceback for a non-UTF-8 segment, and os.stat
        # raises ValueError (a 500) for a NUL byte: refuse both quietly. A
        # separator decoded from %2F or %5C names no file of this directory,
        # and FilePath would reduce "x/../.env" to ".env": refuse it too.
        if b"\0" in path or b"/" in path or b"\\" in path or not _is_utf8(path):
            return self.childNotFound
        if path.startswith(b".") and not self.allow_dotfiles:  # .env, .git/, .htpasswd...
            return self.childNotFound
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not self._inside(child.path):
            _log.warn(
                "refused {uri}: {path} resolves outside the served root",
                uri=printable(redact(request.uri)),
                path=printable(child.path),
            )
            return self.childNotFound
        return child

    def _inside(self, path):
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def listNames(self):
        # Hide links leading out and names no request could reach (non-UTF-8, dot-files).
        return [
            n for n in super().listNames()
            if _is_utf8(n) and (self.allow_dotfiles or not n.startswith("."))
            and self._inside(os.path.join(self.path, n))
        ]

    def directoryListing(self):
        return ConfinedLister(
            self.path, self.listNames(), self.contentTypes, self.contentEncodings, self.defaultType
        )

    def render(self, request):
        if request.method not in READ_METHODS:
            return refuse_method(request)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render(request)

    def makeProducer(self, request, fileForReading):
        # Instead of static.File's: its parser lets a 15 KB header ask for
        # gigabytes, and its multi-range producer can crash mid-response.
        size = self.getFileSize()
        header = request.getHeader(b"range")
        plan = None if header is None or not self._if_range_holds(request) else plan_ranges(header, size)
        if plan is None:
            request.setResponseCode(http.OK)
            self._setContentHeaders(request, size)
            parts = [(b"", 0, size)]
        elif not plan:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            self._setContentHeaders(request, 0)
            parts = []
        elif len(plan) == 1:
            (offset, length), = plan
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", self._contentRange(offset, length))
            self._setContentHeaders(request, length)
            parts = [(b"", offset, length)]
        else:  # static.File's multipart/byteranges head and part separators
            parts = self._doMultipleRangeRequest(request, [(offset, offset + length - 1) for offset, length in plan])
        site = getattr(request, "site", None)
        return FileProducer(request, fileForReading, parts,
                            timeout=getattr(site, "timeOut", None), reactor=getattr(site, "reactor", None))

    def _if_range_holds(self, request):
        """Whether C{If-Range} (if any) names this file's version: its Last-Modified
        date (no ETag is sent, so an entity tag never does). Else the whole file."""
        value = request.getHeader(b"if-range")
        if value is None:
            return True
        try:
            return http.stringToDatetime(value) == int(self.getModificationTime())
        except (ValueError, IndexError, KeyError):
            return False

    def openForReading(self):
        # getChild checked the path; this checks the file actually opened, so
        # a component swapped for an outward link in between does not leak it.
        f = super().openForReading()
        try:
            opened = os.readlink(f"/proc/self/fd/{f.fileno()}")
        except OSError:
            opened = self.path  # no /proc: the getChild check stands alone
        if not self._inside(opened):
            f.close()
            raise OSError(errno.EACCES, "outside the served root", self.path)
        return f


def _is_utf8(name):
    try:
        name.encode("utf-8") if isinstance(name, str) else name.decode("utf-8")
    except UnicodeError:
        return False
    return True


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


def build_root(http_directory, api, viewer=None, allow_dotfiles=False):
    """Build the resource tree for C{http_directory} with C{api} mounted at /v1.

    C{viewer}, if given, answers /ansys/nexus/novnc/ (L{nexusws.viewer}).
    C{allow_dotfiles} serves and lists dot-files of C{http_directory} (not of /ansys).
    """
    root = ConfinedFile(os.path.abspath(http_directory), allow_dotfiles=allow_dotfiles)
    ansys = ConfinedFile(ANSYS_ROOT)
    if viewer is not None:
        nexus = ConfinedFile(os.path.join(ANSYS_ROOT, "nexus"), root=ANSYS_ROOT)
        nexus.putChild(b"novnc", viewer)
        ansys.putChild(b"nexus", nexus)
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
