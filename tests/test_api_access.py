"""Access control of the /v1 API in memory: users from the header of a trusted proxy
or the C{user} parameter of security-token calls, service groups and
C{--require_group}, tokens bound to their user, and state-changing calls refused to
remote clients without the security token. A request that came through a proxy
(the user header, X-Forwarded-For) is never a local caller's, even from a
loopback or UNIX-socket peer forwarding 127.0.0.1: its users reserve under
C{--allow_remote_api}, see only their own tokens and never stop the gateway.

Raw HTTP goes through twisted.web's parser and the nexusws Site, on a
StringTransport whose peer each test chooses; the registry runs on a Clock.
"""


import pytest

from nexusws.api import CALLS, Who
from nexusws.auth import TrustedProxies
from support.access_api import LOCAL, REMOTE, SECRET, UNIX, Gateway


@pytest.fixture
def gw(tmp_path):
    return lambda **kwargs: Gateway(tmp_path, **kwargs)


def warned(events):
    return [e["log_format"].format(**e) for e in events
            if e.get("log_namespace", "").startswith("nexusws") and e["log_level"].name == "warn"]


# --- who the caller is -----------------------------------------------------------------


def test_reserve_records_the_user_named_by_a_trusted_proxy(gw):
    g = gw(allow_remote_api=True)
    status, body = g.reserve(user="alice")
    assert status == 200 and g.registry.get(body["token"]).user == "alice"


def test_the_user_header_from_an_untrusted_peer_is_ignored_and_logged(gw, events):
    g = gw(trusted=TrustedProxies(["10.0.0.1"]), allow_remote_api=True)
    status, body = g.reserve(user="alice")
    assert status == 200 and g.registry.get(body["token"]).user is None
    assert any("ignored x-remote-user: 'alice' from 127.0.0.1" in line for line in warned(events))


def test_with_the_security_token_the_user_parameter_names_the_user(gw):
    g = gw(security_token=SECRET)
    status, body = g.reserve("render", query="?user=alice", headers=[("Authorization", f"Bearer {SECRET}")])
    assert status == 200 and g.registry.get(body["token"]).user == "alice"
    status, body = g.reserve(query=f"?security_token={SECRET}&user=bob", user="alice")
    assert g.registry.get(body["token"]).user == "bob", "the parameter wins over the header"


def test_without_the_security_token_the_user_parameter_is_ignored_and_logged(gw, events):
    g = gw()
    status, body = g.reserve("render", query="?user=alice")
    assert status == 403 and "the user is unknown" in body["error"]
    assert any("ignored the user parameter from 127.0.0.1" in line for line in warned(events))


@pytest.mark.parametrize("query, problem", [
    ("?user=", "user parameter: empty"),
    ("?user=a%07b", "user parameter: it holds control characters"),
    ("?user=%FF", "user parameter: not UTF-8"),
    ("?user=a&user=b", "user parameter: given more than once"),
])
def test_an_unusable_user_parameter_with_the_security_token_is_400_and_reserves_nothing(gw, query, problem):
    g = gw(security_token=SECRET)
    status, body = g.reserve(query=f"{query}&security_token={SECRET}")
    assert (status, body) == (400, {"error": problem})
    assert g.registry.status()[0]["instances"] == []


# --- groups -------------------------------------------------------------------------------


def test_a_group_service_is_reserved_by_its_members_only_403_with_the_reason_otherwise(gw, events):
    g = gw(allow_remote_api=True)
    assert g.reserve("render", user="alice")[0] == 200
    assert g.reserve("render", user="bob") == (
        403, {"error": "user 'bob' is not a member of group 'ClusterRendering'"})
    status, body = g.reserve("render")
    assert status == 403 and body["error"] == (
        "service 'render' is for members of group 'ClusterRendering', and the user is unknown")
    assert [i["user"] for i in g.registry.status()[1]["instances"]] == ["alice"]
    assert "/v1/reserve refused: 127.0.0.1 as 'bob': user 'bob' is not a member of group " \
           "'ClusterRendering'" in warned(events)


def test_require_group_applies_to_every_reservation(gw):
    g = gw(require_group="RemoteSession", allow_remote_api=True)
    assert g.reserve(user="bob")[0] == 200
    assert g.reserve(user="carol")[0] == 403
    assert g.reserve()[0] == 403
    assert g.reserve("render", user="bob")[0] == 403, "the service's group is needed as well"
    assert g.reserve("render", user="alice")[0] == 200


def test_an_unknown_service_is_still_404_not_403(gw):
    assert gw(require_group="RemoteSession").reserve("nope")[0] == 404


# --- remote clients ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [{"peer": REMOTE}, {"forwarded": REMOTE}])
def test_without_the_security_token_remote_clients_may_not_reserve_release_or_stop(gw, how):
    """A remote peer, or a remote client forwarded by the (trusted, local) proxy."""
    g = gw()
    token = g.reserve()[1]["token"]
    for target in ("/v1/reserve/open", f"/v1/release/{token}", "/v1/stop"):
        r = g.get(target, **how)
        assert r.status == 403 and "needs the security token" in r.json()["error"], target
    assert g.registry.get(token) is not None and g.stops == []
    assert len(g.registry.status()[0]["instances"]) == 1


def test_with_the_security_token_remote_clients_may_change_things(gw):
    g = gw(security_token=SECRET)
    assert g.reserve(peer=REMOTE, query=f"?security_token={SECRET}")[0] == 200
    assert g.get(f"/v1/stop?security_token={SECRET}", peer=REMOTE).status == 200
    assert g.stops == [1]


def test_allow_remote_api_opens_reserve_and_release_to_remote_clients_but_not_stop(gw):
    g = gw(allow_remote_api=True)
    status, body = g.reserve("render", forwarded=REMOTE, user="alice")
    assert status == 200
    assert g.get(f"/v1/release/{body['token']}", forwarded=REMOTE, user="alice").status == 200
    assert g.get("/v1/stop", forwarded=REMOTE).status == 403 and g.stops == []


@pytest.mark.parametrize("allow_remote_api", [False, True], ids=["plain", "allow_remote_api"])
@pytest.mark.parametrize("call", CALLS.values(), ids=list(CALLS))
def test_who_may_make_a_call_is_what_the_table_declares(gw, call, allow_remote_api):
    g = gw(allow_remote_api=allow_remote_api)
    target = "/v1/" + "/".join([call.name, *["open"] * call.arity])
    refused = call.who in (Who.LOCAL, Who.ADMIN) or (call.who is Who.REMOTE_API and not allow_remote_api)
    r = g.get(target, peer=REMOTE)
    assert (r.status == 403) == refused, r.raw
    if refused and call.who is Who.ADMIN:
        assert r.json()["error"] == f"/v1/{call.name} is for administrators (--admin_group)"
    elif refused:
        more = " (or the server's --allow_remote_api)" if call.who is Who.REMOTE_API else ""
        assert r.json()["error"] == f"/v1/{call.name} from another host or through a proxy needs the security token{more}"
    assert g.get(target).status != 403, "a local client may make every call"


def test_status_shows_remote_clients_only_the_tokens_reserved_as_them(gw):
    g = gw(allow_remote_api=True)
    mine = g.reserve(forwarded=REMOTE, user="alice")[1]["token"]
    g.reserve(user="bob")
    g.reserve()

    def tokens(**how):
        return [i["token"] for i in g.get("/v1/status", **how).json()[0]["instances"]]

    assert tokens(forwarded=REMOTE, user="alice") == [mine, "***", "***"]
    assert tokens(peer=REMOTE) == ["***", "***", "***"]
    assert "***" not in tokens(), "a direct local caller sees every token"


# --- nobody behind a proxy is a local caller ---------------------------------------------------


#: How a request comes through a proxy on this host, for a client on this host too:
#: nginx on the shipped UNIX socket or on loopback, naming the user, forwarding 127.0.0.1.
THROUGH_A_PROXY = [
    {"peer": UNIX, "user": "bob", "forwarded": LOCAL},
    {"peer": UNIX, "forwarded": LOCAL},
    {"peer": UNIX, "user": "bob"},
    {"peer": LOCAL, "user": "bob", "forwarded": LOCAL},
    {"peer": LOCAL, "forwarded": "127.0.0.2"},
    {"peer": LOCAL, "user": "bob"},
]


@pytest.mark.parametrize("how", THROUGH_A_PROXY)
def test_a_client_behind_a_proxy_sees_only_its_own_tokens_whatever_address_is_forwarded(gw, how):
    g = gw(allow_remote_api=True)
    alices = g.reserve(user="alice", forwarded=REMOTE)[1]["token"]
    bobs = g.reserve(user="bob", forwarded=REMOTE)[1]["token"]
    tokens = [i["token"] for i in g.get("/v1/status", **how).json()[0]["instances"]]
    assert alices not in tokens
    assert tokens == ["***", bobs if how.get("user") == "bob" else "***"]


@pytest.mark.parametrize("how", THROUGH_A_PROXY)
def test_a_client_behind_a_proxy_may_not_stop_the_gateway_nor_reserve_without_allow_remote_api(gw, how):
    g = gw()
    r = g.get("/v1/stop", **how)
    assert r.status == 403 and "needs the security token" in r.json()["error"]
    assert g.reserve(**how)[0] == 403 and g.stops == []
    assert g.get("/v1/stop", peer=UNIX).status == 200, "a direct caller on the socket may"
    assert g.stops == [1]


def test_a_direct_caller_on_a_unix_socket_or_loopback_is_the_operator(gw):
    g = gw()
    token = g.reserve(peer=UNIX)[1]["token"]
    assert g.reserve(peer=LOCAL)[0] == 200
    assert token in [i["token"] for i in g.get("/v1/status", peer=UNIX).json()[0]["instances"]]
    assert g.get(f"/v1/release/{token}", peer=LOCAL).status == 200


# --- tokens bound to their user -------------------------------------------------------------------


def test_a_token_is_released_only_by_its_user_or_with_the_security_token(gw):
    g = gw(allow_remote_api=True)
    token = g.reserve(user="alice")[1]["token"]
    assert g.get(f"/v1/release/{token}", user="bob").status == 403
    assert g.get(f"/v1/release/{token}").status == 403
    assert g.registry.get(token) is not None
    assert g.get(f"/v1/release/{token}", user="alice").status == 200
    g = gw(security_token=SECRET)
    token = g.reserve(query=f"?security_token={SECRET}&user=alice")[1]["token"]
    assert g.get(f"/v1/release/{token}?security_token={SECRET}&user=bob").status == 403
    assert g.get(f"/v1/release/{token}?security_token={SECRET}").status == 200
