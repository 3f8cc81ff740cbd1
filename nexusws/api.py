"""The /v1/ REST API.

Every call is a GET answered with JSON (errors as C{{"error": "..."}}):

  /v1/reserve/{service}?k=v...  200 {"token", "service", "index"}; 404 unknown service; 503 none
                                free, or the state file cannot record it
  /v1/release/{token}           200 {"released": token}; 404 unknown token; 503 unrecordable
  /v1/status                    200 [{"name", "count", "common_options", "instances": [...]}]
  /v1/session/{token}           200 its session's snapshot; /v1/touch/{token}: its user is there;
                                /v1/extend/{token}?seconds=N: a later time limit (nexusws.controls);
                                /v1/events/{token}: its event stream (nexusws.streams); each
                                404 unknown token, 403 another user's
  /v1/status_view               200 the same as an HTML table
  /v1/stop                      200 {"stopping": true}, then a graceful shutdown
  /v1/metrics                   200 Prometheus metrics, text exposition format (nexusws.metrics)
  /v1/load                      200 the node's load, 0-100, as text; ?format=json: its parts (nexusws.load)
  /v1/services, /v1/sessions, /v1/admin...: the portal's and the dashboard's (nexusws.portal)

Each call is declared once, in L{CALLS}: its arity, whether it changes something,
who may make it, its metric label and its handler; dispatch, 404, 405, HEAD, that
access rule and the labels of C{nexusws_http_requests_total} all follow from it.
HEAD is answered for every call that changes nothing (status, status_view, metrics, load);
the calls that change something answer it 405. Other methods get 405 everywhere.

A browser's request from a page of another site (C{Sec-Fetch-Site: cross-site}, or
an C{Origin} that is neither the gateway's own nor on --allowed_origin) and a
request whose C{Host} is not one of the gateway's names (DNS rebinding) get 403
before anything else (L{nexusws.auth.Sites}).

With a security token configured, a call must carry it as
C{?security_token=...} or C{Authorization: Bearer ...} or it gets 401; but a
session's own calls (session, events, touch, extend: C{by_token} in L{CALLS})
are answered without it, as the token's WebSocket is: the reservation token in
their path is their credential, under its access rule (its user, from a
trusted proxy, or anyone for an anonymous reservation). A user a trusted proxy
names (authenticated by it) needs no security token for the calls marked C{by_user}.

Access (see L{nexusws.auth}): the caller's user comes from the user header
of a trusted proxy or, on a call authenticated with the security token, from
a C{user} query parameter. Without the security token, reserve, release and
stop are accepted from local clients only (403; reserve and release also
from others under C{--allow_remote_api}), and /v1/status shows anyone else
only the tokens reserved as them. Reserving a service needs membership of its group and of
C{--require_group} (403); a reservation records its user, and only that user
(or a call with the security token and no C{user}) may release it (403).
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.web import resource

from nexusws import portal
from nexusws.answers import HTML, TEXT, Answers
from nexusws.auth import Access
from nexusws.controls import extend, session, touch
from nexusws.credentials import TokenCheck
from nexusws.groups import check_user
from nexusws.limits import QuotaExceeded, check_reservation_quota
from nexusws.logs import logger, printable
from nexusws.metrics import CONTENT_TYPE
from nexusws.responses import answer_later, respond
from nexusws.scrub import mask_options
from nexusws.sessions.records import check_options
from nexusws.sessions.registry import NoFreeInstance, NotRecorded, UnknownToken
from nexusws.status_page import status_page
from nexusws.streams import events

#: Query parameters that are not options of a reservation: the API's own, and
#: the names nexusws itself sets in the options a script receives (a client
#: must not be able to pose as a known C{user}).
CONTROL_PARAMS = frozenset({"security_token", "token", "user"})

_log = logger("nexusws.api")

#: Every /v1 answer: never cached, its length set, no body to a HEAD (L{nexusws.answers}).
answer = Answers(respond)


def reservation_options(request):
    """The query options of a reserve call: one value as a string, repeated ones as a list."""
    options = {}
    for raw_name, raw_values in request.args.items():
        name = raw_name.decode("utf-8", "replace")
        if name in CONTROL_PARAMS:
            continue
        values = [v.decode("utf-8", "replace") for v in raw_values]
        options[name] = values[0] if len(values) == 1 else values
    return options


class Who(enum.Enum):
    """Who may make a call (with a security token configured, every call needs it besides)."""

    ANYONE = "anyone"
    LOCAL = "local"  # a local client, or a call with the security token
    REMOTE_API = "remote_api"  # those, and anyone else under --allow_remote_api
    ADMIN = "admin"  # an administrator (nexusws.auth.Access.is_admin)


@dataclass(frozen=True)
class Call:
    """One /v1 call, as L{CALLS} declares it: its C{name}; its C{arity}, the number of
    path segments after the name (an empty one counts: /v1/status/ is 404); whether it is C{mutating}
    (then GET only: a HEAD, whose answer has no body, would reserve an instance
    nobody learns the token of, or stop the server); L{Who} may make it; its
    C{handler}, an L{ApiRoot} method called C{(api, request, caller, *args)}; its
    C{metric}, its C{call} label in C{nexusws_http_requests_total}."""

    name: str
    arity: int
    mutating: bool
    who: Who
    handler: Callable
    metric: str
    #: The reservation token in its path is its credential: it is answered without the
    #: security token too (as the token's WebSocket is), under the token's own access rule.
    by_token: bool = False
    #: Answered without the security token to a user a trusted proxy names, under its L{Who}.
    by_user: bool = False

    @property
    def methods(self):
        return (b"GET",) if self.mutating else (b"GET", b"HEAD")

    def takes(self, args):
        """Whether C{args}, the path segments after the name, fit the arity."""
        return len(args) == self.arity


class ApiRoot(resource.Resource):
    """The /v1 namespace: checks the security token, then dispatches.

    @param security_token: the shared secret every call must carry, or None.
    @param registry: the L{nexusws.sessions.registry.Registry}, or None when no
        service is configured (then /v1/status is an empty list and every
        reservation is for an unknown service).
    @param stop: called (once, after the answer is written) by /v1/stop.
    @param reactor: schedules that call.
    @param access: the L{nexusws.auth.Access} that identifies and authorizes callers.
    @param metrics: the gateway's L{nexusws.metrics.Metrics} (served at /v1/metrics, and
        counting every answer), or None.
    @param load: the gateway's L{nexusws.load.NodeLoad} (served at /v1/load), or None.
    """

    isLeaf = True
    #: Outstanding reservations per user, or anonymous address (0: no limit); set by assemble.
    max_reservations_per_user = 0
    #: C{()} -> where the WebSocket listener is (L{nexusws.portal.services}); set by assemble.
    websocket = None
    watchers = None  # the live views' L{nexusws.portal.Watchers}, once one is open

    def __init__(self, security_token=None, registry=None, stop=None, reactor=None, access=None,
                 metrics=None, load=None):
        super().__init__()
        self.metrics, self.load = metrics, load
        self.access = access if access is not None else Access()
        self._token = TokenCheck(security_token)
        self.registry = registry
        self._stop = stop
        self._reactor = reactor
        self._stopping = False

    def authorized(self, request):
        """True when no token is configured or C{request} carries the right one."""
        return not self._token.required or self._token.carried_by(request)

    def render(self, request):
        path = [p.decode("utf-8", "replace") for p in request.postpath]
        name, args = (path[0], path[1:]) if path else ("", [])
        call = CALLS.get(name)
        if self.metrics is not None:
            request.notifyFinish().addCallbacks(  # a client gone before its answer: not counted
                lambda _: self.metrics.api_answered(call and call.metric, request.code), lambda _: None)
        # Every value of each (getHeader gives the last): two Hosts are no one Host.
        refusal = self.access.sites.refusal(*(
            ", ".join(v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(header, [])) or None
            for header in (b"host", b"origin", b"sec-fetch-site")))
        if refusal is not None:
            _log.warn("/v1 refused: {client}: {reason}",
                      client=printable(getattr(request.getClientAddress(), "host", "-")), reason=refusal)
            return answer.error(request, 403, refusal)
        authorized = self.authorized(request)
        with_token = self._token.required and authorized
        # A by_user call without the token: is the caller a user a trusted proxy names?
        caller = None if authorized or call is None or not call.by_user else self._caller(request, with_token)
        if not authorized and not (call is not None and call.takes(args) and (
                call.by_token or (caller is not None and caller.proxied and caller.user is not None))):
            request.setHeader(b"www-authenticate", b'Bearer realm="nexusws"')
            return answer.error(request, 401, "missing or wrong security_token")
        if request.method not in API_METHODS:
            request.setHeader(b"allow", b", ".join(API_METHODS))
            return answer.error(request, 405, "the /v1 API answers GET only")
        if call is None or not call.takes(args):
            return answer.error(request, 404, f"no such API call: /v1/{printable('/'.join(path))}")
        if request.method not in call.methods:
            request.setHeader(b"allow", b", ".join(call.methods))
            return answer.error(request, 405, f"/v1/{name} answers {b' and '.join(call.methods).decode()} only")
        caller = caller or self._caller(request, with_token)
        if caller.problem:
            return answer.error(request, 400, f"user parameter: {caller.problem}")
        if call.who is Who.ADMIN and not self.is_admin(caller):
            self.refused(caller, name, "not an administrator")
            return answer.error(request, 403, f"/v1/{name} is for administrators (--admin_group)")
        if not self._may_call(call, caller):
            self.refused(caller, name, "a client on another host without the security token")
            more = " (or the server's --allow_remote_api)" if call.who is Who.REMOTE_API else ""
            return answer.error(request, 403, f"/v1/{name} from another host or through a proxy needs the "
                                              f"security token{more}")
        return call.handler(self, request, caller, *args)

    def caller_of(self, request):
        """The L{nexusws.auth.Identity} of C{request} (for the tree's pages: the dashboard's guard)."""
        return self._caller(request, self._token.required and self.authorized(request))

    def is_admin(self, caller):
        """Whether C{caller} is an administrator (L{nexusws.auth.Access.is_admin})."""
        return self.access.is_admin(caller, self._token.required)

    def _may_call(self, call, caller):
        """Whether C{caller} may make C{call}, by its L{Who} (see L{Access.may_change})."""
        if call.who in (Who.ANYONE, Who.ADMIN):
            return True
        return self.access.may_change(caller, caller.with_token, call.who is Who.REMOTE_API)

    def _caller(self, request, with_token):
        """The caller's L{nexusws.auth.Identity}, with C{with_token} set (whether the
        request carried the security token) and C{problem}: why its C{user} parameter
        is unusable (a 400), or None."""
        headers = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
        caller = self.access.identify(request.getClientAddress(), headers)
        caller.with_token, caller.problem = with_token, None
        named = request.args.get(b"user")
        if named and not caller.with_token:
            _log.warn("ignored the user parameter from {client}: only calls with the "
                      "security token may name a user", client=printable(caller.client))
        elif named:
            try:
                user, problem = check_user(named[0].decode("utf-8"))
            except UnicodeDecodeError:
                user, problem = None, "not UTF-8"
            if len(named) > 1:
                problem = "given more than once"
            caller.user, caller.named, caller.problem = user, True, problem
        return caller

    def refused(self, caller, call, reason, what=None):
        """Log one refusal of /v1/C{call} (or of C{what}, a page's path in bytes) to C{caller}."""
        shown = f"/v1/{call}" if what is None else what.decode("latin-1")
        _log.warn("{what} refused: {client} as {user}: {reason}", what=printable(shown),
                  client=printable(caller.client), reason=reason,
                  user="anonymous" if caller.user is None else repr(printable(caller.user)))

    # --- calls ----------------------------------------------------------------

    def _reserve(self, request, caller, name):
        service = None if self.registry is None else self.registry.service(name)
        if service is None:
            return answer.error(request, 404, f"unknown service {printable(name)!r}")
        refusal = self.access.refusal(caller.user, service)
        if refusal is not None:
            self.refused(caller, "reserve", refusal)
            return answer.error(request, 403, refusal)
        address = None if caller.with_token else caller.client  # with the token: by the user it names only
        try:
            check_reservation_quota(self.registry.outstanding(caller.user, address), caller.user, address,
                                    self.max_reservations_per_user)
        except QuotaExceeded as e:
            self.refused(caller, "reserve", str(e))
            return answer.error(request, 429, str(e))
        options = reservation_options(request)
        try:
            check_options(options)
        except ValueError as e:
            return answer.error(request, 400, f"reservation options: {e}")
        try:  # a known service (found above): no UnknownService
            reservation = self.registry.reserve(name, options, user=caller.user,
                                                client=caller.client)
        except NoFreeInstance:
            return answer.error(request, 503, f"no free instance of service {printable(name)!r}")
        except NotRecorded as e:  # a token that might not survive a crash is never handed out
            return answer.error(request, 503, f"reservation refused: {e}")
        return answer.json(
            request,
            200,
            {"token": reservation.token, "service": reservation.service.name, "index": reservation.index},
        )

    def _release(self, request, caller, token):
        if self.registry is None:
            return answer.error(request, 404, "unknown token")
        reservation = self.registry.get(token)
        owner = None if reservation is None else reservation.user
        # The security token without a user parameter is the operator's: it may release any.
        if owner is not None and caller.user != owner and not (
                caller.with_token and not request.args.get(b"user")):
            self.refused(caller, "release", f"the token was reserved by {printable(owner)!r}")
            return answer.error(request, 403, "this token was reserved by another user")
        d = defer.maybeDeferred(self.registry.release, token)

        def done(_):
            return answer.json(request, 200, {"released": token})

        def failed(failure):
            if failure.check(UnknownToken):
                return answer.error(request, 404, "unknown token")
            if failure.check(NotRecorded):
                return answer.error(request, 503, f"release refused: {failure.value}")
            _log.failure("release failed", failure)
            return answer.error(request, 500, "the release failed; see the server log")

        d.addCallbacks(done, failed)
        return answer_later(request, d)

    def _status(self, request, caller):
        # A token opens its session: the operator (the security token, a local
        # client) sees every token, anyone else only those reserved as them.
        if caller.with_token or caller.local:
            return answer.json(request, 200, self._status_list())
        return answer.json(request, 200, self._status_list(
            lambda instance: caller.user is not None and instance.get("user") == caller.user))

    def _status_list(self, token_shown=lambda instance: True):
        """The status listing, secrets masked, and the tokens C{token_shown} refuses."""
        if self.registry is None:
            return []
        listing = self.registry.status()
        for service in listing:
            # A service's options come from the config file and may hold a password too.
            service["common_options"] = mask_options(service.get("common_options", {}))
            for instance in service["instances"]:
                instance["options"] = mask_options(instance.get("options", {}))
                if not token_shown(instance):
                    instance["token"] = "***"
        return listing

    def _status_view(self, request, caller):
        return answer(request, 200, HTML, status_page(self._status_list()).encode("utf-8"))

    def _metrics(self, request, caller):
        if self.metrics is None:
            return answer.error(request, 404, "no metrics here")
        return answer(request, 200, CONTENT_TYPE, self.metrics.exposition())

    def _load(self, request, caller):
        if self.load is None:
            return answer.error(request, 404, "no load here")
        report = self.load.report()
        if request.args.get(b"format") == [b"json"]:
            return answer.json(request, 200, report)
        # As a Webots simulation server answers: the number alone.
        return answer(request, 200, TEXT, f"{report['load']:g}".encode("ascii"))

    def _stop_server(self, request, caller):
        if self._stop is not None and not self._stopping:
            self._stopping = True
            _log.info("stop requested through /v1/stop")
            # After this answer has gone out.
            request.notifyFinish().addBoth(lambda _: self._reactor.callLater(0, self._stop))
        return answer.json(request, 200, {"stopping": True})


#: The /v1 calls by name: the one list of them. A new call is one entry here plus
#: its handler (an L{ApiRoot} method); routing, 404/405, HEAD, who may make it and
#: its metric label all follow from the entry.
CALLS = {call.name: call for call in (
    #    name           arity  mutating  who              handler                metric
    Call("reserve",     1,     True,     Who.REMOTE_API,  ApiRoot._reserve,      "reserve",      by_user=True),
    Call("release",     1,     True,     Who.REMOTE_API,  ApiRoot._release,      "release",      by_user=True),
    Call("status",      0,     False,    Who.ANYONE,      ApiRoot._status,       "status"),
    Call("status_view", 0,     False,    Who.ANYONE,      ApiRoot._status_view,  "status_view"),
    Call("stop",        0,     True,     Who.LOCAL,       ApiRoot._stop_server,  "stop"),
    Call("metrics",     0,     False,    Who.ANYONE,      ApiRoot._metrics,      "metrics"),
    Call("load",        0,     False,    Who.ANYONE,      ApiRoot._load,         "load"),
    Call("session",     1,     False,    Who.ANYONE,      session,               "session",      by_token=True),
    Call("events",      1,     False,    Who.ANYONE,      events,                "events",       by_token=True),
    Call("touch",       1,     True,     Who.ANYONE,      touch,                 "touch",        by_token=True),
    Call("extend",      1,     True,     Who.ANYONE,      extend,                "extend",       by_token=True),
    Call("services",    0,     False,    Who.ANYONE,      portal.services,       "services",     by_user=True),
    Call("sessions",    0,     False,    Who.ANYONE,      portal.sessions,       "sessions",     by_user=True),
    Call("admin",       0,     False,    Who.ADMIN,       portal.admin,          "admin",        by_user=True),
    Call("admin_end",   1,     True,     Who.ADMIN,       portal.admin_end,      "admin_end",    by_user=True),
    Call("admin_extend", 1,    True,     Who.ADMIN,       portal.admin_extend,   "admin_extend", by_user=True),
)}

#: The methods some call answers (C{Allow} of the 405 to any other).
API_METHODS = tuple(dict.fromkeys(m for call in CALLS.values() for m in call.methods))
