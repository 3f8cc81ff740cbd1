"""Access control end to end: a real gateway on 127.0.0.1 port 0, real HTTP and
WebSocket clients sending the user header as a front proxy on loopback would,
real echo sessions, and a groups file changed while the gateway runs. Such a
proxy's users are never local callers: they reserve under --allow_remote_api.

The service config has an open service and one whose options carry
C{"group": "ClusterRendering"}; the echo script is tests/sessions/helper_echo.py.
"""

import json
import os
import subprocess
import urllib.parse

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import BIN
from support.sessions import (
    SCRIPTS,
    assert_gone,
    echo,
    gateway_args,
    get,
    instances,
    marked,
    run,
    session_url,
)
from support.waiting import poke_until_logged

GROUPS = {"ClusterRendering": ["alice"], "RemoteSession": ["alice", "bob"]}


@pytest.fixture
def config(tmp_path):
    """The service config and the groups file: (config path, groups path)."""
    script = str(SCRIPTS / "helper_echo.py")
    path = tmp_path / "services.json"
    path.write_text(json.dumps({
        "open": {"script": script, "count": 2, "options": {}},
        "render": {"script": script, "count": 2, "options": {"group": "ClusterRendering"}},
    }))
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps(GROUPS))
    return path, groups


@pytest.fixture
def start(gateway, tmp_path, config):
    """Start a gateway with the config and groups file, plus C{extra} options."""
    path, groups = config

    def started(*extra):
        return gateway(gateway_args(tmp_path, "--groups_file", str(groups), *extra, config=path),
                       http=True)

    return started


def reserve(gw, service, user=None, marker=None, headers=None, query=None):
    """GET /v1/reserve/SERVICE?QUERY as C{user} (the proxy's header): (status, body)."""
    headers, query = dict(headers or {}), dict(query or {})
    if user is not None:
        headers["X-Remote-User"] = user
    if marker is not None:
        query["marker"] = marker
    url = f"{gw.http_url}/v1/reserve/{service}?{urllib.parse.urlencode(query)}"
    return get(url, headers)


def open_as(url, user=None):
    headers = {"X-Remote-User": user} if user is not None else {}
    return connect(url, subprotocols=["binary"], additional_headers=headers, open_timeout=15,
                   close_timeout=5, max_size=None)


async def refused_as(url, user=None):
    """The HTTP status refusing the handshake to C{url} as C{user} (fails if it opens)."""
    try:
        async with open_as(url, user):
            pass
    except websockets.InvalidStatus as e:
        return e.response.status_code
    raise AssertionError(f"{url} opened for user {user!r}")


def test_a_group_service_is_reserved_and_used_only_by_its_member_and_its_token_only_by_them(
        start, marker):
    """alice (a member, named by the trusted loopback proxy) reserves the group service;
    bob and the anonymous are refused 403, by the API and, with alice's token, at the
    WebSocket, launching nothing; alice's WebSocket tunnels to her session."""
    gw = start("--allow_remote_api")
    assert reserve(gw, "render", user="bob")[0] == 403
    assert reserve(gw, "render")[0] == 403
    status, body = reserve(gw, "render", user="alice", marker=marker)
    assert status == 200, body
    url = session_url(gw, body["token"])

    async def session():
        assert await refused_as(url, "bob") == 403
        assert await refused_as(url) == 403
        assert not marked(marker), "a refused WebSocket launched the session"
        assert [(i["user"], i["state"]) for i in instances(gw, "render")] == [("alice", "reserved")]
        async with open_as(url, "alice") as ws:
            await echo(ws)

    run(session())
    gw.wait_for(r"session WebSocket refused: 127\.0\.0\.1 as 'bob', for render#0: this token "
                r"was reserved by another user \('alice'\)")
    assert body["token"] not in gw.log
    assert_gone(marker)


def test_the_user_header_from_a_peer_that_is_not_a_trusted_proxy_is_ignored(start):
    """With --trusted_proxy 10.0.0.1, loopback is no proxy: its header names nobody."""
    gw = start("--trusted_proxy", "10.0.0.1", "--allow_remote_api")
    status, body = reserve(gw, "render", user="alice")
    assert status == 403 and "the user is unknown" in body["error"]
    gw.wait_for(r"ignored x-remote-user: 'alice' from 127\.0\.0\.1: not a trusted proxy "
                r"\(--trusted_proxy 10\.0\.0\.1\)")
    status, body = reserve(gw, "open", user="alice")
    assert status == 200 and instances(gw, "open")[0]["user"] is None


def test_require_group_refuses_reservations_and_a_websocket_of_a_user_dropped_from_the_group(
        start, config, marker):
    """--require_group RemoteSession: carol may not reserve; bob may, but once the
    groups file (re-read while running) drops him, his WebSocket is refused 403."""
    _, groups = config
    gw = start("--require_group", "RemoteSession", "--allow_remote_api")
    assert reserve(gw, "open", user="carol")[0] == 403
    assert reserve(gw, "open")[0] == 403
    status, body = reserve(gw, "open", user="bob", marker=marker)
    assert status == 200, body
    groups.write_text(json.dumps({"RemoteSession": ["alice"]}))
    # The gateway looks at the file when it is used, once a second at most (a real delay
    # is inherent): ask what carol (a member of neither version) may do until the new
    # version is read. Bob's WebSocket must not be the probe: the old one lets him in.
    poke_until_logged(gw, lambda: reserve(gw, "open", user="carol")[0] == 403,
                      r"groups\.json re-read: 1 group")
    assert run(refused_as(session_url(gw, body["token"]), "bob")) == 403
    gw.wait_for(r"for open#0: user 'bob' is not a member of group 'RemoteSession'")
    assert not marked(marker)


def test_a_bad_groups_file_while_running_keeps_the_last_good_version(start, config):
    _, groups = config
    gw = start("--allow_remote_api")
    groups.write_text('{"ClusterRendering": ["alice"')
    # Looked at when used, once a second at most: ask what bob (a member of neither
    # version) may do until the gateway has seen the bad version.
    poke_until_logged(gw, lambda: reserve(gw, "render", user="bob")[0] == 403,
                      r"groups\.json: invalid JSON at line 1, column \d+: .*; keeping the last good version")
    assert reserve(gw, "render", user="alice")[0] == 200


def test_a_remote_client_forwarded_by_the_proxy_may_not_reserve_without_the_security_token(start):
    gw = start()
    forwarded = {"X-Forwarded-For": "203.0.113.5"}
    status, body = reserve(gw, "render", user="alice", headers=forwarded)
    assert status == 403 and body["error"] == (
        "/v1/reserve from another host or through a proxy needs the security token (or the server's --allow_remote_api)")
    gw.wait_for(r"/v1/reserve refused: 203\.0\.113\.5 as 'alice': a client on another host")
    assert instances(gw, "render") == []


def test_allow_remote_api_lets_a_forwarded_remote_member_reserve_but_not_stop(start):
    gw = start("--allow_remote_api")
    forwarded = {"X-Forwarded-For": "203.0.113.5"}
    assert reserve(gw, "render", user="alice", headers=forwarded)[0] == 200
    assert reserve(gw, "render", user="bob", headers=forwarded)[0] == 403, "groups still apply"
    assert get(f"{gw.http_url}/v1/stop", forwarded)[0] == 403


def test_with_the_security_token_a_remote_call_names_its_user_with_the_user_parameter(start):
    gw = start("--security_token", "s3cret")
    status, body = reserve(gw, "render", headers={"X-Forwarded-For": "203.0.113.5",
                                                  "Authorization": "Bearer s3cret"}, user="bob",
                           query={"user": "alice"})
    assert status == 200, body
    assert instances(gw, "render", security_token="s3cret")[0]["user"] == "alice"


def test_start_up_warns_when_the_api_listens_on_every_interface_without_a_security_token(
        gateway, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    gw = gateway(["--http_directory", str(www), "--http_listen", "tcp:0",
                  "--ws_listen", "tcp:0:interface=127.0.0.1"], http=True)
    gw.wait_for(r"the /v1 API on --http_listen tcp:0 is reachable from other hosts and there "
                r"is no --security_token")


def test_an_invalid_groups_file_stops_start_up_with_one_line(tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text('{"g": "alice"}')
    done = subprocess.run([str(BIN / "nexus-websocketserver"), "--groups_file", str(groups), "0"],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k != "WEBSOCKETSERVER_SECURITY_TOKEN"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"--groups_file {groups}: group 'g': must be a list of user names, not \"alice\"")
