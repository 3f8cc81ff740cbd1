"""nexusws behind a real nginx, configured by the shipped config/nginx/ files.

The test's nginx.conf (see L{support.nginx_front}) has its own upstreams (the gateway's
real ports) and a plain loopback server that includes config/nginx/locations.conf
unmodified; the complete example site config/nginx/nexusws.conf is run too, with
only its ports and certificate paths changed. Clients are real: Python
C{websockets}, C{http.client} and curl.

The gateway listens as the shipped units make it (config/systemd): on two UNIX
sockets, nginx's upstreams (C{server unix:PATH;}), and trusts nginx's user
header from UNIX-socket peers only (C{--user_header X-Remote-User
--trusted_proxy unix}). The test's server block adds, for the test only,
C{set_real_ip_from 127.0.0.1; real_ip_header X-Test-Client;}: a request
carrying C{X-Test-Client: 203.0.113.9} stands for a client at that address, as
a remote browser would be; without it a client is what nginx sees, 127.0.0.1: a
user on the gateway's own host, who is never a local caller through nginx.
"""

import asyncio
import http.client
import http.server
import json
import re
import ssl
import subprocess
import threading

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import have, require
from support.nginx_front import (
    CONFIG_DIR,
    FIXED_SCRIPT,
    Greeters,
    Nginx,
    adapt_site,
    basic,
    get_through,
    nginx_binary,
    short_tempdir,
    unix_get,
    unix_listening,
)
from support.waiting import poke_until_logged

LOOPBACK = "tcp:0:interface=127.0.0.1"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
GROUPS = {"ClusterRendering": ["alice"]}
REMOTE = "203.0.113.9"
#: The user header of locations.conf, and nexusws's default --user_header.
USER_HEADER = "X-Remote-User"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Front:
    """nginx on 127.0.0.1:{port} in front of a gateway C{gw}: clients for both protocols."""

    def __init__(self, nginx, port, gw, groups_path):
        self.nginx, self.port, self.gw, self.groups_path = nginx, port, gw, groups_path

    def get(self, target, user=None, password=None, headers=()):
        """GET through nginx, as C{user} (Basic); C{headers} may repeat names.
        Returns (status, headers dict with lower-case names, body bytes)."""
        return get_through(self.port, target, None if user is None else basic(user, password or PASSWORDS[user]),
                           headers)

    def api(self, target, user, headers=()):
        status, _, body = self.get(target, user, headers=headers)
        return status, json.loads(body)

    def reserve(self, service, user, headers=()):
        status, body = self.api(f"/v1/reserve/{service}", user, headers)
        assert status == 200, body
        return body["token"]

    def instances(self, service, user="alice", headers=()):
        """The instances of C{service} as C{user} sees them through nginx (tokens: their own only)."""
        status, listing = self.api("/v1/status", user, headers)
        assert status == 200
        return {s["name"]: s["instances"] for s in listing}[service]

    def all_instances(self, service):
        """The instances of C{service} as the operator sees them: on the gateway's own
        socket, directly (every token)."""
        status, body = unix_get(self.gw.http_socket, "/v1/status")
        assert status == 200
        return {s["name"]: s["instances"] for s in json.loads(body)}[service]

    def ws(self, target, user=None, headers=(), scheme="ws", port=None, **kw):
        """A websockets connect() to C{target} through nginx, as C{user}."""
        extra = list(headers)
        if user is not None:
            extra.append(("Authorization", basic(user, PASSWORDS[user])))
        url = f"{scheme}://127.0.0.1:{port or self.port}{target}"
        return connect(url, subprotocols=["binary"], additional_headers=extra, open_timeout=10, **kw)

    def refused(self, target, user=None, headers=(), **kw):
        """The HTTP status a WebSocket handshake to C{target} is refused with, and its reason
        phrase and body as text (nexusws gives the reason in the status line)."""
        async def attempt():
            with pytest.raises(websockets.InvalidStatus) as info:
                async with self.ws(target, user, headers, **kw):
                    pass
            response = info.value.response
            return response.status_code, f"{response.reason_phrase} {response.body or b''!r}"

        return run(attempt())

    def greeting(self, target, user, headers=(), **kw):
        """Open a WebSocket, read the session's greeting, check an echo; return the greeting."""
        async def session():
            async with self.ws(target, user, headers, **kw) as ws:
                greeting = await asyncio.wait_for(ws.recv(), 10)
                await ws.send(b"ping through nginx")
                assert await asyncio.wait_for(ws.recv(), 10) == b"ping through nginx"
                return greeting.decode().strip()

        return run(session())


@pytest.fixture
def greeters():
    g = Greeters()
    yield g
    g.close()


@pytest.fixture
def sockets():
    """A short directory for the gateway's UNIX sockets."""
    with short_tempdir() as path:
        yield path


@pytest.fixture
def make_front(gateway, greeters, tmp_path, sockets):
    """C{make_front(gateway_args=(), upstreams="", locations="")}: a gateway with the
    sessions "open" (2 instances) and "render" (1, group ClusterRendering), each a
    greeting service, on UNIX sockets (C{gw.http_socket}, C{gw.ws_socket}), and nginx in
    front of it. C{upstreams} and C{locations} are added to the test's http and server blocks."""
    require(nginx_binary() is not None, "nginx (apt-get install nginx)")
    nginxes = []

    def start(gateway_args=(), upstreams="", locations=""):
        www = tmp_path / "www"
        (www / "sub").mkdir(parents=True)
        (www / "index.html").write_text("hello from the http_directory\n")
        (www / "sub" / "a.txt").write_text("a\n")
        (tmp_path / "fixed_ports.py").write_text(FIXED_SCRIPT)
        services = {
            "open": {"script": "fixed_ports.py", "count": 2,
                     "options": {"ports": [greeters.add("open 0"), greeters.add("open 1")]}},
            "render": {"script": "fixed_ports.py", "count": 1,
                       "options": {"ports": [greeters.add("render 0")], "group": "ClusterRendering"}},
        }
        (tmp_path / "services.json").write_text(json.dumps(services))
        groups = tmp_path / "groups.json"
        groups.write_text(json.dumps(GROUPS))
        http_socket, ws_socket = sockets / f"http{len(nginxes)}.sock", sockets / f"ws{len(nginxes)}.sock"
        gw = gateway(["--http_directory", str(www),
                      "--http_listen", f"unix:{http_socket}:mode=600",
                      "--ws_listen", f"unix:{ws_socket}:mode=600",
                      "--state_file", str(tmp_path / "state.json"),
                      "--remote_session_config", str(tmp_path / "services.json"),
                      "--groups_file", str(groups),
                      "--user_header", USER_HEADER, "--trusted_proxy", "unix",
                      *gateway_args], wait=False)
        unix_listening(gw, "--ws_listen", ws_socket)
        unix_listening(gw, "--http_listen", http_socket)
        gw.http_socket, gw.ws_socket = http_socket, ws_socket
        nginx = Nginx(tmp_path / f"nginx{len(nginxes)}")
        nginxes.append(nginx)
        port = nginx.listen()
        nginx.users(PASSWORDS)
        nginx.start(
            f"upstream nexusws_http {{ server unix:{http_socket}; }}\n"
            f"upstream nexusws_ws {{ server unix:{ws_socket}; }}\n"
            f"{upstreams}"
            "server {\n"
            f"    listen 127.0.0.1:{port};\n"
            "    server_name localhost;\n"
            "    set_real_ip_from 127.0.0.1;      # the test's stand-in for remote clients\n"
            "    real_ip_header X-Test-Client;\n"
            "    include nexusws/locations.conf;  # the shipped file, verbatim\n"
            f"{locations}"
            "}\n"
        )
        assert 'using inherited sockets from "' in nginx.errors()
        return Front(nginx, port, gw, groups)

    yield start
    for nginx in nginxes:
        nginx.stop()


@pytest.fixture
def front(make_front):
    """The usual deployment: browsers call the API through nginx (--allow_remote_api)."""
    return make_front(["--allow_remote_api"])


def access_lines(gw):
    return [line for line in gw.log.splitlines() if "[nexusws.web#info] http " in line]


# --- authentication --------------------------------------------------------------------------


def test_without_valid_credentials_nginx_answers_401_and_nothing_reaches_nexusws(front):
    for target in ("/", "/index.html", "/ansys/nexus/", "/v1/status", "/v1/reserve/open"):
        status, headers, _ = front.get(target)
        assert status == 401, target
        assert headers["www-authenticate"] == 'Basic realm="Nexus remote sessions"'
    assert front.get("/v1/reserve/open", "alice", password="wrong")[0] == 401
    assert front.get("/v1/reserve/open", "mallory", password="x")[0] == 401
    # A user header alone authenticates nobody.
    assert front.get("/v1/reserve/open", headers=[(USER_HEADER, "alice")])[0] == 401
    for target in ("/websockify", "/websockify?token=x", "/ws/a?token=x"):
        assert front.refused(target)[0] == 401
        assert front.refused(target, headers=[(USER_HEADER, "alice")])[0] == 401
    # The gateway saw none of it: its first request is the one below.
    assert front.get("/index.html", "alice")[0] == 200
    front.gw.wait_for(r'"GET /index.html HTTP/1.1" 200')
    assert len(access_lines(front.gw)) == 1, front.gw.log
    assert "tunnel" not in front.gw.log and "reserve" not in front.gw.log


def test_files_the_ansys_tree_and_the_api_are_proxied_to_the_http_port(front):
    status, _, body = front.get("/", "alice")
    assert (status, body) == (200, b"hello from the http_directory\n")
    assert front.get("/sub/a.txt", "bob")[2] == b"a\n"
    # nexusws redirects with a relative Location, right behind any front end.
    status, headers, _ = front.get("/sub", "alice")
    assert (status, headers["location"]) == (302, "/sub/")
    status, headers, body = front.get("/ansys/nexus/", "alice")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"nexusws" in body
    status, listing = front.api("/v1/status", "alice")
    assert status == 200 and [s["name"] for s in listing] == ["open", "render"]
    status, _, body = front.get("/nothing-here", "alice")
    assert status == 404 and b"nginx" not in body, "nexusws's own 404, not nginx's"
    front.gw.wait_for(r'"GET /nothing-here HTTP/1.1" 404')
    assert len(access_lines(front.gw)) == 6


# --- the user header -----------------------------------------------------------------------


def test_nginx_names_the_user_and_a_client_cannot_name_another(front):
    alice = front.reserve("open", "alice")
    # bob claims to be alice in every spelling of the header nginx might let through.
    claims = [(USER_HEADER, "alice"), (USER_HEADER.lower(), "alice"), ("X_Remote_User", "alice"),
              ("X-REMOTE-USER", "alice")]
    bobs = front.reserve("open", "bob", headers=claims)
    users = {i["token"]: i["user"] for i in front.all_instances("open")}
    assert users == {alice: "alice", bobs: "bob"}
    status, body = front.api("/v1/reserve/render", "bob", headers=claims)
    assert (status, body) == (403, {"error": "user 'bob' is not a member of group 'ClusterRendering'"})
    # ... nor on the WebSocket: alice's token stays alice's.
    status, body = front.refused(f"/websockify?token={alice}", "bob", headers=claims)
    assert status == 403 and "reserved by another user" in body
    assert front.greeting(f"/websockify?token={alice}", "alice") == "open 0"
    # And without a token nobody gets through (no --client_port: no basic mode).
    assert front.refused("/websockify", "alice")[0] == 404


class Capture(http.server.BaseHTTPRequestHandler):
    """An upstream that records each request's target and headers, and answers 200."""

    requests = None

    def do_GET(self):
        self.requests.append((self.path, [(k.lower(), v) for k, v in self.headers.items()]))
        body = b"captured\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def capture():
    """A recording upstream on 127.0.0.1:0 in a thread: (port, requests)."""
    handler = type("Handler", (Capture,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler.requests
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_shipped_proxy_settings_send_exactly_nginx_s_view_of_the_client(make_front, capture):
    port, requests = capture
    front = make_front(upstreams=f"upstream capture {{ server 127.0.0.1:{port}; }}\n",
                       locations="    location /capture-http/ {\n"
                                 "        proxy_pass http://capture;\n"
                                 "        include nexusws/proxy-http.conf;\n"
                                 "    }\n"
                                 "    location /capture-ws/ {\n"
                                 "        proxy_pass http://capture;\n"
                                 "        include nexusws/proxy-ws.conf;\n"
                                 "    }\n")
    forged = [(USER_HEADER, "alice"), ("x-remote-user", "alice"), ("X_Remote_User", "alice"),
              ("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-Proto", "https"), ("X-Test-Client", REMOTE)]
    assert front.get("/capture-http/a?b=c", "bob", headers=forged)[0] == 200
    assert front.refused("/capture-ws/a?token=t", "bob", headers=forged)[0] == 200
    [(http_target, http_headers), (ws_target, ws_headers)] = requests
    assert (http_target, ws_target) == ("/capture-http/a?b=c", "/capture-ws/a?token=t")
    for headers in (http_headers, ws_headers):
        def values(name, headers=headers):
            return [v for k, v in headers if k == name]
        assert values("x-remote-user") == ["bob"]
        assert values("x-forwarded-for") == [REMOTE]
        assert values("x-forwarded-proto") == ["http"]
        assert values("host") == ["127.0.0.1"]
        assert values("authorization") == [] and values("x_remote_user") == []
    assert sorted((k, v) for k, v in ws_headers if k in ("upgrade", "connection")) == [
        ("connection", "upgrade"), ("upgrade", "websocket")]
    assert "upgrade" not in dict(http_headers)


# --- a group-restricted service ------------------------------------------------------------


def test_a_group_service_is_reserved_only_by_its_members_through_nginx(front):
    status, body = front.api("/v1/reserve/render", "bob")
    assert (status, body) == (403, {"error": "user 'bob' is not a member of group 'ClusterRendering'"})
    front.gw.wait_for(r"/v1/reserve refused: .* as 'bob': user 'bob' is not a member of group "
                      r"'ClusterRendering'")
    token = front.reserve("render", "alice")
    [instance] = front.instances("render")
    assert (instance["token"], instance["user"], instance["state"]) == (token, "alice", "reserved")


def test_a_group_session_websocket_opens_for_its_member_only(front):
    token = front.reserve("render", "alice")
    status, body = front.refused(f"/websockify?token={token}", "bob")
    assert status == 403 and "this token was reserved by another user" in body
    front.gw.wait_for(r"session WebSocket refused: .* as 'bob', for render#0: this token was "
                      r"reserved by another user \('alice'\)")
    assert front.instances("render")[0]["state"] == "reserved", "nothing was launched for bob"
    assert front.greeting(f"/ws/desktop?token={token}", "alice") == "render 0"
    front.gw.wait_for(r"tunnel open: .*/ws/desktop\?token=\*\*\* -> ")


def test_a_member_removed_from_the_group_is_refused_at_the_websocket(front):
    token = front.reserve("render", "alice")
    front.groups_path.write_text(json.dumps({"ClusterRendering": []}))
    # The gateway looks at the groups file when it is used, once a second at most (a real
    # delay is inherent): ask what bob (a member of neither version) may reserve until the
    # new version is read. Alice's WebSocket must not be the probe: the old one lets her in.
    poke_until_logged(front.gw, lambda: front.api("/v1/reserve/render", "bob")[0] == 403,
                      r"groups_file \S+ re-read: 1 group")
    status, body = front.refused(f"/websockify?token={token}", "alice")
    assert status == 403 and "user 'alice' is not a member of group 'ClusterRendering'" in body
    assert front.api("/v1/reserve/render", "alice")[0] == 403


# --- the path routes, the token decides ----------------------------------------------------


def test_the_path_only_routes_to_the_ws_port_and_the_token_alone_picks_the_session(front):
    first, second = front.reserve("open", "alice"), front.reserve("open", "alice")
    # Paths not routed to the ws port reach the HTTP port, which has no WebSockets:
    # nothing is launched, the reservations stay as they were.
    for target in ("/websockify/x", "/wsx", "/novnc/websockify"):
        status, body = front.refused(f"{target}?token={first}", "alice")
        assert status == 404 and "File not found." in body, target
    assert front.refused(f"/?token={first}", "alice")[0] == 200, "the index page, no WebSocket"
    front.gw.wait_for(r'http \S+ "GET /\?token=\*\*\* HTTP/1.1" 200')
    assert [i["state"] for i in front.instances("open")] == ["reserved", "reserved"]

    async def both():
        async with front.ws(f"/ws/any/path/at/all?token={second}", "alice") as a, \
                front.ws(f"/websockify?token={first}", "alice") as b:
            greetings = [(await asyncio.wait_for(ws.recv(), 10)).decode().strip() for ws in (a, b)]
            # While open, the token is in use whatever path presents it.
            with pytest.raises(websockets.InvalidStatus) as info:
                async with front.ws(f"/ws/elsewhere?token={first}", "alice"):
                    pass
            return greetings, info.value.response.status_code

    assert run(both()) == (["open 1", "open 0"], 409)
    front.gw.wait_for(r"tunnel open: .*/ws/any/path/at/all\?token=\*\*\* -> ")
    assert len(re.findall(r"tunnel open: ", front.gw.log)) == 2


def test_two_path_prefixes_lead_to_two_gateways(make_front, gateway, greeters, tmp_path):
    # A second gateway (basic mode), under its own path prefix with the shipped
    # WebSocket proxy settings.
    cluster = gateway(["--ws_listen", LOOPBACK, "--client_port", str(greeters.add("cluster")),
                       "--state_file", str(tmp_path / "cluster.json")])
    front = make_front(["--allow_remote_api"],
                       upstreams=f"upstream cluster_ws {{ server 127.0.0.1:{cluster.ws_port}; }}\n",
                       locations="    location /cluster/ {\n"
                                 "        proxy_pass http://cluster_ws;\n"
                                 "        include nexusws/proxy-ws.conf;\n"
                                 "    }\n")
    token = front.reserve("open", "alice")
    assert front.greeting(f"/ws/x?token={token}", "alice") == "open 0"
    # The first gateway's token means nothing to the other one, which tunnels anyone.
    assert front.greeting(f"/cluster/desktop?token={token}", "bob") == "cluster"
    cluster.wait_for(r"tunnel open: 127\.0\.0\.1:\d+ /cluster/desktop\?token=\*\*\* -> localhost:")
    assert "/cluster/" not in front.gw.log and "/ws/x" not in cluster.log
    assert front.refused("/cluster/desktop")[0] == 401


# --- what remote clients may do ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["/v1/stop", "/v1/stop/", "/v1//stop", "/v1/%73top", "/v1/./stop",
                                    "/v1/stop?security_token=x"])
def test_nginx_never_forwards_v1_stop(front, target):
    status, _, body = front.get(target, "alice")
    assert status == 403 and b"nginx" in body
    assert front.get("/index.html", "alice")[0] == 200
    front.gw.wait_for(r'"GET /index.html HTTP/1.1" 200')
    assert len(access_lines(front.gw)) == 1 and front.gw.proc.poll() is None


def test_a_remote_client_is_remote_whatever_x_forwarded_for_it_sends(front):
    remote = [("X-Test-Client", REMOTE)]
    alice = front.reserve("open", "alice", headers=remote)  # --allow_remote_api
    bobs = front.reserve("open", "bob")
    # bob, remote, claims to be a local client: nginx replaces X-Forwarded-For.
    spoofed = [*remote, ("X-Forwarded-For", "127.0.0.1")]
    assert [i["token"] for i in front.instances("open", "bob", headers=spoofed)] == ["***", bobs], \
        "a remote client sees only its own tokens"
    assert alice in [i["token"] for i in front.instances("open", "alice", headers=remote)]
    assert front.greeting(f"/websockify?token={alice}", "alice", headers=remote) == "open 0"


#: A location the shipped files do not have: everything, /v1/stop included, to the
#: HTTP listener with the shipped proxy settings, to show what nexusws itself decides.
UNGUARDED = ("    location /unguarded/ {\n"
             "        proxy_pass http://nexusws_http/;\n"
             "        include nexusws/proxy-http.conf;\n"
             "    }\n")


def test_a_user_on_the_gateways_own_host_is_no_local_caller_through_nginx(make_front):
    """nginx forwards a client on this host as X-Forwarded-For: 127.0.0.1: still one of
    nginx's users, who sees only their own tokens and may not stop the gateway, even
    where nginx would let the call through (a location without the /v1/stop rule)."""
    front = make_front(["--allow_remote_api"], locations=UNGUARDED)
    alice = front.reserve("open", "alice", headers=[("X-Test-Client", REMOTE)])
    bobs = front.reserve("open", "bob")
    forged = [(USER_HEADER, "alice"), ("X-Forwarded-For", "127.0.0.1")]
    for prefix in ("", "/unguarded"):
        status, listing = front.api(f"{prefix}/v1/status", "bob", headers=forged)
        assert status == 200
        tokens = [i["token"] for s in listing for i in s["instances"]]
        assert sorted(tokens) == sorted(["***", bobs]) and alice not in tokens, prefix
    assert front.get("/v1/stop", "bob", headers=forged)[0] == 403  # nginx's own refusal
    status, body = front.api("/unguarded/v1/stop", "bob", headers=forged)
    assert status == 403 and "needs the security token" in body["error"]
    status, body = front.api(f"/unguarded/v1/release/{alice}", "bob", headers=forged)
    assert (status, body) == (403, {"error": "this token was reserved by another user"})
    front.gw.wait_for(r"/v1/stop refused: 127\.0\.0\.1 as 'bob'")
    assert front.gw.proc.poll() is None and alice in [i["token"] for i in front.instances("open", "alice")]
    # On the gateway's own socket (root here; the shipped one is nginx's group's and
    # root's only) a direct caller, with no proxy header, is the operator.
    assert sorted(i["token"] for i in front.all_instances("open")) == sorted([alice, bobs])


def test_without_allow_remote_api_nobody_behind_nginx_changes_anything_without_the_token(make_front):
    """Not a remote client (X-Test-Client), nor one on this host: both came through nginx."""
    front = make_front()
    for headers in ([("X-Test-Client", REMOTE)], []):
        status, body = front.api("/v1/reserve/open", "alice", headers=headers)
        assert status == 403 and "needs the security token" in body["error"]
    assert front.all_instances("open") == []
    # A program on the host, straight to the gateway's socket, is the operator.
    status, body = unix_get(front.gw.http_socket, "/v1/reserve/open")
    assert status == 200 and [i["user"] for i in front.all_instances("open")] == [None]


def test_the_per_address_tunnel_cap_counts_each_client_behind_nginx(make_front):
    """Tunnels through nginx (a UNIX-socket peer) count by the X-Forwarded-For address:
    two clients each get theirs, one client's second is refused 429."""
    front = make_front(["--allow_remote_api", "--max_tunnels_per_address", "1"])
    first, second = front.reserve("open", "alice"), front.reserve("open", "bob")

    async def two_clients():
        async with front.ws(f"/websockify?token={first}", "alice", [("X-Test-Client", "203.0.113.1")]) as a, \
                front.ws(f"/websockify?token={second}", "bob", [("X-Test-Client", "203.0.113.2")]) as b:
            greetings = [(await asyncio.wait_for(ws.recv(), 10)).decode().strip() for ws in (a, b)]
            with pytest.raises(websockets.InvalidStatus) as info:
                async with front.ws(f"/websockify?token={first}", "alice", [("X-Test-Client", "203.0.113.1")]):
                    pass
            return greetings, info.value.response.status_code

    assert run(two_clients()) == (["open 0", "open 1"], 429)
    front.gw.wait_for(r"tunnel refused: .*: 429 too many tunnels from 203\.0\.113\.1 ")


# --- the complete example site --------------------------------------------------------------


def test_the_example_site_terminates_tls_redirects_http_and_proxies_both_listeners(make_front, tmp_path):
    from support.tls import make_cert

    require(have("curl"), "curl")
    cert, key = make_cert(tmp_path)
    site = Nginx(tmp_path / "site")
    try:
        http_port, https_port = site.listen(), site.listen()
        origin = f"https://127.0.0.1:{https_port}"
        front = make_front(["--allow_remote_api", "--allowed_origin", origin])
        site.users(PASSWORDS)
        (site.conf_dir / "site.conf").write_text(
            adapt_site((CONFIG_DIR / "nexusws.conf").read_text(), front.gw.http_socket, front.gw.ws_socket,
                       http_port, https_port, cert, key, site.logs))
        site.start("include site.conf;\n")
        base = f"https://127.0.0.1:{https_port}"

        def curl(*args):
            out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(cert),
                                  "-o", "/dev/null", "-D", "-", *args],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0, out.stderr
            status = int(out.stdout.split()[1])
            return status, {k.strip().lower(): v.strip() for k, _, v in
                            (line.partition(":") for line in out.stdout.splitlines()[1:]) if v}

        status, headers = curl(f"http://127.0.0.1:{http_port}/v1/status?x=1")
        assert (status, headers["location"]) == (301, "https://127.0.0.1/v1/status?x=1")
        status, headers = curl(f"{base}/v1/status")
        assert status == 401 and headers["strict-transport-security"] == "max-age=31536000"
        status, headers = curl("-u", f"alice:{PASSWORDS['alice']}", f"{base}/v1/status")
        assert status == 200 and headers["strict-transport-security"] == "max-age=31536000"

        # wss: nginx terminates TLS, nexusws speaks plain ws on loopback.
        context = ssl.create_default_context(cafile=str(cert))
        token = front.reserve("render", "alice")
        status, body = front.refused(f"/websockify?token={token}", "bob", scheme="wss", port=https_port,
                                     ssl=context)
        assert status == 403
        # The browser's Origin passes through nginx to nexusws's --allowed_origin check.
        status, body = front.refused(f"/websockify?token={token}", "alice", scheme="wss", port=https_port,
                                     ssl=context, origin="https://elsewhere.example")
        assert status == 403 and "origin" in body.lower()
        assert front.greeting(f"/websockify?token={token}", "alice", scheme="wss", port=https_port,
                              ssl=context, origin=origin) == "render 0"
        front.gw.wait_for(r"tunnel open: .*/websockify\?token=\*\*\* -> ")
        # The site's access log has every request, and no secret.
        status, _ = curl("-u", f"alice:{PASSWORDS['alice']}", "-e", f"{base}/v.html?password=hunter2",
                         f"{base}/v1/status?security_token=s3cret")
        site.stop()
        log = (site.logs / "nexusws.access.log").read_text()
        assert '"GET /websockify HTTP/1.1" 101' in log and '"GET /v1/status HTTP/1.1"' in log, log
        for secret in (token, "hunter2", "s3cret", PASSWORDS["alice"]):
            assert secret not in log
    finally:
        site.stop()


def test_a_users_page_gets_its_sessions_events_through_nginx_without_the_security_token(make_front):
    """The viewer has the reservation token, never the operator's secret: behind nginx its
    /v1/session, /v1/events and /v1/touch are the user's, and the event stream is not buffered."""
    front = make_front(["--security_token", "s3cret"])
    status, body = unix_get(front.gw.http_socket, "/v1/reserve/open?security_token=s3cret&user=alice")
    assert status == 200
    token = json.loads(body)["token"]
    assert front.api("/v1/status", "alice")[0] == 401, "everything else still needs the secret"
    status, snapshot = front.api(f"/v1/session/{token}", "alice")
    assert status == 200 and snapshot["user"] == "alice" and snapshot["state"] == "reserved"
    assert front.api(f"/v1/session/{token}", "bob") == (403, {"error": "this token was reserved by another user"})
    assert front.api(f"/v1/touch/{token}", "alice") == (409, {"error": "this session has not started"})
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        conn.putrequest("GET", f"/v1/events/{token}", skip_accept_encoding=True)
        conn.putheader("Authorization", basic("alice", PASSWORDS["alice"]))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 200 and answer.getheader("content-type").startswith("text/event-stream")
        seen = b""
        while b"event: reserved" not in seen:  # while the stream stays open: nothing held back
            seen += answer.read1(4096)
    finally:
        conn.close()
    assert token not in front.gw.log
