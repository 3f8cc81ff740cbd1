"""Three nexusws nodes and the balancer, all real processes on loopback.

Sessions spread by load; /session and /v1/reserve follow the loads the nodes
report; a node killed mid-run is out within one poll; a returning node is used
again; the WebSocket on / pushes availability.
"""

import asyncio
import email
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import websockets

from conftest import BIN
from support.cluster import LOOPBACK, Node, get
from support.smtp_server import SmtpServer
from support.tls import make_cert
from support.waiting import wait_until

POLL, TIMEOUT = 1.0, 0.5


@pytest.fixture
def balancer(tmp_path):
    procs = []

    def start(nodes, **extra):
        cfg = tmp_path / "session.json"
        cfg.write_text(json.dumps({"port": 0, "ssl": False, "debug": True, "server": "balancer.test",
                                   "pollInterval": POLL, "pollTimeout": TIMEOUT,
                                   "simulationServers": [n.http for n in nodes], **extra}))
        log = open(tmp_path / "balancer.log", "w+")
        p = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "nexusws-balancer", "--config",
                              str(cfg), "--listen", LOOPBACK], stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        m = wait_until(lambda: re.search(r"--listen listening on http://127\.0\.0\.1:(\d+)/",
                                         (tmp_path / "balancer.log").read_text()), 15, "the balancer listens")
        url = f"http://127.0.0.1:{m.group(1)}"
        wait_until(lambda: get(url + "/", parse=False) == "1", 10, "sessions available")
        return url

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
        assert p.returncode == 0, (tmp_path / "balancer.log").read_text()[-3000:]


def test_sessions_spread_by_load_a_dead_node_is_out_within_a_poll_and_a_returning_one_is_used(
        gateway, tmp_path, balancer, request):
    cert, key = make_cert(tmp_path, "smtp")
    smtp = SmtpServer(cert, key)
    request.addfinalizer(smtp.close)
    nodes = [Node(gateway, tmp_path, f"n{i}") for i in range(3)]
    url = balancer(nodes, administrator="admin@example.com", mailServer="127.0.0.1",
                   mailServerPort=smtp.port, mailSender="balancer@example.com",
                   mailSenderUser="bot", mailSenderPassword="pw", mailServerCA=str(cert))
    by_address = {n.http: n for n in nodes}

    # Three reservations of a service with two instances a node: one on each node.
    placed = [get(f"{url}/v1/reserve/echo?marker=m{i}&password=hunter{i}") for i in range(3)]
    assert sorted(p["node"] for p in placed) == sorted(by_address), placed
    log = (tmp_path / "balancer.log").read_text()
    assert "hunter" not in log and "/v1/reserve/echo?marker=m0&password=*** HTTP/1.1\" 200" in log
    for p in placed:
        assert p["ws_url"] == f"ws://127.0.0.1:{by_address[p['node']].gw.ws_port}/"
        status = get(f"http://{p['node']}/v1/status")
        assert p["token"] in {i["token"] for s in status for i in s["instances"]}

    # /session follows the loads the nodes report: after a poll, the least loaded.
    first = nodes[0]
    extra = get(f"http://{first.http}/v1/reserve/echo")  # node 0 now at 2 of 2: load 100
    full = f'{first.http}</a></td><td><span style="color:red">100%</span>'
    wait_until(lambda: full in get(f"{url}/monitor", parse=False), POLL + TIMEOUT + 2.0,
               "a poll of the balancer sees node 0 full")
    loads = {n.http: get(f"http://{n.http}/v1/load?format=json")["load"] for n in nodes}
    assert loads[first.http] == 100
    lowest = {a for a, load in loads.items() if load == min(loads.values())}
    for _ in range(4):
        assert get(f"{url}/session", parse=False) in {
            f"ws://127.0.0.1:{by_address[a].gw.ws_port}/" for a in lowest}
    assert full in get(f"{url}/monitor", parse=False)

    # A node killed mid-run is out within one poll (interval + timeout).
    dead = nodes[1]
    dead.gw.kill()
    killed = time.monotonic()
    wait_until(lambda: f"{dead.http}</a> (" in get(f"{url}/monitor", parse=False),
               POLL + TIMEOUT + 1.0, "the dead node marked")
    assert time.monotonic() - killed <= POLL + TIMEOUT + 1.0
    # Its e-mail arrives (after the one about node 0 reaching its maximum load).
    mails = [email.message_from_bytes(m[2]) for m in smtp.received.wait(2, 10)]
    assert [m["Subject"] for m in mails] == ["Simulation server reached maximum load",
                                             "Simulation server not responding"]
    assert first.http in mails[0].get_payload() and dead.http in mails[1].get_payload()
    placed = get(f"{url}/v1/reserve/echo")
    assert placed["node"] == nodes[2].http, "neither the dead node nor the full one"
    get(f"http://{nodes[2].http}/v1/release/{placed['token']}")

    # It comes back on the same address: used again.
    back = Node(gateway, tmp_path, "n1", http_listen=f"tcp:{dead.gw.http_port}:interface=127.0.0.1")
    assert back.http == dead.http
    wait_until(lambda: f"{dead.http}</a> (" not in get(f"{url}/monitor", parse=False),
               POLL + TIMEOUT + 2.0, "the returning node answers")
    nodes_used = {get(f"{url}/v1/reserve/echo")["node"] for _ in range(2)}
    assert back.http in nodes_used
    get(f"http://{first.http}/v1/release/{extra['token']}")


def test_the_websocket_on_root_pushes_availability(gateway, tmp_path, balancer):
    node = Node(gateway, tmp_path, "only")
    url = balancer([node])

    async def watch():
        async with websockets.connect(url.replace("http", "ws") + "/") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "1"
            node.gw.kill()
            assert await asyncio.wait_for(ws.recv(), POLL + TIMEOUT + 2) == "0"

    asyncio.run(watch())
    assert get(f"{url}/", parse=False) == "0"
    assert get(f"{url}/session", parse=False).startswith("Error: no simulation server")
    assert sys.platform.startswith("linux")


@pytest.mark.parametrize("args, message", [
    ([], "--config is missing"),
    (["--config", "/nonexistent/session.json"], "/nonexistent/session.json: cannot read"),
    (["--config", "{cfg}", "--listen", "tcp:notaport"], "--listen"),
    (["--config", "{bad}"], "'simulationServers' is missing"),
    (["--config", "{nolog}"], "'logDir': cannot create /proc/nexusws-test/session"),
])
def test_a_balancer_mistake_is_one_line_and_exit_2_under_twistd(tmp_path, args, message):
    (tmp_path / "ok.json").write_text(json.dumps({"simulationServers": ["n:1"], "debug": True}))
    (tmp_path / "bad.json").write_text(json.dumps({"port": 1}))
    (tmp_path / "nolog.json").write_text(json.dumps({"simulationServers": ["n:1"],
                                                     "logDir": "/proc/nexusws-test"}))
    args = [a.format(cfg=tmp_path / "ok.json", bad=tmp_path / "bad.json", nolog=tmp_path / "nolog.json")
            for a in args]
    done = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "nexusws-balancer", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stdout, done
    assert lines[0].startswith("twistd nexusws-balancer: error: ")
