"""Crash safety of sessions: what the state file records, when, and what a restart makes of it.

  - A child is recorded in the state write that follows its spawn: a SIGKILL of
    the gateway right after it, and a restart with the same state file, end it.
  - A change the state file cannot record is refused (503), the outage logged
    once when it begins and once when it ends (in memory, a writer that fails).
  - Hostile records in the state file are dropped (with a warning naming the
    line), the API keeps answering, their processes are still ended.
  - A daemon that leaves its session and clears its environment while other
    instances start stays its instance's (under its supervisor) and ends with it.
"""

import asyncio
import contextlib
import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from nexusws.sessions import procs
from nexusws.sessions.backend import NOT_RECORDED, StartFailure
from nexusws.sessions.keeper import SessionsService
from nexusws.sessions.statefile import StateFile
from support.api import Api
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
    state_path,
)
from support.waiting import wait_until

HERE = Path(__file__).resolve().parent / "crash"


def config(tmp_path, **services):
    """A service config: {name: (script file in tests/crash, count)}."""
    path = tmp_path / "services.json"
    path.write_text(json.dumps({name: {"script": str(HERE / script), "count": count, "options": {}}
                                for name, (script, count) in services.items()}))
    return path


@pytest.fixture
def markers():
    made = []

    def make():
        made.append(new_marker())
        return made[-1]

    yield make
    for m in made:
        kill_marked(m)


# --- 7: a child is recorded as soon as it is spawned --------------------------------


def test_a_child_spawned_just_before_a_gateway_sigkill_is_ended_by_the_restart(
        gateway, tmp_path, markers):
    """The state file used to record an instance's processes only when the watcher
    next ran (every 2 s): a SIGKILL in the first moments of a start leaked them."""
    marker = markers()
    args = gateway_args(tmp_path, config=config(tmp_path, slow=("slow_start.py", 1)))
    first = gateway(args, http=True)
    token = reserve(first, "slow", marker=marker)

    async def scenario():
        async with open_ws(session_url(first, token)):
            await asyncio.to_thread(wait_until, lambda: marked(marker), 10, "the child spawned")
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)

    with contextlib.suppress(Exception):  # the WebSocket dies with the gateway
        run(scenario())
    assert marked(marker), "the SIGKILL itself ended the child"
    second = gateway(args, http=True)
    assert_gone(marker, timeout=8, what="the child spawned before the SIGKILL")
    second.wait_for(r"previous run: leftover processes ended")


# --- 9: a change that cannot be recorded is refused ----------------------------------


class FullDisk(StateFile):
    """A state file whose writes fail with ENOSPC while C{full}."""

    full = False

    def write(self, data):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda level: [formatEvent(e) for e in events
                         if e.get("log_level") == level and "state file" in formatEvent(e)]
    globalLogPublisher.removeObserver(events.append)


def full_disk_api(tmp_path):
    api = Api(tmp_path / "www")
    (tmp_path / "www").mkdir(exist_ok=True)
    statefile = FullDisk(tmp_path / "state.json")
    sessions = SessionsService(api.registry, statefile, api.clock, launchers=[])
    api.registry.on_change = sessions.save
    return api, statefile


@pytest.mark.errors_expected  # the outage is logged as an error, once
def test_reservations_the_state_file_cannot_record_are_refused_503_and_not_kept(tmp_path, logged):
    """A full disk: /v1/reserve kept answering 200 while nothing was written (3 of 8
    tokens survived a restart) and only the first failure was logged."""
    api, statefile = full_disk_api(tmp_path)
    kept = [api.reserve()]
    api.services[0].count = 20
    statefile.full = True
    for _ in range(8):
        r = api.get("/v1/reserve/demo")
        assert r.status == 503, r.raw
        assert r.json()["error"] == ("reservation refused: the session state cannot be recorded "
                                     "(No space left on device)")
    assert list(api.live()) == kept, "no refused reservation is kept"
    statefile.full = False
    kept.append(api.reserve())
    statefile.full = True
    assert api.get("/v1/reserve/demo").status == 503
    statefile.full = False
    kept.append(api.reserve())
    errors, infos = logged(LogLevel.error), logged(LogLevel.info)
    assert len(errors) == 2 and all("No space left on device" in e for e in errors), errors
    assert len(infos) == 2 and all("can be written again" in i for i in infos), infos
    saved = StateFile(tmp_path / "state.json").read()
    assert sorted(r["token"] for r in saved["reservations"]) == sorted(kept), (
        "every token answered 200 survives a restart")


@pytest.mark.errors_expected  # the outage is logged as an error, once
def test_an_unused_reservation_is_neither_released_nor_started_while_it_cannot_be_recorded(
        tmp_path):
    api, statefile = full_disk_api(tmp_path)
    token = api.reserve()
    statefile.full = True
    r = api.get(f"/v1/release/{token}")
    assert r.status == 503 and "cannot be recorded" in r.json()["error"]
    failures = []
    api.registry.activate(token).addErrback(failures.append)
    (failure,) = failures
    assert failure.check(StartFailure) and "not started" in str(failure.value)
    assert failure.value.what == NOT_RECORDED and "cannot be recorded" in failure.value.why
    assert api.services[0].starts == [], "nothing started that a crash could leak"
    assert api.live() == {token: ("demo", 0, "reserved")}, "the token stays usable"
    statefile.full = False
    assert api.get(f"/v1/release/{token}").status == 200
    assert StateFile(tmp_path / "state.json").read()["reservations"] == []


# --- 10: hostile records -------------------------------------------------------------


def test_hostile_records_are_dropped_the_api_answers_and_their_processes_are_ended(
        gateway, tmp_path, popen, markers):
    """`created` NaN or 1e20 made /v1/status, /v1/status_view and /v1/reserve answer 500."""
    marker = markers()
    sleeper = popen([sys.executable, "-c", "import time; time.sleep(300)", marker],
                    start_new_session=True)
    wait_until(lambda: procs.start_time(sleeper.pid), 5, "the sleeper started")
    now = time.time()

    def record(token, index, **more):
        return {"token": token, "service": "slow", "index": index, "options": {}, "user": None,
                "state": "reserved", "created": now - 5, "pids": [], **more}

    def hostile_index(**more):  # a text where a number belongs
        return {**record("active-token", 3, **more), "index": "3"}

    lines = [
        {"version": 2, "data": {"reservations": [record("good-token", 0)], "orphans": []}},
        {"put": [record("nan-token", 1, created=float("nan"))]},
        {"put": [record("far-token", 2, created=1e20)]},
        {"put": [hostile_index(state="active",
                               pids=[[sleeper.pid, procs.start_time(sleeper.pid)]])]},
    ]
    state_path(tmp_path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = gateway_args(tmp_path, config=config(tmp_path, slow=("slow_start.py", 8)))
    gw = gateway(args, http=True)
    status, listing = get(f"{gw.http_url}/v1/status")
    assert status == 200, listing
    assert [i["token"] for i in listing[0]["instances"]] == ["good-token"]
    view = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           f"{gw.http_url}/v1/status_view"], capture_output=True, text=True)
    assert view.stdout == "200"
    assert reserve(gw, "slow")
    for line, problem in [(2, "created nan"), (3, "created 1e+20"), (4, "index 3")]:
        gw.wait_for(rf"state file .*state\.json line {line}: dropped a reservation record "
                    rf"\({re.escape(problem)} ")
    gw.wait_for(r"line 4: .*; its 1 process\(es\) will be ended")
    assert_gone(marker, timeout=8, what="the process of a dropped record")


# --- 8: a damaged file keeps its well-formed records; an unreadable one stops start-up --


def test_a_damaged_state_file_keeps_its_reservations_and_ends_its_processes(
        gateway, tmp_path, popen, markers):
    """Damage other than a cut last line used to discard the file whole."""
    marker = markers()
    sleeper = popen([sys.executable, "-c", "import time; time.sleep(300)", marker],
                    start_new_session=True)
    wait_until(lambda: procs.start_time(sleeper.pid), 5, "the sleeper started")
    reserved = {"token": "kept-token", "service": "slow", "index": 0, "options": {}, "user": None,
                "state": "reserved", "created": time.time() - 5, "pids": []}
    path = state_path(tmp_path)
    path.write_bytes(
        json.dumps({"version": 2, "data": {"reservations": [reserved], "orphans": []}}).encode()
        + b"\n" + json.dumps({"set": {"orphans": [[sleeper.pid, procs.start_time(sleeper.pid)]]}}).encode()
        + b"\n\x00\x00\x00\x00 power loss \xff\n" + json.dumps({"put": []}).encode() + b"\n")
    args = gateway_args(tmp_path, config=config(tmp_path, slow=("slow_start.py", 2)))
    gw = gateway(args, http=True)
    gw.wait_for(r"state file .*state\.json is not UTF-8 text at line 3: moved aside to .*corrupt-")
    status, listing = get(f"{gw.http_url}/v1/status")
    assert [i["token"] for i in listing[0]["instances"]] == ["kept-token"]
    assert_gone(marker, timeout=8, what="a process the damaged file recorded")
    assert list(tmp_path.glob("state.json.corrupt-*")), "kept for inspection"


def test_an_unreadable_state_file_stops_start_up_with_one_line_naming_it(gateway, tmp_path):
    """It used to be moved aside like a corrupt one, the previous run's processes never
    ended. As root every file is readable: a gateway under setpriv runs as nobody."""
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs util-linux setpriv")
    import os
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="nexusws-unreadable-"))
    try:
        path = base / "state.json"
        path.write_text("{}\n")
        os.chmod(path, 0)
        if os.geteuid() != 0:
            via = None
        else:  # nobody's own directory and file (anyone else's would be refused as such)
            os.chown(base, 65534, 65534)
            os.chown(path, 65534, 65534)
            via = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   str(Path(sys.executable).parent / "nexus-websocketserver")]
        args = ["--ws_listen", "tcp:0:interface=127.0.0.1", "--state_file", str(path),
                "--local_session", "ensight", "1"]
        gw = gateway(args, via=via or "cli", wait=False, cwd=str(base))
        code = gw.proc.wait(30)
        gw._reader.join(5)
        assert code != 0
        lines = [line for line in gw.lines if "state file" in line]
        assert len(lines) == 1 and f"state file {path}: cannot be read: Permission denied" in lines[0], gw.log
        assert path.exists() and not list(base.glob("state.json.corrupt-*"))
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --- 11: a daemon that drops the instance marker while another instance starts ------


def test_a_daemon_that_drops_its_marker_during_another_start_ends_with_its_own_instance(
        gateway, tmp_path, markers):
    """It belonged to no instance and lived until the gateway stopped; under its
    program's supervisor it stays its instance's, and ends with it, while the
    other instance's daemon runs on."""
    ours, theirs = markers(), markers()
    args = gateway_args(tmp_path, config=config(tmp_path, daemon=("escaping_daemon.py", 2)))
    gw = gateway(args, http=True)
    a = reserve(gw, "daemon", marker=ours, delay="1.0")
    b = reserve(gw, "daemon", marker=theirs, delay="1.0")

    async def scenario():
        async with open_ws(session_url(gw, b)) as wb:
            async with open_ws(session_url(gw, a)) as wa:  # both starts overlap
                await asyncio.gather(echo(wa), echo(wb))
                assert len(marked(ours)) == 1 and len(marked(theirs)) == 1
            await asyncio.to_thread(assert_gone, ours, 4, "the daemon of the closed instance")
            assert len(marked(theirs)) == 1, "the other instance's daemon runs on"
            await echo(wb)

    run(scenario())
    assert_gone(theirs, timeout=4, what="the daemon of the second instance")
    assert gw.proc.poll() is None


def test_the_shutdown_sweep_looks_again_until_no_process_is_left(tmp_path, monkeypatch):
    """A program that forks anew as its processes are ended: each sweep finds new pids
    below the gateway; the sweep goes on (SIGKILL at once after the first) until none."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from nexusws.sessions import stopping

    generations = [{(101, 1.0)}, {(102, 2.0)}, {(103, 3.0)}, set()]
    swept = []
    monkeypatch.setattr(SessionsService, "_descendants",
                        staticmethod(lambda: generations[len(swept)] if len(swept) < 4 else set()))

    def kill_processes(reactor, procs, grace):
        swept.append((sorted(procs), grace))
        return defer.succeed([])

    monkeypatch.setattr(stopping, "kill_processes", kill_processes)
    from types import SimpleNamespace

    kept = {104: 4.0}  # a session kept running (--keep_sessions): never swept
    generations[0].add((104, 4.0))
    registry = SimpleNamespace(kept_processes=lambda: kept)
    sessions = SessionsService(registry, StateFile(str(tmp_path / "state.json")), Clock(),
                               kill_grace=5.0, launchers=[])
    sessions._sweep()
    assert swept == [([(101, 1.0)], 5.0), ([(102, 2.0)], 0), ([(103, 3.0)], 0)]
