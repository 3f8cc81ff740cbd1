"""Hostile requests against a real gateway, table-driven.

Each gets a clear 4xx (or a one-line error at start-up); afterwards the gateway
still serves, holds no more file descriptors than before, and has no
reservation left over.
"""

import json
import os
import subprocess
import time

import pytest

from conftest import BIN, ROOT
from support.raw_http import exchange, status_of

LOOPBACK = "tcp:0:interface=127.0.0.1"
SERVICES = ROOT / "tests" / "sessions" / "services.json"
WS_HEADERS = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")

HTTP_CASES = {
    "invalid UTF-8 in a service name": b"GET /v1/reserve/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw non-UTF-8 bytes in the path": b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "CRLF injected into a release token": b"GET /v1/release/abc%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "CRLF injected into the path": b"GET /a%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "traversal": b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "encoded traversal": b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in the path": b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
    # Over the header limit, but read whole at once: a larger flood is cut by a reset.
    "oversized headers": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
    "a thousand headers": b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "unknown method": b"BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge content length": b"POST /v1/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
}

WS_CASES = {
    "CRLF in a token": b"GET /ws?token=%0d%0aX:%20y HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n",
    "a huge token": b"GET /ws?token=" + b"A" * 8000 + b" HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n",
    "invalid UTF-8 token": b"GET /ws?token=%ff%fe HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n",
    "no key": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "plain HTTP on the ws port": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage": b"\x00\x01\x02\xff" * 64 + b"\r\n\r\n",
}


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from conftest import Gateway

    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "www").mkdir()
    gateway = Gateway(["--remote_session_config", str(SERVICES), "--state_file", str(tmp / "state.json"),
                       "--http_directory", str(tmp / "www"), "--http_listen", LOOPBACK,
                       "--ws_listen", LOOPBACK, "--connect_timeout", "2"])
    gateway.wait_listening(http=True)
    yield gateway
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.log


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_hostile_http_request_gets_a_clear_4xx(gw, case):
    answer = exchange(gw.http_port, HTTP_CASES[case])
    status = status_of(answer)
    assert status is not None and 400 <= status < 500, (case, answer[:200])
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nset-cookie" not in head and b"\r\nx: y" not in head, "no header was injected"


@pytest.mark.parametrize("case", sorted(WS_CASES))
def test_hostile_websocket_handshake_is_refused_with_a_4xx(gw, case):
    answer = exchange(gw.ws_port, WS_CASES[case])
    status = status_of(answer)
    assert answer == b"" or (status is not None and 400 <= status < 500), (case, answer[:200])
    assert "started" not in gw.log, "nothing was launched"


def test_after_the_hostile_requests_nothing_leaked_and_the_gateway_serves(gw):
    baseline = fd_count(gw.proc.pid)
    for data in [*HTTP_CASES.values(), *WS_CASES.values()] * 3:
        port = gw.ws_port if data in WS_CASES.values() else gw.http_port
        exchange(port, data)
    deadline = time.monotonic() + 5
    while fd_count(gw.proc.pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd_count(gw.proc.pid) <= baseline, "descriptors leaked"
    answer = exchange(gw.http_port, b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert all(service["instances"] == [] for service in body), "no reservation left behind"


@pytest.mark.parametrize("args, expected", [
    (["--client_port", "-1", "0"], "--client_port: '-1' is not a port number"),
    (["--http_port", "99999999999999999999", "0"], "is not a port number"),
    (["--timeout", "1e999", "0"], "is not a number of seconds"),
    (["--local_session", "ensight", "-3", "0"], "'ensight -3' is not"),
])
def test_hostile_option_values_stop_start_up_with_one_line(args, expected):
    done = subprocess.run([str(BIN / "nexus-websocketserver"), *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], lines


def test_a_huge_instance_count_reserves_and_releases_without_scanning_it(tmp_path):
    """count 10**30 is accepted (no reservation walks every index) and costs nothing."""
    from support.api import Api, FakeService

    api = Api(tmp_path, services=[FakeService(count=10**30)])
    token = api.reserve()
    assert api.get(f"/v1/release/{token}").status == 200
    assert api.live() == {}
