"""The portal's and the dashboard's calls in memory (nexusws.portal): /v1/services and /v1/sessions
for the caller only, /v1/admin and its End and Extend for administrators only, their live
streams, and the dashboard page's guard. No answer ever holds a token that is not the caller's."""

import json
import re

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from nexusws.logs import tag
from nexusws.portal import MAX_WATCHERS_EACH
from nexusws.streams import KEEPALIVE
from support.access_api import LOCAL, REMOTE, SECRET, Gateway

STREAM = [("Accept", "text/event-stream")]


class Attached:
    """What a session's WebSocket gives the registry: records how it is told to close."""

    tunnel = last_input = None
    client = "198.51.100.7"

    def __init__(self):
        self.endings = []

    def session_ending(self, reason, detail=None):
        self.endings.append(reason)


@pytest.fixture
def gw(tmp_path):
    return lambda **kwargs: Gateway(tmp_path, **kwargs)


def reserve(g, user=None, service="open"):
    """A reservation as C{user} (through the trusted proxy), or anonymous (the operator's, with the token)."""
    target = f"/v1/reserve/{service}?security_token={SECRET}" + (f"&user={user}" if user else "")
    r = g.get(target)
    assert r.status == 200, r.raw
    return r.json()["token"]


def tokens_in(raw, *tokens):
    return [t for t in tokens if t.encode() in raw]


# --- /v1/services ------------------------------------------------------------------------------


def test_services_lists_only_what_the_caller_may_use_with_free_instances(gw):
    g = gw(security_token=SECRET, require_group=None)
    g.services[0].common_options = {"file_ext": "csv", "idle_timeout": 60}
    reserve(g, "alice")
    for user, names in (("alice", ["open", "render"]), ("bob", ["open"])):
        r = g.get("/v1/services", user=user)  # a user the proxy names: no security token needed
        assert r.status == 200, r.raw
        body = r.json()
        assert body["user"] == user and body["admin"] is False
        assert body["may_reserve"] is False, "through a proxy, without --allow_remote_api"
        assert [s["name"] for s in body["services"]] == names
        first = body["services"][0]
        assert (first["count"], first["free"], first["file_ext"], first["backend"]) == (3, 2, ["csv"], "local")
        assert first["limits"] == {"idle_timeout": 60.0, "max_duration": 0.0, "max_extend": 0.0}
        assert first["viewer"] is True
        assert body["websocket"]["proxied"] is True
    assert g.get("/v1/services", peer=REMOTE).status == 401, "anonymous, without the security token"


def test_a_service_that_is_no_vnc_desktop_says_so(gw):
    g = gw()
    g.services[0].common_options = {"viewer": False}
    assert [s["viewer"] for s in g.get("/v1/services").json()["services"]] == [False]


def test_services_says_where_the_websocket_listener_is(gw):
    g = gw()
    g.api.websocket = lambda: {"url": None, "port": 9090, "secure": True}
    assert g.get("/v1/services").json()["websocket"] == {"url": None, "port": 9090, "secure": True,
                                                         "proxied": False}
    assert g.get("/v1/services", forwarded=REMOTE).json()["websocket"]["proxied"] is True
    assert g.get("/v1/services").json()["may_reserve"] is True, "a local caller"
    assert gw(allow_remote_api=True).get("/v1/services", forwarded=REMOTE).json()["may_reserve"] is True


# --- /v1/sessions --------------------------------------------------------------------------------


def test_sessions_are_the_callers_own_and_only_they_hold_tokens(gw):
    g = gw(security_token=SECRET)
    alices, bobs, anonymous = reserve(g, "alice"), reserve(g, "bob"), reserve(g)
    for user, own in (("alice", alices), ("bob", bobs)):
        r = g.get("/v1/sessions", user=user)
        assert [row["token"] for row in r.json()] == [own]
        assert tokens_in(r.body, alices, bobs, anonymous) == [own]
    # The security token naming a user: that user's; without one: the operator's, the anonymous ones.
    assert [row["token"] for row in g.get(f"/v1/sessions?security_token={SECRET}&user=bob").json()] == [bobs]
    assert [row["token"] for row in g.get(f"/v1/sessions?security_token={SECRET}").json()] == [anonymous]
    assert g.get("/v1/sessions").status == 401


def test_an_anonymous_remote_caller_has_no_sessions_listed_a_local_one_the_anonymous_ones(gw):
    g = gw(allow_remote_api=True)
    mine = g.reserve(peer=REMOTE)[1]["token"]
    assert g.get("/v1/sessions", peer=REMOTE).json() == [], "its page keeps its own tokens"
    assert [row["token"] for row in g.get("/v1/sessions").json()] == [mine]  # the operator


def test_a_session_row_tells_state_node_times_and_bytes_but_no_password(gw):
    g = gw(registry_options={"limits": {"max_duration": 600}})
    token = reserve_local(g)
    g.registry.activate(token, attachment=Attached())
    g.clock.advance(30)
    row, = g.get("/v1/sessions").json()
    assert (row["token"], row["service"], row["index"], row["state"]) == (token, "open", 0, "active")
    assert (row["duration"], row["time_left"], row["node"], row["queue"]) == (30.0, 570.0, None, None)
    assert (row["bytes_up"], row["bytes_down"]) == (0, 0) and "vnc_password" not in row


def reserve_local(g):
    r = g.get("/v1/reserve/open")
    assert r.status == 200, r.raw
    return r.json()["token"]


# --- /v1/admin ---------------------------------------------------------------------------------


def test_admin_is_for_administrators_only(gw):
    g = gw(security_token=SECRET, admin_group="admins")
    reserve(g, "alice")
    for how in ({"user": "carol"}, {"peer": REMOTE, "headers": [("Authorization", f"Bearer {SECRET}")]}):
        assert g.get("/v1/admin", **how).status == 200, how
    assert g.get(f"/v1/admin?security_token={SECRET}&user=carol").status == 200, "a member, named"
    for how in ({"user": "bob"}, {"user": "alice", "forwarded": LOCAL}):
        r = g.get("/v1/admin", **how)
        assert r.status == 403 and r.json()["error"] == "/v1/admin is for administrators (--admin_group)"
    assert g.get(f"/v1/admin?security_token={SECRET}&user=bob").status == 403, "the token acting for bob"
    assert g.get("/v1/admin").status == 401, "a local caller needs the token when there is one"
    assert gw().get("/v1/admin").status == 200, "without a token, a local caller is the operator"
    assert gw().get("/v1/admin", forwarded=REMOTE).status == 403


def test_admin_shows_every_session_by_its_id_never_a_token(gw):
    g = gw(security_token=SECRET, admin_group="admins")
    tokens = [reserve(g, "alice"), reserve(g, "bob"), reserve(g)]
    g.registry.activate(tokens[0], attachment=Attached())
    r = g.get("/v1/admin", user="carol")
    body = r.json()
    assert tokens_in(r.body, *tokens) == []
    assert [(row["id"], row["user"]) for row in body["sessions"]] == [
        (tag(tokens[0])[1:], "alice"), (tag(tokens[1])[1:], "bob"), (tag(tokens[2])[1:], None)]
    first = body["sessions"][0]
    assert (first["state"], first["viewers"], first["client"]) == ("active", 1, "198.51.100.7")
    assert body["services"][0] == {"name": "open", "count": 3, "in_use": 3, "backend": "local"}


def test_an_administrator_ends_a_session_its_websocket_told_why(gw, events):
    g = gw(admin_group="admins")
    token, attached = reserve_local(g), Attached()
    g.registry.activate(token, attachment=attached)
    session_id = tag(token)[1:]
    assert g.get(f"/v1/admin_end/{session_id}", user="bob").status == 403
    r = g.get(f"/v1/admin_end/{session_id}", user="carol")
    assert r.status == 200 and r.json() == {"ended": session_id}
    assert attached.endings == ["admin"] and g.registry.get(token) is None
    assert [e["reason"] for e in g.registry.events_of(token).events if e["event"] == "ending"] == ["admin"]
    assert g.get(f"/v1/admin_end/{session_id}", user="carol").status == 404


def test_an_administrator_ends_an_unused_reservation_at_once(gw):
    g = gw()
    token = reserve_local(g)
    assert g.get(f"/v1/admin_end/{tag(token)[1:]}").status == 200 and g.registry.get(token) is None


def test_an_administrator_extends_beyond_max_extend_a_user_may_not(gw):
    g = gw(registry_options={"limits": {"max_duration": 600, "max_extend": 60}})
    token = reserve_local(g)
    g.registry.activate(token, attachment=Attached())
    assert g.get(f"/v1/extend/{token}?seconds=120").status == 403
    r = g.get(f"/v1/admin_extend/{tag(token)[1:]}?seconds=120")
    assert r.status == 200 and r.json()["time_left"] == 720.0
    assert [e.get("by") for e in g.registry.events_of(token).events if e["event"] == "extended"] == ["admin"]
    for bad in ("", "?seconds=0", "?seconds=x", "?seconds=1&seconds=2"):
        assert g.get(f"/v1/admin_extend/{tag(token)[1:]}{bad}").status == 400, bad
    assert g.get("/v1/admin_extend/nosuchid?seconds=5").status == 404


def test_extending_a_session_without_a_time_limit_is_409(gw):
    g = gw()
    token = reserve_local(g)
    g.registry.activate(token, attachment=Attached())
    assert g.get(f"/v1/admin_extend/{tag(token)[1:]}?seconds=5").status == 409


# --- the streams ---------------------------------------------------------------------------------


def snapshots(transport):
    """The snapshots written so far on a stream (each in a chunk of its own)."""
    return [json.loads(data) for data in re.findall(rb"event: snapshot\ndata: (.*)\n", transport.value())]


def status_of(g, path, **how):
    """The status of a HEAD of C{path} (a file's GET body would come from a producer, later)."""
    return int(g.send(path, method=b"HEAD", **how)[1].value().split(b" ", 2)[1])


def test_a_live_view_sends_a_snapshot_at_once_and_at_each_change_only(gw):
    g = gw()
    protocol, transport = g.send("/v1/sessions", headers=STREAM)
    assert b"content-type: text/event-stream" in transport.value().lower()
    assert snapshots(transport) == [[]]
    token = reserve_local(g)
    g.clock.advance(1)
    assert [[row["token"] for row in s] for s in snapshots(transport)] == [[], [token]]
    for _ in range(int(KEEPALIVE)):  # nothing changed: a keep-alive, no snapshot
        g.clock.advance(1)
    assert len(snapshots(transport)) == 2 and b": keep-alive\n\n" in transport.value()
    protocol.connectionLost(Failure(ConnectionDone()))
    assert g.api.watchers.streams == set()
    g.clock.advance(5)  # nobody watches: no more looks
    assert g.api.watchers._call is None


def test_a_stream_that_cannot_be_written_sends_only_the_latest_when_it_can(gw):
    g = gw()
    protocol, transport = g.send("/v1/admin", headers=STREAM)
    watch, = g.api.watchers.streams
    watch.pauseProducing()
    reserve_local(g)
    g.clock.advance(1)
    reserve_local(g)
    g.clock.advance(1)
    assert len(snapshots(transport)) == 1
    watch.resumeProducing()
    g.clock.advance(1)
    assert [len(s["sessions"]) for s in snapshots(transport)] == [0, 2]
    protocol.connectionLost(Failure(ConnectionDone()))


def test_live_views_are_bounded_per_caller(gw):
    g = gw()
    opened = [g.send("/v1/sessions", forwarded=REMOTE, headers=STREAM) for _ in range(MAX_WATCHERS_EACH)]
    protocol, transport = g.send("/v1/sessions", forwarded=REMOTE, headers=STREAM)
    assert b" 429 " in transport.value().split(b"\r\n", 1)[0]
    opened.append(g.send("/v1/sessions", headers=STREAM))  # another caller still may
    assert b" 200 " in opened[-1][1].value().split(b"\r\n", 1)[0]
    for p, _ in opened:
        p.connectionLost(Failure(ConnectionDone()))


def test_the_admin_stream_is_refused_to_others_like_its_json(gw):
    g = gw(admin_group="admins")
    _, transport = g.send("/v1/admin", user="bob", headers=STREAM)
    assert b" 403 " in transport.value().split(b"\r\n", 1)[0] and g.api.watchers is None


# --- the dashboard's page ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ansys/nexus/admin/", "/ansys/nexus/admin/index.html", "/ansys/nexus/admin"])
def test_the_dashboard_page_is_for_administrators_only(gw, path):
    g = gw(admin_group="admins")
    shown = 302 if path.endswith("admin") else 200  # the directory's redirect to admin/
    assert status_of(g, path, user="bob") == 403
    assert status_of(g, path, forwarded=REMOTE) == 403
    assert status_of(g, path, user="carol") == shown
    assert status_of(g, path) == shown, "the operator, local, without a security token"
    assert status_of(gw(), "/ansys/nexus/sessions/", user="bob") == 200, "the portal is for everyone"


def test_users_live_views_never_crowd_out_an_administrators(gw, monkeypatch):
    monkeypatch.setattr("nexusws.portal.MAX_WATCHERS", 2)
    g = gw()
    opened = [g.send("/v1/sessions", forwarded=f"203.0.113.{i}", headers=STREAM) for i in range(2)]
    _, refused = g.send("/v1/sessions", forwarded="203.0.113.9", headers=STREAM)
    assert b" 503 " in refused.value().split(b"\r\n", 1)[0]
    opened.append(g.send("/v1/admin", headers=STREAM))
    assert b" 200 " in opened[-1][1].value().split(b"\r\n", 1)[0]
    for protocol, _ in opened:
        protocol.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize("path, framed", [
    ("/ansys/nexus/", True), ("/ansys/nexus", True), ("/ansys/nexus/sessions/", True),
    ("/ansys/nexus/admin/", True), ("/ansys/nexus/test/viewer_test_vnc.html", True),
    ("/ansys/nexus/novnc/vnc_envision.html", False),  # a Nexus page of another origin may embed the viewer
])
def test_only_same_origin_pages_may_frame_the_portal_the_dashboard_and_the_test_page(gw, path, framed):
    head = g_head(gw(), path)
    assert (b"x-frame-options: sameorigin" in head.lower()) == framed, head
    assert (b"content-security-policy: frame-ancestors 'self'" in head.lower()) == framed, head


def g_head(g, path):
    """The head of a HEAD of C{path}."""
    return g.send(path, method=b"HEAD")[1].value().split(b"\r\n\r\n", 1)[0]


def test_an_administrators_live_view_ends_when_they_no_longer_are_one(gw, tmp_path):
    g = gw(admin_group="admins")
    protocol, transport = g.send("/v1/admin", user="carol", headers=STREAM)
    assert len(snapshots(transport)) == 1
    (tmp_path / "groups.json").write_text(json.dumps({"admins": []}))
    for _ in range(3):
        g.clock.advance(1)
    assert g.api.watchers.streams == set() and transport.value().endswith(b"0\r\n\r\n"), "ended"
    assert g.get("/v1/admin", user="carol").status == 403


def test_a_session_that_is_ending_is_not_extended(gw):
    g = gw(registry_options={"limits": {"max_duration": 600}})
    token = reserve_local(g)
    g.registry.activate(token, attachment=Attached())
    g.services[0].stopping = defer.Deferred()  # its stop takes a while
    g.send(f"/v1/admin_end/{tag(token)[1:]}")  # answered once it has stopped
    assert g.registry.get(token).state == "stopping"
    assert g.get(f"/v1/admin_extend/{tag(token)[1:]}?seconds=30").status == 409
    g.services[0].stopping.callback(None)
