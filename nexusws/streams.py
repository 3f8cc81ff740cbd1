"""/v1/events/{token}: a Server-Sent Events stream of a session's events.

It reads a reservation's event log (L{nexusws.sessions.events}) through the
registry; its L{nexusws.api.CALLS} entry routes it. Access is the token's own
(L{nexusws.controls.owned_log}, as for the session's other calls): its user, or
a call with the security token and no C{user} (403 for anyone else; anyone, for an
anonymous reservation); an unknown token, or one ended more than a minute ago, is 404.

The stream sends every kept event after the client's C{Last-Event-ID} header
(or C{?last_event_id=}; all kept events without one), then each new one, as
C{id: N / event: NAME / data: JSON}, a C{: keep-alive} comment every
L{KEEPALIVE} seconds (the reactor's clock), and ends after C{ended}. It is
the request's push producer: while the client's connection cannot take more
(C{pauseProducing}), nothing is written and the stream only notes that it
lags; on C{resumeProducing} it sends what the log still keeps after the last
event sent, or, if the log no longer keeps the next one, closes the stream
(the client reconnects with its C{Last-Event-ID}). So a client that never
reads costs the transport's buffer and the log's bounded events, no more.
"""

import json

from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from zope.interface import implementer

from nexusws.answers import Answers
from nexusws.controls import owned_log
from nexusws.logs import logger, tag
from nexusws.responses import respond

#: Seconds between two keep-alive comments on an event stream (proxies close idle ones).
KEEPALIVE = 15.0

#: How long a client waits before it reconnects (the stream's C{retry:}), milliseconds.
RETRY_MS = 2000

EVENT_STREAM = b"text/event-stream; charset=utf-8"

_log = logger("nexusws.api")
answer = Answers(respond)


def events(api, request, caller, token):
    """/v1/events/{token}: its event stream (see the module docstring)."""
    log = owned_log(api, request, caller, token, "events")
    if isinstance(log, bytes):
        return log
    raw = request.getHeader(b"last-event-id")
    if raw is None:
        raw = (request.args.get(b"last_event_id") or [None])[0]
    text = b"" if raw is None else raw.strip()
    try:  # ASCII digits only: int() would also take "+1", "1_0" and other scripts' digits
        if text and not text.isdigit():
            raise ValueError
        last_id = int(text) if text else 0
    except ValueError:  # also more digits than Python converts
        return answer.error(request, 400, "Last-Event-ID: not a whole number >= 0")
    request.setResponseCode(200)
    request.setHeader(b"content-type", EVENT_STREAM)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each event on at once
    if request.method == b"HEAD":
        return b""
    # An id this log never gave (a previous run's): everything it keeps.
    EventStream(request, log, last_id if last_id <= log.last_id else 0, api._reactor, tag(token)).start()
    return server.NOT_DONE_YET


@implementer(IPushProducer)
class EventStream:
    """One client's stream of a reservation's events (see the module docstring).

    @ivar last_id: the id of the last event written to it.
    @ivar lagging: a new event came while paused (or was not sent)."""

    def __init__(self, request, log, last_id, reactor, label):
        self.request, self.log, self.last_id = request, log, last_id
        self.reactor, self.label = reactor, label
        self.paused = self.lagging = self.closed = False
        self._keepalive = None

    def start(self):
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(self._gone)
        _log.debug("event stream of {label} opened (after id {id})", label=self.label, id=self.last_id)
        self.request.write(b"retry: %d\n\n" % RETRY_MS)
        events, _ = self.log.after(self.last_id)  # what is no longer kept cannot be sent
        self._write(events)
        if not self.closed and self.log.ended is not None:
            self._close("the session has ended")
        if not self.closed:
            self.log.listen(self._event)
            self._keepalive = self.reactor.callLater(KEEPALIVE, self._keep_alive)

    def _event(self, event):
        if self.paused and event["event"] == "ended":  # the client reconnects to read it
            self._close("the session ended while the client lagged")
        elif self.paused:
            self.lagging = True
        else:
            self._write([event])

    def _write(self, events):
        for event in events:
            if self.closed or event["id"] <= self.last_id:
                continue
            self.request.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (
                event["id"], event["event"].encode("utf-8"), json.dumps(event).encode("utf-8")))
            self.last_id = event["id"]
            if event["event"] == "ended":
                self._close("the session has ended")

    def _keep_alive(self):
        self._keepalive = self.reactor.callLater(KEEPALIVE, self._keep_alive)
        if not self.paused:
            self.request.write(b": keep-alive\n\n")

    # --- IPushProducer: the client's connection ------------------------------------

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.lagging and not self.closed:
            self.lagging = False
            events, lost = self.log.after(self.last_id)
            if lost:
                self._close("the client lagged past the events kept")
            else:
                self._write(events)

    def stopProducing(self):
        self._close("the connection was lost", finish=False)

    def _gone(self, _):
        self._close("the client has gone", finish=False)

    def _close(self, why, finish=True):
        if self.closed:
            return
        self.closed = True
        self.log.unlisten(self._event)
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        _log.debug("event stream of {label} closed: {why} (last id {id})", label=self.label, why=why,
                   id=self.last_id)
        if finish and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()
