"""No orphans: whatever a session started is gone after the session, a SIGTERM, /v1/stop,
or a gateway SIGKILL followed by a restart with the same state file.

Each test runs one session of each kind of script in tests/sessions/ at once:
  - echo:        helper spawn(); the server starts a grandchild
  - plain_spawn: plain reactor.spawnProcess, forgotten; the server starts a grandchild
  - popen_spawn: subprocess.Popen, forgotten
  - daemon:      a server that double-forks into a session of its own
Every process carries its kind's marker in its argv; /proc is scanned for it.
"""

import asyncio
import contextlib
import signal

import pytest

from support.sessions import (
    assert_gone,
    echo,
    gateway_args,
    get,
    kill_marked,
    marked,
    new_marker,
    open_ws,
    reserve,
    run,
    session_url,
)

#: Each kind of session and how many marked processes it runs.
KINDS = {"echo": 2, "plain_spawn": 2, "popen_spawn": 1, "daemon": 1}


@pytest.fixture
def markers():
    """A marker per kind of session; whatever still carries one is killed after the test."""
    values = {kind: new_marker() for kind in KINDS}
    yield values
    for value in values.values():
        kill_marked(value)


def running(markers):
    """{kind: number of its marked processes alive}."""
    return {kind: len(marked(m)) for kind, m in markers.items()}


def assert_all_gone(markers, timeout):
    for kind, m in markers.items():
        assert_gone(m, timeout=timeout, what=f"processes of the {kind!r} session")


def start(gateway, tmp_path, *extra):
    return gateway(gateway_args(tmp_path, *extra), http=True)


async def open_sessions(gw, markers, stack):
    """Reserve and open one session of each kind, one after the other; check each tunnels."""
    sockets = []
    for kind, m in markers.items():
        token = reserve(gw, kind, marker=m)
        ws = await stack.enter_async_context(open_ws(session_url(gw, token, f"/{kind}")))
        await echo(ws)
        sockets.append(ws)
    assert running(markers) == KINDS
    return sockets


def test_closing_the_websockets_ends_what_each_session_started_by_any_means(
        gateway, tmp_path, markers):
    """When its WebSocket closes, a session's processes end: helper children, plain
    spawnProcess and Popen children the script forgot, a daemon and grandchildren."""
    gw = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions(gw, markers, stack)

    run(scenario())
    assert_all_gone(markers, timeout=8)
    assert gw.proc.poll() is None


def test_sigterm_leaves_no_session_process_running(gateway, tmp_path, markers):
    """SIGTERM with sessions open: the gateway exits 0 and none of their processes remain."""
    gw = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions(gw, markers, stack)
            return await asyncio.to_thread(gw.stop, signal.SIGTERM)

    assert run(scenario()) == 0
    assert_all_gone(markers, timeout=2)


def test_v1_stop_answers_200_exits_0_and_leaves_no_session_process_running(
        gateway, tmp_path, markers):
    """/v1/stop with sessions open: 200, then the gateway exits 0 and none of their
    processes remain."""
    gw = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions(gw, markers, stack)
            answer = await asyncio.to_thread(get, f"{gw.http_url}/v1/stop")
            return answer, await asyncio.to_thread(gw.proc.wait, 20)

    answer, code = run(scenario())
    assert answer[0] == 200
    assert code == 0
    assert_all_gone(markers, timeout=2)


def test_sigkill_orphans_are_ended_by_the_next_gateway_with_the_same_state_file(
        gateway, tmp_path, markers):
    """A SIGKILLed gateway leaves its sessions' processes running (orphans); the next
    gateway started with the same --state_file ends every one of them within seconds."""
    first = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions(first, markers, stack)
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)

    run(scenario())
    assert running(markers) == KINDS, "the SIGKILL itself ended session processes"
    second = start(gateway, tmp_path)
    assert_all_gone(markers, timeout=8)
    second.wait_for(r"previous run: leftover processes ended", timeout=5)
    assert second.proc.poll() is None


async def open_sessions_together(gw, markers, stack):
    """Reserve one session of each kind, then open all their WebSockets at once."""
    tokens = {kind: reserve(gw, kind, marker=m) for kind, m in markers.items()}
    sockets = await asyncio.gather(*(
        stack.enter_async_context(open_ws(session_url(gw, token))) for token in tokens.values()))
    for ws in sockets:
        await echo(ws)
    assert running(markers) == KINDS



def test_sessions_started_together_each_end_with_their_websocket(gateway, tmp_path, markers):
    """Sessions whose starts overlap: closing their WebSockets still ends all their
    processes, the daemon included, while the gateway runs on."""
    gw = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions_together(gw, markers, stack)

    run(scenario())
    assert_all_gone(markers, timeout=4)


def test_sessions_started_together_leave_nothing_after_sigkill_and_restart(
        gateway, tmp_path, markers):
    """Sessions whose starts overlap, then a gateway SIGKILL: the next gateway with the
    same --state_file ends all their processes, the daemon included."""
    first = start(gateway, tmp_path)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await open_sessions_together(first, markers, stack)
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)

    run(scenario())
    start(gateway, tmp_path)
    assert_all_gone(markers, timeout=4)
