"""The HTTP side: a read-only file server, the /ansys/ tree and the /v1/ API root.

Layout of the tree (the reference's "HTTP Server" section)::

  /          read-only copy of --http_directory (listing, HEAD, Range)
  /ansys/    the tree shipped inside the package (nexusws/ansys)
  /v1/       the REST API (see L{nexusws.api})

Confinement: twisted.web percent-decodes each path segment exactly once and
L{static.File} refuses C{..} and separators inside a segment; L{ConfinedFile}
adds what static.File lacks (symlinks leading out, NUL bytes, non-UTF-8
names) and checks the file it actually opened.
"""

import errno
import os

from importlib import resources

from twisted.web import resource, server, static

from nexusws.logs import logger, printable, redact

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


class ConfinedFile(static.File):
    """A read-only L{static.File} that never serves anything outside its root.

    The real path of every child, after following symlinks, must lie inside
    the real path of the root; anything else is answered as not found.
    """

    contentTypes = content_types(static.File.contentTypes)
    indexNames = ["index.html", "index.htm"]
    childNotFound = NOT_FOUND

    def __init__(self, path, root=None, defaultType="application/octet-stream", **kwargs):
        # An unknown extension must not be served as text/html (static.File's
        # default): that would let any uploaded file run script in our origin.
        super().__init__(path, defaultType=defaultType, **kwargs)
        self.root = os.path.realpath(root if root is not None else path)

    def createSimilarFile(self, path):
        f = self.__class__(
            path, root=self.root, defaultType=self.defaultType,
            ignoredExts=self.ignoredExts, registry=self.registry,
        )
        f.processors = self.processors
        f.indexNames = self.indexNames[:]
        f.childNotFound = self.childNotFound
        f.forbidden = self.forbidden
        return f

    def getChild(self, path, request):
        # static.File logs a traceback for a non-UTF-8 segment, and os.stat
        # raises ValueError (a 500) for a NUL byte: refuse both quietly.
        if b"\0" in path or not _is_utf8(path):
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
        # Hide links leading out and names no request could reach (non-UTF-8).
        return [
            n for n in super().listNames()
            if _is_utf8(n) and self._inside(os.path.join(self.path, n))
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
    """A Request whose repr masks secrets: twisted.web puts the repr in log lines."""

    def __repr__(self):
        return "<Request method={} uri={}>".format(
            printable(self.method.decode("latin-1")), printable(redact(self.uri))
        )


class Site(server.Site):
    """A Site whose access log goes through nexusws logging with secrets masked."""

    def log(self, request):
        address = request.getClientAddress()
        referer = request.getHeader(b"referer") or b"-"
        agent = request.getHeader(b"user-agent") or b"-"
        _log.info(
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


def build_root(http_directory, api):
    """Build the resource tree for C{http_directory} with C{api} mounted at /v1."""
    root = ConfinedFile(os.path.abspath(http_directory))
    root.putChild(b"ansys", ConfinedFile(ANSYS_ROOT))
    root.putChild(b"v1", api)
    return root


def make_site(http_directory, api, reactor=None):
    """The L{Site} serving L{build_root}; C{reactor} drives its timeouts (default: global)."""
    site = Site(build_root(http_directory, api), requestFactory=Request, reactor=reactor)
    site.noisy = False
    site.displayTracebacks = False
    return site
