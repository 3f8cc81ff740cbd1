"""The plain answers every resource of the HTTP tree writes with.

L{respond} sets the status, type and length and sends no body to a HEAD: the
file tree (L{nexusws.files}), the /v1 API (L{nexusws.api}) and the viewer
(L{nexusws.viewer}) all answer through it. The tree is read-only:
L{refuse_method} is its 405 for anything but GET and HEAD, L{NOT_FOUND} its
plain-text 404. L{answer_later} writes an answer that comes later.
"""

from twisted.web import resource, server

from nexusws.answers import TEXT
from nexusws.logs import logger, printable
from nexusws.scrub import redact

_log = logger("nexusws.api")

READ_METHODS = (b"GET", b"HEAD")
#: Reason phrases twisted.web does not know (it says "Unknown Status").
PHRASES = {429: b"Too Many Requests"}


def respond(request, code, content_type, body):
    """Set status, type and length; return C{body}, or nothing for HEAD.

    Returning an empty body for HEAD keeps twisted.web from logging its
    "HEAD request ... is returning a message body" warning for every HEAD.
    """
    request.setResponseCode(code, PHRASES.get(code))
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


def answer_later(request, d):
    """Write the body C{d} fires with, unless the client has gone by then."""
    gone = []
    request.notifyFinish().addErrback(gone.append)

    def write(body):
        if not gone:
            request.write(body)
            request.finish()

    d.addCallback(write)
    d.addErrback(lambda f: _log.failure("answering {uri} failed", f, uri=printable(redact(request.path))))
    return server.NOT_DONE_YET
