"""The read-only file server: L{ConfinedFile}, a static.File kept inside its root.

Confinement: twisted.web percent-decodes each path segment exactly once and
L{static.File} refuses C{..} and separators inside a segment; L{ConfinedFile}
adds what static.File lacks (symlinks leading out, NUL bytes, non-UTF-8
names) and checks the file it actually opened.

Dot-files: a path segment starting with C{.} (after that one decoding, so
C{%2eenv} too) is 404 and such names are left out of listings, unless the
tree was built with C{allow_dotfiles} (--http_allow_dotfiles; /ansys never).

Types: L{PINNED_TYPES} over the host's /etc/mime.types; an unknown extension
is application/octet-stream. L{nexusws.ranges} plans the Range answers and
sends every file. Log lines keep the C{nexusws.web} namespace of the HTTP
server (L{nexusws.web}), which mounts these trees.
"""

import errno
import os

from twisted.web import http, static

from nexusws.logs import logger, printable
from nexusws.ranges import FileProducer, plan_ranges
from nexusws.responses import NOT_FOUND, READ_METHODS, refuse_method, respond
from nexusws.scrub import redact

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


_log = logger("nexusws.web")


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
