"""Sessions that outlive their WebSocket: detaching, the grace, re-attaching, taking over.

L{Attaching} is the part of L{nexusws.sessions.registry.Registry} that decides
what losing a session's WebSocket does, and what a token presented to a
running instance does. It works on the registry's reservations and state
machine (C{_set_state}, C{_end}) and its reactor, as the registry's own methods do.

Rules (item 1 of issue 15):
  - A WebSocket lost for any reason but an explicit end (the client closed it,
    its connection dropped, a ping timed out) leaves the active instance
    running, C{detached}, for the service's grace (L{grace_of}): the config
    file's C{options.reconnect_grace}, else the registry's default
    (C{--reconnect_grace}). A grace of 0 stops it at once, as the reference does.
  - Explicit ends stop it at once: the backend closed the tunnel or could not
    be reached (the caller gives the reason), a release, a shutdown (also one
    in progress), a failed start. A start in progress is cut short as before.
  - The same token presented while detached re-attaches: C{active} again, the
    timer cancelled, the address given back (the caller connects to it anew;
    nothing is started). Once the grace has run out the instance is stopped
    (C{grace_expired}).
  - Presented while another WebSocket is attached: L{TokenInUse}, unless the
    caller asks to take over; then the old attachment's C{take_over()} is
    called (it closes its WebSocket) and the new one is attached.

The attachment is the caller's object (the router's launch), opaque here but
for C{take_over()}: the registry only keeps it to tell the current
WebSocket's loss from a displaced one's. The reservation timeout does not
apply to a detached reservation (it is not unused), its grace does.
"""

from twisted.internet import defer

from nexusws.logs import logger, tag
from nexusws.sessions.reservation import ACTIVE, DETACHED, RESERVED

_log = logger("nexusws.reservations")

#: Why a detached instance is stopped when its grace runs out (logged, and the
#: reason later items report).
GRACE_EXPIRED = "grace_expired"


class TokenInUse(Exception):
    """The token has already been presented by a WebSocket."""


class Attaching:
    """The detach/re-attach part of the registry (see the module docstring).

    Expects of the class it is mixed into: C{_live}, C{_reactor}, C{_closing},
    C{metrics}, C{reconnect_grace}, C{_set_state}, C{_end}, C{_emit} and
    L{nexusws.sessions.deadlines}' C{_fold} and C{_watch_input}."""

    def grace_of(self, service):
        """Seconds an instance of C{service} is kept after its WebSocket is lost."""
        value = (getattr(service, "common_options", None) or {}).get("reconnect_grace")
        return self.reconnect_grace if value is None else float(value)

    def deactivate(self, token, attachment=None, ended=None):
        """The WebSocket of C{token} is gone: detach the instance, or stop it and free the index.

        @param attachment: what was given to L{activate} for that WebSocket; a
            WebSocket that is no longer the attached one (taken over) changes nothing.
        @param ended: None when the client's side was lost (the instance is kept
            for its grace); else why its session ended (it is stopped at once).
        Harmless for a token that is unknown, ended, not activated or detached.
        @return: a Deferred firing (None) once detached, or once the index is free."""
        r = self._live.get(token)
        if r is None or r.state in (RESERVED, DETACHED) or r.attached is not attachment:
            _log.debug("deactivate {token}: nothing to do", token=tag(token))
            return defer.succeed(None)
        grace = self.grace_of(r.service)  # first: nothing is changed if it cannot be known
        self._fold(r, attachment)  # its last input and bytes (L{nexusws.sessions.deadlines})
        r.attached = None
        if r.state == ACTIVE and ended is None and grace > 0 and not self._closing:
            self._set_state(r, DETACHED, f"WebSocket closed; grace {grace:g} s")
            r.grace_ends = self._reactor.seconds() + grace
            r.grace_call = self._reactor.callLater(grace, self._grace_expired, r)
            return defer.succeed(None)
        return self._end(r, ended or "WebSocket closed")

    def _attach(self, r, attachment, takeover):
        """A WebSocket presented the token of running C{r}: re-attach or take over.

        @raise TokenInUse: another WebSocket is attached (or the start is in
            progress) and C{takeover} was not asked for (or cannot be).
        @return: a Deferred firing with the instance's address."""
        if r.state == DETACHED:
            r.attached = attachment
            self._set_state(r, ACTIVE, "re-attached")
            self._count_attach("reattaches", r)
            if r.idle_warned:
                self._watch_input(r)
            return defer.succeed(r.address)
        if r.state != ACTIVE or not takeover:
            raise TokenInUse(f"token {tag(r.token)} is already in use ({r.state})")
        displaced, r.attached = r.attached, attachment
        self._fold(r, displaced)
        if r.idle_warned:
            self._watch_input(r)
        _log.info("reservation {label}: taken over by a new WebSocket (the previous one is closed)",
                  label=r.label)
        self._count_attach("takeovers", r)
        self._emit(r, "attached", takeover=True)  # L{nexusws.sessions.events}
        if displaced is not None:
            try:
                displaced.take_over()
            except Exception:  # logged; the new WebSocket is attached all the same
                _log.failure("{label}: closing the WebSocket taken over failed", label=r.label)
        return defer.succeed(r.address)

    def _grace_expired(self, r):
        r.grace_call = None
        if r.state == DETACHED:
            self._end(r, GRACE_EXPIRED)

    @staticmethod
    def _ungrace(r):
        """C{r} leaves the detached state: its grace timer is cancelled."""
        call, r.grace_call, r.grace_ends = r.grace_call, None, None
        if call is not None and call.active():
            call.cancel()

    def _count_attach(self, which, r):
        if self.metrics is not None:
            getattr(self.metrics, which).labels(r.service.name).inc()
