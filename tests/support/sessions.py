"""Helpers for the session integration tests (test_sessions, test_orphans, test_crash_safety,
test_access, test_limits).

Real gateway processes on 127.0.0.1 port 0, real session processes, real
WebSocket clients. Session processes carry a per-test marker in their argv
(the reservation option C{marker}), so a test finds them, and what they leave
behind, by scanning /proc.
"""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import websockets
from websockets.asyncio.client import connect

#: tests/sessions/: the session scripts, and the service config file that names them.
SCRIPTS = Path(__file__).resolve().parent.parent / "sessions"
CONFIG = SCRIPTS / "services.json"
LOOPBACK = ["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1"]


def gateway_args(tmp_path, *extra, config=CONFIG):
    """A gateway's command line: loopback port 0, its own state file and http directory,
    and the reference's behaviour (a session stops when its WebSocket is lost) unless
    C{extra} gives another --reconnect_grace (the last one counts)."""
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    args = [*LOOPBACK, "--http_directory", str(www), "--state_file", str(state_path(tmp_path)),
            "--reconnect_grace", "0"]
    if config is not None:
        args += ["--remote_session_config", str(config)]
    return [*args, *extra]


def state_path(tmp_path):
    return tmp_path / "state.json"


def new_marker():
    return f"nexusws-test-{uuid.uuid4().hex}"


# --- HTTP -----------------------------------------------------------------------


def get(url, headers=None):
    """GET C{url}: C{(status, parsed JSON body)}, for error statuses too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read() or b"null")


def session_snapshot(gw, token):
    """GET /v1/session/{token} of C{gw} (it must answer 200): the session's snapshot."""
    status, snapshot = get(f"{gw.http_url}/v1/session/{urllib.parse.quote(token)}")
    assert status == 200, (status, snapshot)
    return snapshot


def reserve(gw, service, **options):
    """Reserve C{service} on C{gw}; return the token (the call must succeed)."""
    query = urllib.parse.urlencode(options)
    status, body = get(f"{gw.http_url}/v1/reserve/{urllib.parse.quote(service)}?{query}")
    assert status == 200, (status, body)
    return body["token"]


def instances(gw, service, **query):
    """The /v1/status instances of C{service}."""
    suffix = "?" + urllib.parse.urlencode(query) if query else ""
    status, listing = get(f"{gw.http_url}/v1/status{suffix}")
    assert status == 200, (status, listing)
    (entry,) = [s for s in listing if s["name"] == service]
    return entry["instances"]


def all_instances(gw):
    status, listing = get(f"{gw.http_url}/v1/status")
    assert status == 200, (status, listing)
    return [i for s in listing for i in s["instances"]]


# --- processes --------------------------------------------------------------------


def marked(marker):
    """{pid: cmdline} of the live (not zombie) processes whose argv holds C{marker}."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state not in (b"Z", b"X"):
            found[int(name)] = cmdline.strip()
    return found


def descendants(pid):
    """The pids of every live descendant of C{pid}."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X"):
                children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_all(pids):
    """SIGKILL each of C{pids} still alive; return them."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def kill_marked(marker):
    """SIGKILL whatever still carries C{marker}; return what there was."""
    return kill_all(marked(marker))


def service_config(tmp_path, name, script, count=1, **options):
    """A config file with one service, C{name}, running tests/sessions/C{script} with C{options}."""
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({name: {"script": str(SCRIPTS / script), "count": count, "options": options}}))
    return config


async def greeting(ws):
    """The pid a session's server greets with (tests/sessions/hello_echo.py, chatty_echo.py)."""
    line = await asyncio.wait_for(ws.recv(), 15)
    assert line.startswith(b"pid ") and line.endswith(b"\n"), line
    return int(line[4:])


def with_environment(name, value):
    """Pids of live processes whose environment has C{name=value}."""
    found, needle = [], f"{name}={value}".encode()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def assert_gone(marker, timeout=8.0, what="session processes"):
    """Fail unless every process carrying C{marker} is gone within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"{what} still running after {timeout}s: {left}"


# --- WebSockets -------------------------------------------------------------------


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def session_url(gw, token, path="/websockify"):
    return f"{gw.ws_url}{path}?token={token}"


def open_ws(url):
    """An async context manager: a binary WebSocket client (no size limit)."""
    return connect(url, subprotocols=["binary"], max_size=None, open_timeout=15, close_timeout=5)


async def echo(ws, data=None):
    """Send C{data} and check it comes back whole."""
    data = data if data is not None else os.urandom(4096)
    await ws.send(data)
    got = b""
    while len(got) < len(data):
        got += await asyncio.wait_for(ws.recv(), 15)
    assert got == data


async def refusal(url):
    """The HTTP status with which the handshake to C{url} is refused (fails if it opens)."""
    try:
        async with open_ws(url):
            pass
    except websockets.InvalidStatus as e:
        return e.response.status_code
    raise AssertionError(f"{url} was not refused")


async def closed_with(ws):
    """Wait until the server closes C{ws}; its close frame's C{(code, reason)}."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 30)
    except websockets.ConnectionClosed as e:
        assert e.rcvd is not None, f"closed without a close frame: {e}"
        return e.rcvd.code, e.rcvd.reason
