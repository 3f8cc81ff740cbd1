"""A session's own calls: /v1/session/{token}, /v1/touch/{token}, /v1/extend/{token}?seconds=N.

Their L{nexusws.api.CALLS} entries route them; the event stream of the same
token is L{nexusws.streams}'. Access is the token's own (L{owned_log}): its user, or a
call with the security token and no C{user} (403 for anyone else; anyone, for an
anonymous reservation); an unknown token is 404.

  /v1/session/{token}            200 its snapshot (L{nexusws.sessions.events.Reporting.session});
                                 also for a session ended less than a minute ago
  /v1/touch/{token}              200 the snapshot: the page's "I'm still here", counted as
                                 user input (L{nexusws.sessions.deadlines}); 409 before it has
                                 started; 404 once ended
  /v1/extend/{token}?seconds=N   200 the snapshot, N whole seconds added to its time limit;
                                 400 N missing, repeated, not a whole number from 1 to
                                 L{EXTEND_MAX_SECONDS}; 403 beyond its C{max_extend}; 409 no time
                                 limit, or not started; 404 once ended
"""

from nexusws.answers import Answers
from nexusws.logs import logger, printable
from nexusws.responses import respond
from nexusws.sessions.deadlines import EXTEND_MAX_SECONDS, RUNNING, ExtendRefused
from nexusws.sessions.reservation import STOPPING

_log = logger("nexusws.api")
answer = Answers(respond)


def owned_log(api, request, caller, token, call):
    """The token's L{EventLog}, or the bytes of its 404 or 403 answer."""
    log = None if api.registry is None else api.registry.events_of(token)
    if log is None:
        return answer.error(request, 404, "unknown token")
    # The security token without a user parameter is the operator's: it may read any.
    if log.user is not None and caller.user != log.user and not (
            caller.with_token and not request.args.get(b"user")):
        api.refused(caller, call, f"the token was reserved by {printable(log.user)!r}")
        return answer.error(request, 403, "this token was reserved by another user")
    return log


def _live(api, request, caller, token, call):
    """The token's live reservation, or the bytes of its 404 or 403 answer."""
    log = owned_log(api, request, caller, token, call)
    if isinstance(log, bytes):
        return log
    r = api.registry.get(token)
    if r is None or r.state == STOPPING:
        return answer.error(request, 404, "this session has ended")
    return r


def session(api, request, caller, token):
    """/v1/session/{token}: its snapshot."""
    log = owned_log(api, request, caller, token, "session")
    if isinstance(log, bytes):
        return log
    return answer.json(request, 200, api.registry.session(token))


def touch(api, request, caller, token):
    """/v1/touch/{token}: its user is there."""
    r = _live(api, request, caller, token, "touch")
    if isinstance(r, bytes):
        return r
    if r.state not in RUNNING:
        return answer.error(request, 409, "this session has not started")
    api.registry.touch(r)
    return answer.json(request, 200, api.registry.session(token))


def extend_seconds(request):
    """The C{seconds} parameter of an extend call, or the bytes of its 400 answer."""
    values = request.args.get(b"seconds") or []
    if len(values) != 1:
        return answer.error(request, 400, "seconds: give it once, a whole number of seconds"
                            if values else "seconds: missing (a whole number of seconds)")
    text = values[0].strip()
    # ASCII digits only (int() takes "+1", "1_0" and other scripts' digits), and few of them.
    if not (text.isdigit() and text.isascii() and len(text) <= 9) or not 1 <= int(text) <= EXTEND_MAX_SECONDS:
        return answer.error(request, 400, f"seconds: not a whole number from 1 to {EXTEND_MAX_SECONDS}")
    return int(text)


def extend(api, request, caller, token):
    """/v1/extend/{token}?seconds=N: its time limit, N seconds later (the token is checked first)."""
    r = _live(api, request, caller, token, "extend")
    if isinstance(r, bytes):
        return r
    seconds = extend_seconds(request)
    if isinstance(seconds, bytes):
        return seconds
    try:
        api.registry.extend(r, seconds)
    except ExtendRefused as e:
        # The token's own user asking too much: not a warning (a page may ask again and again).
        _log.info("/v1/extend refused: {label}: {reason}", label=r.label, reason=str(e))
        return answer.error(request, e.status, str(e))
    return answer.json(request, 200, api.registry.session(token))
