"""Sessions end to end: real gateway processes, real session processes, real WebSocket clients.

Every gateway listens on 127.0.0.1 port 0 with its own --state_file; the
services are in tests/sessions/services.json. Session processes carry a
per-test marker in their argv, so /proc tells whether they run.
"""

import asyncio
import os
import re
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from nexusws.sessions.statefile import StateFile
from support.envision import port_free
from support.sessions import (
    all_instances,
    assert_gone,
    closed_with,
    descendants,
    echo,
    gateway_args,
    get,
    instances,
    marked,
    open_ws,
    refusal,
    reserve,
    run,
    session_url,
    state_path,
)
from support.waiting import wait_until, wait_until_async

#: A log line of the launcher saying it started a process.
STARTED = r"nexusws\.launcher#info\].*(started pid|\) started)"
FAKE_ENSIGHT = ROOT / "tests" / "services" / "fake_ensight.py"


def start(gateway, tmp_path, *extra, **kwargs):
    return gateway(gateway_args(tmp_path, *extra, **kwargs), http=True)


# --- a session's life --------------------------------------------------------------


def test_reserved_token_launches_tunnels_and_ends_with_the_websocket_whatever_the_path(
        gateway, tmp_path, marker):
    """?token=T on any path launches the instance and tunnels to it; closing the
    WebSocket ends its processes and frees its index (seen in /v1/status and /proc)."""
    gw = start(gateway, tmp_path)
    for path in ("/websockify", "/some/other/path"):
        token = reserve(gw, "echo", marker=marker)
        (entry,) = instances(gw, "echo")
        assert (entry["token"], entry["state"], entry["index"]) == (token, "reserved", 0)
        assert not marked(marker), "launched before any WebSocket presented the token"

        async def session(path=path, token=token):
            async with open_ws(session_url(gw, token, path)) as ws:
                await echo(ws)
                await echo(ws, b"x" * 300_000)
                assert [i["state"] for i in instances(gw, "echo")] == ["active"]
                assert len(marked(marker)) == 2  # the server and its grandchild

        run(session())
        wait_until(lambda: instances(gw, "echo") == [], 10, "the index freed")
        assert_gone(marker)


def test_unknown_released_and_expired_tokens_are_refused_404_and_launch_nothing(
        gateway, tmp_path, marker):
    """A token never issued, one released and one expired get HTTP 404 at the
    handshake; no process is started (no launcher line, no child of the gateway)."""
    gw = start(gateway, tmp_path, "--timeout", "1")
    released = reserve(gw, "echo", marker=marker)
    assert get(f"{gw.http_url}/v1/release/{released}") == (200, {"released": released})
    expired = reserve(gw, "echo", marker=marker)
    gw.wait_for(r"echo#0: reserved -> expired", timeout=10)

    async def refused():
        return [await refusal(session_url(gw, token, "/any"))
                for token in ("00000000-0000-4000-8000-000000000000", released, expired)]

    assert run(refused()) == [404, 404, 404]
    assert all_instances(gw) == []
    assert not re.search(STARTED, gw.log), gw.log
    assert not marked(marker)
    assert descendants(gw.proc.pid) == set()


def test_token_in_use_by_an_open_websocket_is_refused_409(gateway, tmp_path, marker):
    """A second WebSocket presenting a token whose session is open gets HTTP 409;
    the first one keeps working."""
    gw = start(gateway, tmp_path)
    token = reserve(gw, "echo", marker=marker)

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            await echo(ws)
            assert await refusal(session_url(gw, token, "/elsewhere")) == 409
            await echo(ws)

    run(scenario())
    assert_gone(marker)


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_start_raising_closes_the_websocket_1011_with_the_reason_and_frees_the_index(
        gateway, tmp_path):
    """A script whose start() raises: the client gets close 1011 naming the error; the
    reservation is gone and the service can be reserved again."""
    gw = start(gateway, tmp_path)
    token = reserve(gw, "raises")

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            return await closed_with(ws)

    code, reason = run(scenario())
    assert code == 1011
    assert "RuntimeError: this test script always refuses to start" in reason
    assert instances(gw, "raises") == []
    assert get(f"{gw.http_url}/v1/reserve/raises")[0] == 200


def test_port_never_opening_closes_1011_after_start_timeout_and_stops_what_started(
        gateway, tmp_path, marker):
    """A start whose address never accepts within --start_timeout 2: close 1011 saying
    so, the process it started is ended, the reservation freed."""
    gw = start(gateway, tmp_path, "--start_timeout", "2")
    token = reserve(gw, "never_opens", marker=marker)

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            await wait_until_async(lambda: marked(marker), 10, "the script's process started")
            began = time.monotonic()
            code, reason = await closed_with(ws)
            return code, reason, time.monotonic() - began

    code, reason, waited = run(scenario())
    assert code == 1011
    assert "did not accept connections within 2 s" in reason
    assert waited < 5
    assert_gone(marker, what="the process of the failed start")
    assert instances(gw, "never_opens") == []


# --- without a token -----------------------------------------------------------------


def test_without_token_basic_mode_applies_when_client_port_is_configured(
        gateway, tmp_path, echo_port):
    """No ?token=: the WebSocket goes to --client_port (basic mode), sessions or not."""
    gw = start(gateway, tmp_path, "--client_hostname", "127.0.0.1", "--client_port", str(echo_port))

    async def scenario():
        async with open_ws(gw.ws_url + "/websockify") as ws:
            await echo(ws)

    run(scenario())
    assert all_instances(gw) == []


def test_without_token_and_without_client_port_the_websocket_is_refused_404(gateway, tmp_path):
    """No ?token= and no --client_port: HTTP 404 at the handshake."""
    gw = start(gateway, tmp_path)
    assert run(refusal(gw.ws_url + "/websockify")) == 404


# --- the reaper ------------------------------------------------------------------------


def test_unused_reservation_is_reclaimed_after_timeout_and_its_token_refused(gateway, tmp_path):
    """--timeout 1: a reservation no WebSocket used is gone within a few seconds; its
    token then gets 404."""
    gw = start(gateway, tmp_path, "--timeout", "1")
    token = reserve(gw, "echo")
    assert [i["state"] for i in instances(gw, "echo")] == ["reserved"]
    wait_until(lambda: all_instances(gw) == [], 5, "the unused reservation reclaimed")
    assert run(refusal(session_url(gw, token))) == 404


def test_reservation_used_in_time_is_not_reclaimed_while_active(gateway, tmp_path, marker):
    """--timeout 1: a reservation used at once stays active (and tunnelling) past the
    timeout: a second one, made after it and left unused, is reclaimed meanwhile."""
    gw = start(gateway, tmp_path, "--timeout", "1")
    token = reserve(gw, "echo", marker=marker)

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            await echo(ws)
            (used,) = instances(gw, "echo")
            # The control: reserved after the used one, so once the reaper has reclaimed it,
            # it has run at a time the used one was older than the timeout too.
            unused = reserve(gw, "echo")

            def reclaimed():
                tokens = [i["token"] for i in instances(gw, "echo")]
                assert token in tokens, "the used reservation was reclaimed"
                return unused not in tokens

            await wait_until_async(reclaimed, 10, "the unused reservation reclaimed by the reaper")
            assert [(i["token"], i["state"]) for i in instances(gw, "echo")] == [(token, "active")]
            await echo(ws)
            return used["index"]

    index = run(scenario())
    gw.wait_for(rf"reservation #\w+ echo#{1 - index}: reserved -> expired")
    assert not re.search(rf"echo#{index}: \w+ -> expired", gw.log)
    assert_gone(marker)


# --- the state file ----------------------------------------------------------------


def saved_reservations(tmp_path):
    path = state_path(tmp_path)
    data = StateFile(path).parse(Path(path).read_bytes())
    return {r["token"]: r for r in data["reservations"]}


def test_state_file_is_private_and_follows_every_change(gateway, tmp_path, marker):
    """The state file is mode 0600 and records the reservation when reserved, active
    (with its processes' pids) and gone."""
    gw = start(gateway, tmp_path)
    token = reserve(gw, "echo", marker=marker)
    assert stat.S_IMODE(os.stat(state_path(tmp_path)).st_mode) == 0o600
    assert saved_reservations(tmp_path)[token]["state"] == "reserved"

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            await echo(ws)
            record = saved_reservations(tmp_path)[token]
            assert record["state"] == "active"
            assert set(marked(marker)) <= {pid for pid, _ in record["pids"]}

    run(scenario())
    wait_until(lambda: token not in saved_reservations(tmp_path), 10, "the record removed")
    assert stat.S_IMODE(os.stat(state_path(tmp_path)).st_mode) == 0o600


@pytest.mark.parametrize("how", [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGKILL, id="SIGKILL")])
def test_reserved_token_survives_a_restart_and_works_on_the_new_gateway(
        gateway, tmp_path, marker, how):
    """A still-valid 'reserved' token comes back after a restart with the same state
    file: same index, and a WebSocket presenting it launches and tunnels."""
    first = start(gateway, tmp_path)
    token = reserve(first, "echo", marker=marker)
    first.proc.send_signal(how)
    first.proc.wait(20)
    second = start(gateway, tmp_path)
    assert [(i["token"], i["state"]) for i in instances(second, "echo")] == [(token, "reserved")]

    async def session():
        async with open_ws(session_url(second, token)) as ws:
            await echo(ws)

    run(session())
    assert_gone(marker)


@pytest.mark.parametrize("how", [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGKILL, id="SIGKILL")])
def test_expired_reservation_is_dropped_at_restart(gateway, tmp_path, how):
    """A reservation older than the new gateway's --timeout is dropped at start-up
    (logged as expired) and its token refused with 404."""
    first = start(gateway, tmp_path)
    token = reserve(first, "echo")
    first.proc.send_signal(how)
    first.proc.wait(20)
    # The new gateway drops the saved reservation if it is 1 s old (wall clock) when it
    # starts: a real delay is inherent; wait until the saved record is that old.
    created = saved_reservations(tmp_path)[token]["created"]
    wait_until(lambda: time.time() - created > 1.0, 5, "the saved reservation older than --timeout 1")
    second = start(gateway, tmp_path, "--timeout", "1")
    second.wait_for(r"previous run: reservation .* expired meanwhile; dropped", timeout=3)
    assert all_instances(second) == []
    assert run(refusal(session_url(second, token))) == 404


def test_corrupt_state_file_is_moved_aside_with_a_warning_and_the_gateway_starts(
        gateway, tmp_path):
    """A state file that is not JSON is renamed PATH.corrupt-*, a warning says so, and
    the gateway runs (reservations work and are recorded afresh)."""
    state_path(tmp_path).write_bytes(b"{ this is not json")
    gw = start(gateway, tmp_path)
    gw.wait_for(r"state file .*state\.json is not valid JSON .*moved aside")
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.read_bytes() == b"{ this is not json"
    token = reserve(gw, "echo")
    assert token in saved_reservations(tmp_path)


# --- built-in services ---------------------------------------------------------------


def test_local_ensight_reserved_by_both_names_tunnels_to_its_vnc_port(gateway, tmp_path):
    """--local_session ensight 1 with a stand-in executable: 'local_ensight' and
    'ensight' both reserve it, and the WebSocket reads the stand-in's RFB greeting."""
    with socket.socket() as s:  # ensight #0's VNC port is --vnc_port_base: a free one
        s.bind(("127.0.0.1", 0))
        vnc_port = s.getsockname()[1]
    program = tmp_path / "ensight"  # fake_ensight.py is not executable itself
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENSIGHT}" "$@"\n')
    program.chmod(0o755)
    gw = start(gateway, tmp_path, "--local_session", "ensight", "1", "--vnc_port_base", str(vnc_port),
               "--ensight_executable", str(program), config=None)
    for name in ("local_ensight", "ensight"):
        status, body = get(f"{gw.http_url}/v1/reserve/{name}")
        assert status == 200 and (body["service"], body["index"]) == ("ensight", 0), body

        async def session(token=body["token"]):
            async with open_ws(session_url(gw, token)) as ws:
                assert await asyncio.wait_for(ws.recv(), 15) == b"RFB 003.008\n"

        run(session())
        wait_until(lambda: all_instances(gw) == [], 10, "the ensight instance ended")
        wait_until(lambda: port_free(vnc_port), 5, "the stand-in's VNC port closed")
        assert_gone(f"{FAKE_ENSIGHT} -vnc", what="the stand-in")


def ensight_missing(gateway, tmp_path, missing):
    """A gateway whose ensight executable is C{missing}; a session's (gw, close code, reason)."""
    gw = start(gateway, tmp_path, "--local_session", "ensight", "1",
               "--ensight_executable", str(missing), config=None)
    token = reserve(gw, "ensight")

    async def scenario():
        async with open_ws(session_url(gw, token)) as ws:
            return await closed_with(ws)

    return (gw, *run(scenario()))


def test_local_ensight_without_executable_fails_the_session_clearly_and_the_gateway_runs(
        gateway, tmp_path):
    """A missing EnSight executable: the reservation is made, its WebSocket is closed
    1011 saying which executable is missing; the gateway keeps serving."""
    gw, code, reason = ensight_missing(gateway, tmp_path, tmp_path / "no-such-ensight")
    assert code == 1011
    assert reason.startswith("no ensight executable") and "not executable" in reason, reason
    assert gw.proc.poll() is None
    assert all_instances(gw) == []
    assert get(f"{gw.http_url}/v1/reserve/local_ensight")[0] == 200


def test_missing_executable_close_reason_names_the_problem_and_the_remedy(gateway, tmp_path):
    """With a long executable path, the 1011 reason still says 'no ensight executable'
    and which option to set."""
    missing = tmp_path / "opt" / "ansys_inc" / "v251" / "CEI" / "bin" / "ensight251"
    _, code, reason = ensight_missing(gateway, tmp_path, missing)
    assert code == 1011
    assert "no ensight executable" in reason and "--ensight_executable" in reason, reason


# --- the security token --------------------------------------------------------------


def test_security_token_required_for_reserve_and_never_logged(gateway, tmp_path):
    """--security_token S: /v1/reserve without it (or with a wrong one) is 401 and
    reserves nothing; with it (query or Bearer) it works; S appears in no log line."""
    secret = "s3cret-" + os.urandom(8).hex()
    gw = start(gateway, tmp_path, "--security_token", secret)
    assert get(f"{gw.http_url}/v1/reserve/echo")[0] == 401
    assert get(f"{gw.http_url}/v1/reserve/echo?security_token=wrong")[0] == 401
    assert instances(gw, "echo", security_token=secret) == []
    status, _ = get(f"{gw.http_url}/v1/reserve/echo?security_token={secret}")
    assert status == 200
    status, _ = get(f"{gw.http_url}/v1/reserve/echo",
                    headers={"Authorization": f"Bearer {secret}"})
    assert status == 200
    assert len(instances(gw, "echo", security_token=secret)) == 2
    assert gw.stop() == 0
    assert secret not in gw.log
    assert "security_token=***" in gw.log


def test_a_client_that_leaves_during_the_launch_cancels_it_at_once(gateway, tmp_path, marker):
    """The client's TCP connection goes while its instance starts (--start_timeout 30):
    the launch is cancelled within a second or two, its process ended, the index freed."""
    gw = start(gateway, tmp_path, "--start_timeout", "30")
    token = reserve(gw, "never_opens", marker=marker)

    async def scenario():
        ws = await open_ws(session_url(gw, token))
        await wait_until_async(lambda: marked(marker), 10, "the script's process started")
        ws.transport.abort()  # gone without a close frame

    run(scenario())
    began = time.monotonic()
    wait_until(lambda: instances(gw, "never_opens") == [], 10, "the index freed")
    waited = time.monotonic() - began
    assert waited < 3, f"the launch went on {waited:.1f} s for a client that had left"
    assert_gone(marker, what="the process of the cancelled start")


def test_frames_sent_with_the_handshake_of_a_session_reach_its_backend(gateway, tmp_path, marker):
    """A client that sends before the 101 (or during the launch) loses nothing: the
    bytes wait for the instance and arrive first, in order."""
    gw = start(gateway, tmp_path)
    token = reserve(gw, "echo", marker=marker)
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    mask = b"\x01\x02\x03\x04"

    def frame(payload):
        return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    with socket.create_connection(("127.0.0.1", gw.ws_port), timeout=20) as s:
        s.sendall(b"GET /websockify?token=" + token.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                  b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame(b"PIPELINED\n"))
        s.sendall(frame(b"EARLY\n"))
        received = b""
        while b"EARLY" not in received:
            data = s.recv(65536)
            assert data, f"closed early: {received!r}"
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert body.index(b"PIPELINED") < body.index(b"EARLY")
