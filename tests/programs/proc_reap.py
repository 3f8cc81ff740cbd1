"""Subreaper and orphan-reaping scenarios for nexusws.sessions.procs, in a process of their own.

`python proc_reap.py subreaper|reap` prints one JSON object. Run apart from
pytest because a subreaper collects every orphan below it for good.
"""

import json
import os
import signal
import subprocess
import sys
import time

from twisted.internet import process as twisted_process

from nexusws.sessions import procs


def child(delay):
    """Fork a child that exits after C{delay} seconds; return its pid."""
    pid = os.fork()
    if pid == 0:
        time.sleep(delay)
        os._exit(0)
    return pid


def orphan(delay):
    """Fork a grandchild that exits after C{delay} seconds and whose parent has exited."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        os.write(w, str(child(delay)).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 100))
    os.close(r)
    os.waitpid(middle, 0)
    return pid


def wait_state(pids, state, timeout=10.0):
    deadline = time.monotonic() + timeout
    while any((procs.info(p) or procs.ProcInfo(p, 0, 0, 0, "?", 0, "")).state != state for p in pids):
        if time.monotonic() > deadline:
            raise SystemExit(f"not all of {pids} reached state {state}")
        time.sleep(0.01)


def state(pid):
    entry = procs.info(pid)
    return entry.state if entry else None


def subreaper():
    me = os.getpid()
    before = orphan(0.2)
    ppid_before = procs.info(before).ppid
    became = procs.become_subreaper()
    after = orphan(0.2)
    ppid_after = procs.info(after).ppid
    wait_state([after], "Z")
    os.waitpid(after, 0)
    return {"me": me, "ppid_before": ppid_before, "became": became, "ppid_after": ppid_after}


class _Watched:
    """Stands for the process object Twisted registers for a child it spawned."""

    def processEnded(self, status):
        raise AssertionError("not reaped in this scenario")


def reap():
    procs.become_subreaper()
    dead_orphan = orphan(0.1)
    live_orphan = orphan(60)
    known = child(0.1)
    watched = child(0.3)
    twisted_process.registerReapProcessHandler(watched, _Watched())
    popen = subprocess.Popen(["sh", "-c", "exit 5"])
    wait_state([dead_orphan, known, watched, popen.pid], "Z")
    reaped = procs.reap_orphans([known])
    result = {
        "dead_orphan": dead_orphan,
        "reaped": reaped,
        "states": {
            "dead_orphan": state(dead_orphan),
            "live_orphan": state(live_orphan),
            "known": state(known),
            "watched": state(watched),
            "popen": state(popen.pid),
        },
        "popen_status": popen.wait(),
    }
    # Clean up after ourselves: nothing of this scenario outlives it.
    del twisted_process.reapProcessHandlers[watched]
    os.kill(live_orphan, signal.SIGKILL)
    for pid in (known, watched, live_orphan):
        os.waitpid(pid, 0)
    return result


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()), flush=True)
