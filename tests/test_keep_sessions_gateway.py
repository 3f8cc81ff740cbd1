"""--keep_sessions end to end (issue 15, item 6): a real gateway with a real session process
(an echo server greeting with its pid), SIGTERM, a second gateway on the same state file,
the same token, Python websockets. In memory: test_keep_sessions.py."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import websockets

from nexusws.sessions import wrapping
from support.sessions import (
    assert_gone,
    echo,
    gateway_args,
    get,
    greeting,
    instances,
    marked,
    open_ws,
    reserve,
    run,
    service_config,
    session_url,
)


def hello_config(tmp_path):
    return service_config(tmp_path, "hello", "hello_echo.py", count=2)


def test_a_restart_with_keep_sessions_leaves_the_session_running_and_the_token_re_attaches(
        gateway, tmp_path, marker):
    args = gateway_args(tmp_path, "--reconnect_grace", "60", "--keep_sessions", config=hello_config(tmp_path))
    first = gateway(args, http=True)
    token = reserve(first, "hello", marker=marker)
    idle = reserve(first, "hello", marker=marker)  # reserved, never used: restored as before

    async def attached_through_the_stop():
        async with open_ws(session_url(first, token)) as ws:
            pid = await greeting(ws)
            await echo(ws)
            assert await asyncio.to_thread(first.stop) == 0  # SIGTERM with the WebSocket open
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1001
            return pid

    pid = run(attached_through_the_stop())
    assert "hello#0: kept running for the next run" in first.log
    assert pid in marked(marker), "the session's server outlived the gateway"
    assert token not in first.log

    second = gateway(args, http=True)
    second.wait_for(r"hello#0: kept -> detached \(adopted from the previous run; grace 60 s\)")
    states = {i["token"]: i["state"] for i in instances(second, "hello")}
    assert states == {token: "detached", idle: "reserved"}

    async def again():
        async with open_ws(session_url(second, token)) as ws:
            assert await greeting(ws) == pid, "the same process, nothing launched"
            await echo(ws, b"z" * 200_000)

    run(again())
    assert "started pid" not in second.log and ") started" not in second.log
    assert get(f"{second.http_url}/v1/release/{token}") == (200, {"released": token})
    assert_gone(marker, what="the adopted session's processes")
    assert get(f"{second.http_url}/v1/release/{idle}") == (200, {"released": idle})


def test_the_next_run_without_the_flag_adopts_and_its_stop_ends_the_adopted_session(gateway, tmp_path, marker):
    config = hello_config(tmp_path)
    first = gateway(gateway_args(tmp_path, "--reconnect_grace", "60", "--keep_sessions", config=config), http=True)
    token = reserve(first, "hello", marker=marker)

    async def use():
        async with open_ws(session_url(first, token)) as ws:
            return await greeting(ws)

    pid = run(use())
    first.wait_for("hello#0: active -> detached")
    assert first.stop() == 0
    assert pid in marked(marker)
    second = gateway(gateway_args(tmp_path, "--reconnect_grace", "60", config=config), http=True)
    second.wait_for("adopted from the previous run")
    assert second.stop() == 0  # no --keep_sessions: every session ends, adopted ones too
    assert_gone(marker, what="the adopted session's processes")
    assert "hello#0: detached -> stopping (server shutting down)" in second.log


def test_without_keep_sessions_sigterm_leaves_nothing(gateway, tmp_path, marker):
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "60", config=hello_config(tmp_path)), http=True)
    token = reserve(gw, "hello", marker=marker)

    async def use():
        async with open_ws(session_url(gw, token)) as ws:
            return await greeting(ws)

    run(use())
    assert gw.stop() == 0
    assert_gone(marker)
    assert "kept running" not in gw.log


def test_a_program_the_supervisor_runs_has_sigpipe_ignored_so_it_outlives_its_readers():
    """Started as the launcher starts it (signals reset to their defaults, as Twisted's spawn
    does), the supervisor runs its program with SIGPIPE ignored: a session program that writes
    after the gateway is gone gets EPIPE, and lives on."""
    command = {"argv": ["sh", "-c", "grep SigIgn /proc/self/status; sleep 0.2; echo more; echo $? >&2"],
               "env": {"PATH": os.environ["PATH"]}, "cwd": None, "nofile": None}
    proc = subprocess.Popen([sys.executable, "-I", "-S", wrapping.SUPERVISOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, restore_signals=True)
    proc.stdin.write(json.dumps(command).encode())
    proc.stdin.close()
    line = proc.stdout.readline().decode()
    assert int(line.split()[1], 16) & (1 << (signal.SIGPIPE - 1)), line
    proc.stdout.close()  # the reader goes away, as a stopped gateway's pipes do
    assert proc.wait(10) == 0, "the program ended normally: its write failed, it was not killed"
    assert proc.stderr.read().endswith(b"\n1\n"), "echo's write failed (EPIPE), and the shell went on"


def test_keep_sessions_with_no_grace_is_warned_of_at_start(gateway, tmp_path):
    """Kept sessions of a service whose grace is 0 would be ended as soon as they are adopted."""
    gw = gateway(gateway_args(tmp_path, "--keep_sessions", config=hello_config(tmp_path)), http=True)
    gw.wait_for(r"#warn\] --keep_sessions with a reconnect_grace of 0 for 'hello': their sessions kept "
                r"at a stop end as soon as the next start adopts them")


def test_a_kept_python_program_that_prints_outlives_the_gateways_pipes(gateway, tmp_path, marker):
    """Found by the hostile review: SIGPIPE ignored is not enough; a Python program died of
    BrokenPipeError at its next print once the gateway had gone. With --keep_sessions the
    supervisor relays output, and drops it while no gateway reads it."""
    config = service_config(tmp_path, "chatty", "chatty_echo.py")
    args = gateway_args(tmp_path, "--reconnect_grace", "60", "--keep_sessions", config=config)
    first = gateway(args, http=True)
    token = reserve(first, "chatty", marker=marker)

    async def use(gw):
        async with open_ws(session_url(gw, token)) as ws:
            return await greeting(ws)

    pid = run(use(first))
    first.wait_for(r"chatty\[0\] python3: tick")  # its output is logged while the gateway lives
    ticker = [p for p, cmdline in marked(marker).items() if "ticker" in cmdline]
    assert len(ticker) == 1
    assert first.stop() == 0
    time.sleep(1.0)  # twenty lines printed with nobody reading
    assert set(ticker) | {pid} <= set(marked(marker)), "the ticker and the server outlived the gateway"
    second = gateway(args, http=True)
    second.wait_for("adopted from the previous run")
    assert run(use(second)) == pid
    assert ticker[0] in marked(marker)
    assert get(f"{second.http_url}/v1/release/{token}") == (200, {"released": token})
    assert_gone(marker)
