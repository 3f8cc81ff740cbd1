"""nexusws.sessions.procs: /proc parsing, process identity, descendants, subreaper, orphan reaping.

Most tests read /proc about real processes this test starts; the subreaper and
reaping tests run in a program of their own (tests/programs/proc_reap.py),
because making pytest a subreaper would change it for every later test.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require
from nexusws.sessions import procs
from nexusws.sessions.procs import ProcInfo
from support.waiting import wait_until

PROGRAMS = Path(__file__).parent / "programs"
NO_SUCH_PID = 4_999_999  # above the kernel's highest possible pid_max (2**22)


def run_program(*args):
    proc = subprocess.run(
        [sys.executable, str(PROGRAMS / "proc_reap.py"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


# --- parsing ------------------------------------------------------------------


def _stat_line(comm, state="S", ppid=10, pgid=11, sid=12, start=987654):
    rest = [state, ppid, pgid, sid, 0, -1, 4194560] + [0] * 12 + [start] + [0] * 30
    return f"4242 ({comm}) " + " ".join(map(str, rest)) + "\n"


@pytest.mark.parametrize("comm", ["sleep", "a b", "x) R 1 2 3 (y", "((", "))", ") (", ""])
def test_parse_stat_splits_at_the_last_parenthesis_whatever_the_command_name(comm):
    assert procs.parse_stat(_stat_line(comm)) == ProcInfo(
        pid=4242, ppid=10, pgid=11, sid=12, state="S", start_time=987654, cmdline=f"[{comm}]"
    )


def test_parse_stat_rejects_text_that_is_not_a_stat_line():
    with pytest.raises(ValueError):
        procs.parse_stat("4242 sleep S 1 2 3")


def test_info_reads_a_real_process_whose_name_holds_parentheses_and_spaces(tmp_path, popen):
    """A name crafted to fool a parser that splits at the first ')': state Q, parent 1."""
    program = tmp_path / "sl) Q 1 2 (x"
    program.symlink_to(shutil.which("sleep"))
    p = popen([str(program), "30"])
    wait_until(lambda: procs.info(p.pid) is not None and procs.info(p.pid).cmdline.endswith(" 30"),
               10, "the child has exec'd its command line", interval=0.01)
    entry = procs.info(p.pid)
    assert entry.pid == p.pid
    assert entry.ppid == os.getpid()
    assert entry.pgid == os.getpgid(0) and entry.sid == os.getsid(0)
    assert entry.state in ("R", "S")
    assert entry.cmdline == f"{program} 30"
    assert entry.start_time == procs.start_time(p.pid) > 0


def test_info_reports_session_and_group_of_a_process_in_a_new_session(popen):
    p = popen(["sleep", "30"], start_new_session=True)
    wait_until(lambda: procs.info(p.pid).sid == p.pid, 10, "the child leads its own session", interval=0.01)
    entry = procs.info(p.pid)
    assert (entry.pgid, entry.sid) == (p.pid, p.pid)


def test_a_process_that_does_not_exist_has_no_info_and_no_start_time():
    assert procs.info(NO_SUCH_PID) is None
    assert procs.start_time(NO_SUCH_PID) is None


def test_start_time_is_fixed_for_a_process_and_later_for_a_later_process(popen):
    mine = procs.start_time(os.getpid())
    time.sleep(0.05)  # start times count clock ticks (usually 1/100 s)
    p = popen(["sleep", "30"])
    assert procs.start_time(os.getpid()) == mine
    assert procs.start_time(p.pid) > mine


def test_all_processes_includes_this_process_and_its_parent():
    table = procs.all_processes()
    assert table[os.getpid()].ppid == os.getppid()
    assert os.getppid() in table
    assert table[os.getpid()] == procs.info(os.getpid())


# --- descendants ----------------------------------------------------------------


def _entry(pid, ppid):
    return ProcInfo(pid, ppid, pid, pid, "S", 0, "")


def test_descendants_follows_the_parent_chain_and_ignores_other_branches():
    table = {p.pid: p for p in [_entry(1, 0), _entry(10, 1), _entry(11, 10), _entry(12, 11),
                                _entry(13, 10), _entry(20, 1), _entry(21, 20)]}
    assert procs.descendants(10, table) == {11, 12, 13}
    assert procs.descendants(12, table) == set()
    assert procs.descendants(1, table) == {10, 11, 12, 13, 20, 21}
    assert procs.descendants(99, table) == set()


def test_descendants_of_a_real_shell_are_its_background_children(popen):
    p = popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    wait_until(lambda: len(procs.descendants(p.pid)) == 2, 10, "both children started", interval=0.01)
    children = procs.descendants(p.pid)
    table = procs.all_processes()
    assert {table[c].cmdline for c in children} == {"sleep 30"}
    assert {p.pid} | children <= procs.descendants(os.getpid())


# --- identity -------------------------------------------------------------------


def test_same_process_is_true_for_the_live_process_with_its_start_time(popen):
    p = popen(["sleep", "30"])
    assert procs.same_process(p.pid, procs.start_time(p.pid))


def test_same_process_is_false_when_the_start_time_differs_as_after_pid_reuse(popen):
    p = popen(["sleep", "30"])
    started = procs.start_time(p.pid)
    assert not procs.same_process(p.pid, started - 1)
    assert not procs.same_process(p.pid, started + 1)


def test_same_process_is_false_without_a_start_time(popen):
    p = popen(["sleep", "30"])
    assert not procs.same_process(p.pid, None)


def test_a_zombie_is_not_the_same_process_any_more(popen):
    p = popen(["true"])
    started = procs.start_time(p.pid)
    # exited, not yet waited for
    wait_until(lambda: procs.info(p.pid).state == "Z", 10, "the child is a zombie", interval=0.01)
    assert procs.start_time(p.pid) == started
    assert not procs.same_process(p.pid, started)


def test_a_process_that_is_gone_is_not_the_same_process(popen):
    p = popen(["true"])
    started = procs.start_time(p.pid)
    p.wait()
    assert not procs.same_process(p.pid, started)


# --- subreaper and reaping (in a program of their own) ---------------------------


def test_become_subreaper_makes_orphaned_grandchildren_children_of_this_process():
    result = run_program("subreaper")
    assert result["became"] is True
    assert result["ppid_before"] != result["me"]
    assert result["ppid_after"] == result["me"]


def test_reap_orphans_reaps_dead_orphans_only_never_a_child_someone_waits_for():
    result = run_program("reap")
    assert result["reaped"] == [result["dead_orphan"]]
    assert result["states"] == {
        "dead_orphan": None,  # reaped: gone from /proc
        "live_orphan": "S",  # alive: not touched
        "known": "Z",  # in known_pids: left for its owner
        "watched": "Z",  # in Twisted's reapProcessHandlers: left for Twisted
        "popen": "Z",  # a live subprocess.Popen's: left for it
    }
    assert result["popen_status"] == 5  # so Popen.wait still gets the real exit status


def test_reap_orphans_leaves_a_known_zombie_child_so_its_owner_gets_its_exit_status(popen):
    p = popen(["sh", "-c", "exit 7"])
    wait_until(lambda: procs.info(p.pid).state == "Z", 10, "the child is a zombie", interval=0.01)
    assert procs.reap_orphans([p.pid]) == []
    assert p.wait(5) == 7


def test_group_alive_while_a_member_runs_and_not_once_only_a_zombie_is_left(popen):
    p = popen(["sleep", "30"], start_new_session=True)
    wait_until(lambda: procs.info(p.pid).pgid == p.pid, 10, "the child leads its own group", interval=0.01)
    assert procs.group_alive(p.pid)
    p.kill()
    wait_until(lambda: procs.info(p.pid).state == "Z", 10, "the child is a zombie", interval=0.01)
    assert not procs.group_alive(p.pid)


def test_environ_has_finds_an_exact_entry_of_a_live_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, "NEXUSWS_INSTANCE": "abc123"})
    try:
        wait_until(lambda: procs.environ_has(child.pid, b"NEXUSWS_INSTANCE=abc123"), 5,
                   "the entry shows in /proc/PID/environ", interval=0.01)
        assert not procs.environ_has(child.pid, b"NEXUSWS_INSTANCE=abc")
    finally:
        child.kill()
        child.wait()
    assert not procs.environ_has(child.pid, b"NEXUSWS_INSTANCE=abc123"), "a gone process has none"


# --- the open-files limit ----------------------------------------------------------


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(monkeypatch):
    monkeypatch.setattr(procs, "child_nofile", None)
    limits = {}
    assert procs.raise_open_files_limit(lambda r: (1024, 524288), lambda r, v: limits.update(set=v)) == (
        1024, 524288)
    assert limits == {"set": (524288, 524288)} and procs.child_nofile == 1024
    monkeypatch.setattr(procs, "child_nofile", None)
    assert procs.raise_open_files_limit(lambda r: (4096, 4096), lambda r, v: limits.update(again=v)) == (
        4096, 4096)
    assert "again" not in limits and procs.child_nofile is None


def test_started_programs_get_the_original_limit_back_and_never_see_the_variable():
    from nexusws.sessions.wrapping import SETSID_WRAPPER

    env = {**os.environ, procs.CHILD_NOFILE_ENV: "100"}
    out = subprocess.run([sys.executable, "-c", SETSID_WRAPPER, "sh", "-c", "ulimit -n; env"],
                         env=env, capture_output=True, text=True, timeout=20).stdout.splitlines()
    assert out[0] == "100"
    assert not any(line.startswith(procs.CHILD_NOFILE_ENV + "=") for line in out)


def test_a_running_gateway_raises_its_open_files_limit(gateway):
    import resource

    from conftest import BIN

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    require(hard > 512, "a hard open-files limit above 512")
    # Started, as systemd starts services, with a low soft limit (512).
    low = ["sh", "-c", 'ulimit -S -n 512 && exec "$0" "$@"', str(BIN / "nexus-websocketserver")]
    gw = gateway(["--ws_listen", "tcp:0:interface=127.0.0.1", "--client_port", "1"], via=low)
    with open(f"/proc/{gw.proc.pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)]
    gw.wait_for(rf"open files limit raised from 512 to {hard}")


def test_start_up_warns_when_max_tunnels_exceeds_the_open_files_limit(monkeypatch):
    from nexusws import assemble, tap

    monkeypatch.setattr(procs, "open_files_hard_limit", lambda: 1024)
    notes = []
    for count, warned in (("480", False), ("481", True), ("0", False)):
        options = tap.Options()
        options.parseOptions(["--client_port", "1", "--max_tunnels", count, "9090"])
        del notes[:]
        assemble.make_bridge(options, None, None, notes)
        assert any("open files and the limit is 1024" in n for n in notes) is warned, count
