"""A real nginx in front of a cluster: config/nginx/cluster-locations.conf, verbatim.

Two nexusws nodes and the balancer run as real processes; nginx (on a socket
the test bound) routes Webots' endpoints and /v1 to the balancer, /<node>/ws/...
to a node's WebSocket port (with the upgrade) and /<node>/... to its HTTP port. In headless
Chromium, a node's admin dashboard shows the balancer's nodes beside the node's own sessions.
"""

import asyncio
import json
import ssl
import urllib.error
import urllib.request

import pytest
import websockets

from conftest import require
from support.browser import screenshot
from support.cluster import LOOPBACK, TESTS, get, start_balancer, stop
from support.nginx_front import Nginx, adapt, basic, nginx_binary
from support.nginx_pages import browser_fixture  # noqa: F401 (the fixture browser: alice, as here)
from support.waiting import wait_until

PASSWORDS = {"alice": "alice-pw"}
GROUPS = {"admins": ["alice"]}
AUTH = {"Authorization": basic("alice", "alice-pw")}


#: The dashboard's tables, cell by cell: {"nodes": [[node, load, takes sessions]...],
#: "sessions": [[data-state, id, service, user...]...]}.
TABLES = """() => Object.fromEntries(['nodes', 'sessions'].map((id) => [id,
    Array.from(document.querySelectorAll(`#${id} tbody tr:not(.empty)`), (tr) =>
        (id === 'sessions' ? [tr.dataset.state] : []).concat(
            Array.from(tr.cells, (td) => td.innerText)))]))"""


def fetch(url, headers=AUTH):
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class NodeBehind:
    """A node that advertises its WebSocket address through the front; alice administers it
    (C{--admin_group}: its dashboard, with every session, is hers; /v1/status still shows her
    no token but her own)."""

    def __init__(self, gateway, tmp_path, name, front_port):
        www = tmp_path / name
        www.mkdir()
        services, groups = tmp_path / "services.json", tmp_path / "groups.json"
        services.write_text(json.dumps({"echo": {"script": str(TESTS / "sessions" / "helper_echo.py"),
                                                 "count": 2, "options": {"kind": "helpers"}}}))
        groups.write_text(json.dumps(GROUPS))
        self.gw = gateway(["--ws_listen", LOOPBACK, "--http_listen", LOOPBACK, "--http_directory", str(www),
                           "--remote_session_config", str(services),
                           "--state_file", str(tmp_path / f"{name}.state"),
                           "--user_header", "X-Remote-User", "--trusted_proxy", "127.0.0.1",
                           "--groups_file", str(groups), "--admin_group", "admins",
                           "--advertise_url", f"ws://127.0.0.1:{front_port}/{name}/ws/"], http=True)
        self.name, self.http = name, f"127.0.0.1:{self.gw.http_port}"


@pytest.fixture
def cluster_front(gateway, tmp_path):
    require(nginx_binary() is not None, "nginx (apt-get install nginx)")
    nginx = Nginx(tmp_path / "nginx")
    port = nginx.listen()
    nodes = [NodeBehind(gateway, tmp_path, name, port) for name in ("n1", "n2")]
    balancer, url, _ = start_balancer(tmp_path, nodes, {})
    nginx.users(PASSWORDS)
    maps = "".join(
        f"map $nexusws_node $nexusws_node_{kind} {{\n    default \"\";\n" + "".join(
            f"    {n.name} 127.0.0.1:{n.gw.http_port if kind == 'http' else n.gw.ws_port};\n"
            for n in nodes) + "}\n" for kind in ("http", "ws"))
    nginx.start(
        f"upstream nexusws_balancer {{ server {url.removeprefix('http://')}; }}\n"
        f"{maps}"
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    server_name localhost;\n"
        "    include nexusws/cluster-locations.conf;  # the shipped file, verbatim\n"
        "}\n"
    )
    yield f"127.0.0.1:{port}", nodes
    nginx.stop()
    assert stop(balancer) == 0


def test_the_balancer_s_endpoints_are_reached_through_the_front(cluster_front):
    front, nodes = cluster_front
    assert fetch(f"http://{front}/", headers={})[0] == 401, "users are authenticated as on one node"
    assert fetch(f"http://{front}/") == (200, "1")
    status, session = fetch(f"http://{front}/session")
    assert status == 200 and session in {f"ws://{front}/{n.name}/ws/" for n in nodes}
    status, page = fetch(f"http://{front}/monitor")
    assert status == 200 and all(n.http in page for n in nodes)
    assert fetch(f"http://{front}/load")[0] == 200

    async def availability():
        async with websockets.connect(f"ws://{front}/", additional_headers=AUTH) as ws:
            return await asyncio.wait_for(ws.recv(), 5)

    assert asyncio.run(availability()) == "1", "the balancer's WebSocket, upgraded through nginx"


def test_a_session_reserved_through_the_front_opens_through_the_front_on_its_node(cluster_front):
    front, nodes = cluster_front
    status, body = fetch(f"http://{front}/v1/reserve/echo")
    assert status == 200, body
    placed = json.loads(body)
    node = next(n for n in nodes if n.http == placed["node"])
    assert placed["ws_url"] == f"ws://{front}/{node.name}/ws/"
    # /<node>/... is the node's own HTTP port, the prefix taken off: the reservation is
    # there, not on the other node. Through the front nobody is the node's operator, so
    # the balancer's (anonymous) token is not shown.
    status, listing = fetch(f"http://{front}/{node.name}/v1/status")
    assert status == 200 and [i["state"] for i in json.loads(listing)[0]["instances"]] == ["reserved"]
    assert placed["token"] not in listing
    other = next(n for n in nodes if n is not node)
    assert json.loads(fetch(f"http://{front}/{other.name}/v1/status")[1])[0]["instances"] == []

    async def echo():
        async with websockets.connect(f"{placed['ws_url']}?token={placed['token']}",
                                      additional_headers=AUTH) as ws:
            await ws.send(b"through the front")
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(echo()) == b"through the front"
    assert fetch(f"http://{front}/n9/v1/status")[0] == 404, "an unknown node"
    assert fetch(f"http://{front}/n9/ws/")[0] == 404
    wait_until(lambda: get(f"http://{node.http}/v1/status") is not None, 5, "node alive")


def test_an_administrator_of_a_node_sees_the_nodes_and_its_sessions_live_through_the_front(
        cluster_front, browser, artifacts):
    """n1's dashboard at /n1/... with ?balancer=/: the balancer's nodes (its /monitor, through
    the same front) beside n1's own sessions, live; and n1's portal, signed in."""
    front, nodes = cluster_front
    n1, alice = nodes[0], browser("alice")
    portal, answer = alice.open(f"http://{front}/n1/ansys/nexus/sessions/")
    assert answer.status == 200
    portal.wait_for_function("() => document.documentElement.dataset.state === 'ready'")
    assert portal.locator("#who").inner_text() == "Signed in as alice"
    assert portal.locator("#admin-link").is_visible(), "alice administers n1"
    assert "2 of 2 free" in portal.locator(".card", has_text="echo").inner_text()

    dashboard, answer = alice.open(f"http://{front}/n1/ansys/nexus/admin/?balancer=/")
    assert answer.status == 200
    dashboard.wait_for_function("() => document.documentElement.dataset.state === 'live'")
    assert dashboard.locator("#sessions tbody").inner_text() == "No session."

    def tables():
        return dashboard.evaluate(TABLES)

    def loads():  # node -> its load as the Nodes table shows it, once it shows both nodes
        shown = {row[0]: row[1:] for row in tables()["nodes"]}
        return shown if set(shown) == {n.http for n in nodes} else None

    shown = wait_until(loads, 10, "the Nodes table, both nodes")
    assert dashboard.locator("#nodes-section").is_visible()
    assert all(0 <= float(load) <= 100 and took in ("yes", "no") for load, took in shown.values()), shown

    # Reserved through the front: the balancer places it on the least-loaded node (in turn
    # among equals), n1 at the latest once n2 has had one.
    for _ in range(4):
        status, body = fetch(f"http://{front}/v1/reserve/echo")
        assert status == 200, body
        placed = json.loads(body)
        if placed["node"] == n1.http:
            break
    else:
        raise AssertionError("no reservation placed on n1")
    (row,) = json.loads(fetch(f"http://{front}/n1/v1/admin")[1])["sessions"]
    # n1's stream (/n1/v1/admin through nginx) brings the row by itself: n1's session only.
    wait_until(lambda: [r[:4] for r in tables()["sessions"]] == [
        ["reserved", f"#{row['id']}", f"echo #{row['index']}", "anonymous"]], 10, "n1's row, reserved")
    # The Nodes table follows the balancer (asked again every 5 s): n1 now at 50 at least (1 of
    # its 2 echo instances in use). The page is asked first: Playwright records the requests
    # (its events) only while it is called.
    wait_until(lambda: float(((loads() or {}).get(n1.http) or ["0"])[0]) >= 50
               and alice.requests.count("/monitor?format=json") >= 2, 15, "n1's new load")
    screenshot(dashboard, artifacts, "cluster-dashboard")
    assert dashboard.locator("#problem").is_hidden()
    assert "/monitor?format=json" in alice.requests and "/n1/v1/admin" in alice.streams
    assert all(t.startswith("/n1/") or t == "/monitor?format=json" for t in alice.requests), alice.requests
    assert alice.problems() == []


def test_the_shipped_cluster_site_runs_with_only_addresses_certificate_and_logs_changed(
        gateway, tmp_path):
    """config/nginx/cluster.conf itself (TLS, the maps, the balancer upstream), with the
    test's ports, certificate and log directory put in, nothing else changed."""
    from support.tls import make_cert

    require(nginx_binary() is not None, "nginx (apt-get install nginx)")
    cert, key = make_cert(tmp_path)
    nginx = Nginx(tmp_path / "nginx")
    port = nginx.listen()
    nodes = [NodeBehind(gateway, tmp_path, name, port) for name in ("n1", "n2")]
    balancer, url, _ = start_balancer(tmp_path, nodes, {})
    text = (TESTS.parent / "config" / "nginx" / "cluster.conf").read_text()
    replacements = [
        (r"access_log +/var/log/nginx/", f"access_log {nginx.logs}/"),
        (r"server 127\.0\.0\.1:1999;", f"server {url.removeprefix('http://')};"),
        (r"listen +443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        (r"ssl_certificate +\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key +\S+;", f"ssl_certificate_key {key};"),
        (r"n1 10\.0\.0\.11:9000;", f"n1 127.0.0.1:{nodes[0].gw.http_port};"),
        (r"n2 10\.0\.0\.12:9000;", f"n2 127.0.0.1:{nodes[1].gw.http_port};"),
        (r"n1 10\.0\.0\.11:9090;", f"n1 127.0.0.1:{nodes[0].gw.ws_port};"),
        (r"n2 10\.0\.0\.12:9090;", f"n2 127.0.0.1:{nodes[1].gw.ws_port};"),
    ]
    text = adapt(text, replacements, "cluster.conf")
    (nginx.conf_dir / "site.conf").write_text(text)
    nginx.users(PASSWORDS)
    try:
        nginx.start("include site.conf;\n")
        context = ssl.create_default_context(cafile=str(cert))

        def https(path):
            request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=AUTH)
            with urllib.request.urlopen(request, timeout=10, context=context) as answer:
                return answer.status, answer.headers, answer.read().decode()

        status, headers, body = https("/")
        assert (status, body) == (200, "1")
        assert headers["strict-transport-security"] == "max-age=31536000"
        status, _, listing = https("/n2/v1/status")
        assert status == 200 and json.loads(listing)[0]["name"] == "echo"
        assert "nexusws_cluster_private" in text and (nginx.logs / "nexusws-cluster.log").exists()
        assert "?" not in (nginx.logs / "nexusws-cluster.log").read_text(), "no query in the log"
    finally:
        nginx.stop()
        assert stop(balancer) == 0
