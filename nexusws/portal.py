"""The calls behind the session portal and the admin dashboard (/ansys/nexus/sessions/, /ansys/nexus/admin/).

  /v1/services               200 {"user", "admin", "may_reserve", "websocket", "services": [...]}: who
                             the caller is, whether it may reserve (/v1/reserve's rule, without the
                             groups), where a page here reaches the WebSocket listener, and the services
                             the caller may use (their groups and --require_group applied), each
                             {"name", "count", "free", "file_ext", "viewer", "backend", "limits"}
  /v1/sessions               200 [...]: the caller's own sessions, each with its token (L{session_row})
  /v1/admin                  200 {"sessions", "services", "load"}: every session, with its C{id}
                             (its token's tag) and never its token (L{admin_row}); administrators only
  /v1/admin_end/{id}         200 {"ended": id} once the session has ended (reason C{admin}: its
                             WebSocket closes with 4004); 404 unknown id
  /v1/admin_extend/{id}?seconds=N
                             200 its row, its time limit N s later, C{max_extend} not applying;
                             400, 403 and 409 as /v1/extend

A caller's own sessions: those reserved as its user (a trusted proxy's user, or the
C{user} parameter of a call with the security token); for the operator (the security
token without C{user}, a local caller when there is no security token), the anonymous
ones; for anyone else none (a page keeps the tokens it reserved itself).

An administrator (L{nexusws.auth.Access.is_admin}): a member of C{--admin_group}, a call
with the security token, or a local caller when there is none; anyone else gets 403, on
these calls and on the dashboard's page (L{AdminGuard}).

/v1/sessions and /v1/admin answer a client that accepts C{text/event-stream} (an
EventSource) with a stream of the same JSON: an event C{snapshot} at once and each time it
changes, looked at every L{WATCH_INTERVAL} seconds (bytes and times change while a session
runs), a keep-alive comment when nothing changed for L{KEEPALIVE} seconds. A client that
does not read is sent nothing until it does, then only the latest. At most
L{MAX_WATCHERS} streams of each call and L{MAX_WATCHERS_EACH} per user or address (503, 429).
"""

from twisted.internet.interfaces import IPushProducer
from twisted.web import resource, server
from zope.interface import implementer

from nexusws.answers import Answers, json_bytes
from nexusws.controls import extend_seconds
from nexusws.logs import logger, printable, tag
from nexusws.responses import TEXT, answer_later, respond
from nexusws.sessions.deadlines import ExtendRefused
from nexusws.sessions.registry import NotRecorded
from nexusws.sessions.reservation import ACTIVE, DETACHED, STARTING, STOPPING
from nexusws.streams import EVENT_STREAM, KEEPALIVE, RETRY_MS

_log = logger("nexusws.api")
answer = Answers(respond)

#: Seconds between two looks at what a stream shows.
WATCH_INTERVAL = 1.0
#: Streams open at once, in all and per user (or anonymous address).
MAX_WATCHERS, MAX_WATCHERS_EACH = 256, 8
#: The limits a service's entry shows (L{nexusws.sessions.deadlines.LIMITS}).
SHOWN_LIMITS = ("idle_timeout", "max_duration", "max_extend")


# --- the calls -------------------------------------------------------------------------------


def services(api, request, caller):
    """/v1/services: the caller, the WebSocket's place, the services it may use."""
    registry = api.registry
    usable = [] if registry is None else [
        s for s in registry.services if api.access.refusal(caller.user, s) is None]
    in_use = {} if registry is None else registry.in_use()
    listing = [{
        "name": s.name, "count": s.count, "free": max(0, s.count - in_use.get(s.name, 0)),
        "file_ext": file_extensions(s.common_options.get("file_ext")),
        "viewer": s.common_options.get("viewer", True) is not False,
        "backend": getattr(s, "kind", None) or "local",
        "limits": {name: registry.limit(s, name) for name in SHOWN_LIMITS},
    } for s in usable]
    place = api.websocket() if api.websocket is not None else {"url": None, "port": None, "secure": False}
    return answer.json(request, 200, {
        "user": caller.user, "admin": api.is_admin(caller),
        "may_reserve": api.access.may_change(caller, caller.with_token, remote_api=True),
        "websocket": dict(place, proxied=caller.forwarded), "services": listing})


def sessions(api, request, caller):
    """/v1/sessions: the caller's own sessions (as JSON, or as a stream)."""
    def build(rows):
        return [row for row, r in rows if owns(api, caller, r)]
    return _answer(api, request, caller, build, session_row)


def admin(api, request, caller):
    """/v1/admin: every session, the services' use and the gateway's load."""
    def build(rows):
        return {"sessions": [row for row, _ in rows], "services": _use(api.registry),
                "load": None if api.load is None else api.load.report()}
    return _answer(api, request, caller, build, admin_row)


def admin_end(api, request, caller, session_id):
    """/v1/admin_end/{id}: end that session (its answer once it has ended)."""
    r = _by_id(api, request, session_id)
    if isinstance(r, bytes):
        return r
    _log.info("/v1/admin_end: {label} by {who}", label=r.label, who=_who(caller))
    try:
        d = api.registry.end_by_admin(r)
    except NotRecorded as e:
        return answer.error(request, 503, f"ending refused: {e}")
    return answer_later(request, d.addCallback(lambda _: answer.json(request, 200, {"ended": session_id})))


def admin_extend(api, request, caller, session_id):
    """/v1/admin_extend/{id}?seconds=N: its time limit N seconds later, max_extend not applying."""
    r = _by_id(api, request, session_id)
    if isinstance(r, bytes):
        return r
    seconds = extend_seconds(request)
    if isinstance(seconds, bytes):
        return seconds
    try:
        api.registry.extend(r, seconds, by_admin=True)
    except ExtendRefused as e:
        return answer.error(request, e.status, str(e))
    _log.info("/v1/admin_extend: {label} by {seconds} s, by {who}", label=r.label, seconds=seconds,
              who=_who(caller))
    return answer.json(request, 200, admin_row(api.registry, r, api.registry.now()))


# --- what they show --------------------------------------------------------------------------


def owns(api, caller, r):
    """Whether C{r} is one of C{caller}'s own sessions (see the module docstring)."""
    if caller.user is not None:
        return r.user == caller.user
    return r.user is None and api.is_admin(caller)


def session_row(registry, r, now):
    """A session as its own user sees it: its snapshot, its token, its node and how long it has run."""
    row = registry.session(r.token) or {}
    row.pop("vnc_password", None)  # the viewer asks /v1/session/{token} for it
    backend = row.get("backend") or {}
    row.update(token=r.token, node=backend.get("node"), queue=backend.get("reason"),
               duration=None if r.active_since is None or r.state not in (ACTIVE, DETACHED)
               else round(max(0.0, now - r.active_since), 1),
               file_ext=file_extensions(r.service.common_options.get("file_ext")))
    return row


def admin_row(registry, r, now):
    """A session as the dashboard shows it: no token; its id, client and viewers."""
    row = session_row(registry, r, now)
    del row["token"]
    row.update(id=tag(r.token)[1:], client=getattr(r.attached, "client", None) or r.client,
               viewers=int(r.attached is not None and r.state in (STARTING, ACTIVE)))
    return row


def file_extensions(value):
    """A service's C{file_ext} option as a list of strings ("csv" or ["csv", "vtk"])."""
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _use(registry):
    if registry is None:
        return []
    in_use = registry.in_use()
    return [{"name": s.name, "count": s.count, "in_use": in_use.get(s.name, 0),
             "backend": getattr(s, "kind", None) or "local"} for s in registry.services]


def _rows(api, make):
    registry = api.registry
    if registry is None:
        return []
    now = registry.now()
    live = sorted(registry.live(), key=lambda r: (r.service.name, r.index))
    return [(make(registry, r, now), r) for r in live]


def _by_id(api, request, session_id):
    """The live session of C{session_id}, or the bytes of its 404 or 409 answer."""
    found = [] if api.registry is None else [r for r in api.registry.live() if tag(r.token)[1:] == session_id]
    if not found:
        return answer.error(request, 404, f"no session {printable(session_id)!r}")
    if len(found) > 1:  # two tokens of one tag: 1 in 4 billion
        return answer.error(request, 409, "two sessions have this id; end one by its token")
    if found[0].state == STOPPING:  # nothing more to end or extend
        return answer.error(request, 409, "this session is ending already")
    return found[0]


def _who(caller):
    if caller.user is not None:
        return repr(printable(caller.user))
    return "the security token" if caller.with_token else printable(caller.client)


# --- streams ---------------------------------------------------------------------------------


def _answer(api, request, caller, build, make):
    """C{build(rows)} as JSON, or as a stream to an EventSource."""
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    if "text/event-stream" not in accept or request.method == b"HEAD":
        return answer.json(request, 200, build(_rows(api, make)))
    watchers = api.watchers if api.watchers is not None else Watchers(api)
    api.watchers = watchers
    # Counted per call: an administrator's views are never crowded out by users'.
    key = (make, caller.user if caller.user is not None else f"@{caller.client}")
    if sum(s.key[0] is make for s in watchers.streams) >= MAX_WATCHERS:
        return answer.error(request, 503, f"too many live views ({MAX_WATCHERS}); try again later")
    if sum(s.key == key for s in watchers.streams) >= MAX_WATCHERS_EACH:
        return answer.error(request, 429, f"at most {MAX_WATCHERS_EACH} live views each")
    request.setResponseCode(200)
    request.setHeader(b"content-type", EVENT_STREAM)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each snapshot on at once
    # An administrator's view ends when they no longer are one (the groups file changed).
    allowed = (lambda: api.is_admin(caller)) if make is admin_row else None
    watchers.add(Watch(request, key, lambda rows: build(rows[make]), make, watchers, allowed))
    return server.NOT_DONE_YET


class Watchers:
    """The open streams of one API, looked at together every L{WATCH_INTERVAL} seconds (the rows
    of every session made once a look, whoever watches)."""

    def __init__(self, api):
        self.api, self.reactor = api, api._reactor
        if self.reactor is None:  # an API made without one (tests): the global one
            from twisted.internet import reactor
            self.reactor = reactor
        self.streams, self._call = set(), None

    def add(self, watch):
        self.streams.add(watch)
        watch.start(self._rows())
        if self._call is None and self.streams:
            self._call = self.reactor.callLater(WATCH_INTERVAL, self._look)

    def remove(self, watch):
        self.streams.discard(watch)

    def _rows(self):
        class Lazy(dict):  # a make function -> its rows, made when first asked for
            def __missing__(inner, make):
                value = inner[make] = _rows(self.api, make)
                return value
        return Lazy()

    def _look(self):
        self._call = None
        rows = self._rows()
        for watch in list(self.streams):
            try:
                watch.look(rows)
            except Exception:  # logged; the other streams go on
                _log.failure("a live view failed")
                watch.close()
        if self.streams:
            self._call = self.reactor.callLater(WATCH_INTERVAL, self._look)


@implementer(IPushProducer)
class Watch:
    """One client's stream of a snapshot (see the module docstring)."""

    def __init__(self, request, key, build, make, watchers, allowed=None):
        self.request, self.key, self.build, self.make, self.watchers = request, key, build, make, watchers
        self.allowed = allowed  # () -> whether its caller may still see it (None: always)
        self.sent, self.quiet, self.paused, self.closed = None, 0.0, False, False

    def start(self, rows):
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: self.close(finish=False))
        self.request.write(b"retry: %d\n\n" % RETRY_MS)
        self.look(rows)

    def look(self, rows):
        if self.closed or self.paused:
            return
        if self.allowed is not None and not self.allowed():
            _log.info("a live view closed: its caller is no longer allowed to see it")
            return self.close()
        body = json_bytes(self.build(rows))
        if body != self.sent:
            self.sent, self.quiet = body, 0.0
            self.request.write(b"event: snapshot\ndata: " + body + b"\n\n")
        else:
            self.quiet += WATCH_INTERVAL
            if self.quiet >= KEEPALIVE:
                self.quiet = 0.0
                self.request.write(b": keep-alive\n\n")

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.close(finish=False)

    def close(self, finish=True):
        if self.closed:
            return
        self.closed = True
        self.watchers.remove(self)
        if finish:
            self.request.unregisterProducer()
            self.request.finish()


# --- the dashboard's page ----------------------------------------------------------------------


class AdminGuard(resource.Resource):
    """The dashboard's page (C{page}, a file tree) for administrators only: 403 for anyone else."""

    def __init__(self, api, page):
        super().__init__()
        self.api, self.page = api, page

    def refusal(self, request):
        """None for an administrator; else the bytes of the 403 answered."""
        caller = self.api.caller_of(request)
        if self.api.is_admin(caller):
            return None
        self.api.refused(caller, "the dashboard", "not an administrator", what=request.path)
        return respond(request, 403, TEXT, b"Forbidden: this dashboard is for administrators (--admin_group).\n")

    def getChildWithDefault(self, path, request):
        refused = self.refusal(request)
        if refused is not None:
            return _Answered(refused)
        return self.page.getChildWithDefault(path, request)

    def render(self, request):
        refused = self.refusal(request)
        return refused if refused is not None else self.page.render(request)


class _Answered(resource.Resource):
    isLeaf = True

    def __init__(self, body):
        super().__init__()
        self.body = body

    def render(self, request):
        return self.body

