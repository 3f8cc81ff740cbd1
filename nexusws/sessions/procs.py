"""Linux process facts from C{/proc}, and reaping of orphans.

Pure helpers without a reactor. A process is identified by its pid I{and} its
start time (field 22 of C{/proc/PID/stat}, in clock ticks since boot): pids are
reused, the pair is not. A zombie has exited, so it never counts as alive.

The gateway may make itself a child subreaper (L{become_subreaper}): a
process that a session's program daemonizes (double fork) is then re-parented
to the gateway instead of init, so it stays among the gateway's descendants,
where it can be found and ended; L{reap_orphans} collects such processes once
they die, without taking a child whose owner (Twisted, a C{subprocess.Popen})
waits for it.
"""

import collections
import ctypes
import gc
import os
import resource
import subprocess
import sys

from nexusws.logs import logger

_log = logger("nexusws.procs")

PROC = "/proc"

#: prctl option making this process the reaper of its orphaned descendants.
PR_SET_CHILD_SUBREAPER = 36

#: States of a process that has exited (zombie, dead) but whose entry remains.
_GONE_STATES = frozenset("ZX")

ProcInfo = collections.namedtuple(
    "ProcInfo", ["pid", "ppid", "pgid", "sid", "state", "start_time", "cmdline"]
)
ProcInfo.__doc__ = """What C{/proc} says about one process.

@ivar state: the one-letter state (C{R}, C{S}, C{D}, C{Z}...).
@ivar start_time: clock ticks after boot at which the process started.
@ivar cmdline: its arguments joined by spaces, or C{[comm]} when it has none
    (a zombie or a kernel thread), as C{ps} shows it.
"""


def parse_stat(text):
    """Parse the text of C{/proc/PID/stat} into a L{ProcInfo} without a cmdline.

    The second field, the command name, is in parentheses and may itself hold
    spaces and parentheses, so the fields after it start at the I{last} C{)}.

    @raise ValueError: C{text} is not a stat line.
    """
    head, sep, tail = text.rpartition(")")
    pid_text, open_paren, comm = head.partition(" (")
    if not sep or not open_paren:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    fields = tail.split()
    # fields[0] is field 3 of proc(5): state, ppid, pgrp, session, ... starttime (22).
    return ProcInfo(
        pid=int(pid_text),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        state=fields[0],
        start_time=int(fields[19]),
        cmdline=f"[{comm}]",
    )


def _read(pid, name):
    # os.open and os.read: half the cost of open() (a pass over /proc reads a file a process).
    try:
        fd = os.open(f"{PROC}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    # Gone, or never was, or hidden from us: all mean "no such process" here.
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except ProcessLookupError:  # it exited between the open and the read
        return None
    finally:
        os.close(fd)


def _stat(pid):
    data = _read(pid, "stat")
    if data is None:
        return None
    return parse_stat(data.decode("utf-8", "replace"))


def start_time(pid):
    """Return when process C{pid} started (clock ticks since boot), or None if there is none."""
    stat = _stat(pid)
    return None if stat is None else stat.start_time


def info(pid):
    """Return a L{ProcInfo} for C{pid}, or None if there is no such process."""
    stat = _stat(pid)
    if stat is None:
        return None
    raw = _read(pid, "cmdline") or b""
    args = raw.rstrip(b"\0").split(b"\0") if raw else []
    cmdline = " ".join(a.decode("utf-8", "replace") for a in args)
    return stat._replace(cmdline=cmdline) if cmdline else stat


def _stats():
    """The stat of every process (cmdline: C{[comm]}): cheaper than L{all_processes}."""
    for name in os.listdir(PROC):
        # A process may exit between listdir and the read: skip it.
        stat = _stat(int(name)) if name.isdigit() else None
        if stat is not None:
            yield stat


def boot_id():
    """This boot's id (Linux: C{/proc/sys/kernel/random/boot_id}), or None. A process
    recorded in another boot is gone, whatever pid and start time it had."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def stat_table():
    """A dict pid -> L{ProcInfo} without cmdlines: half the reads of L{all_processes}."""
    return {stat.pid: stat for stat in _stats()}


def all_processes():
    """Return a dict pid -> L{ProcInfo} of every process visible in C{/proc}."""
    table = {}
    for stat in _stats():
        entry = info(stat.pid)
        if entry is not None:
            table[entry.pid] = entry
    return table


def descendants(pid, table=None):
    """Return the pids of all descendants of C{pid} (children, their children...).

    @param table: a dict pid -> L{ProcInfo} (L{all_processes}, L{stat_table}), to
        reuse one snapshot; read afresh (stat only) if None.
    """
    if table is None:
        table = stat_table()
    children = collections.defaultdict(list)
    for entry in table.values():
        children[entry.ppid].append(entry.pid)
    found = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child != pid:
                found.add(child)
                todo.append(child)
    return found


def is_alive(entry):
    """Whether the L{ProcInfo} C{entry} describes a process that has not exited."""
    return entry is not None and entry.state not in _GONE_STATES


def same_process(pid, start_time):
    """Whether C{pid} is alive and is still the process that started at C{start_time}.

    A pid reused by another process has another start time; a zombie has
    exited. An unknown start time (None) proves nothing, so it gives False.
    """
    if start_time is None:
        return False
    stat = _stat(pid)
    return is_alive(stat) and stat.start_time == start_time


def group_alive(pgid, table=None):
    """Whether process group C{pgid} has a member that has not exited."""
    entries = _stats() if table is None else table.values()
    return any(p.pgid == pgid and is_alive(p) for p in entries)


def family(roots, table=None):
    """The live processes that ending C{roots} should end, as a dict pid -> start time.

    That is each root that is still the same process (see L{same_process}), its
    descendants and, if it leads a session, the other members of its session.
    This process itself is never included.

    @param roots: a dict pid -> start time.
    """
    table = all_processes() if table is None else table
    found = {}
    for pid, started in roots.items():
        entry = table.get(pid)
        if not is_alive(entry) or entry.start_time != started:
            continue
        found[pid] = started
        members = descendants(pid, table)
        if entry.sid == pid:
            members |= {p.pid for p in table.values() if p.sid == pid}
        found.update((m, table[m].start_time) for m in members if is_alive(table[m]))
    found.pop(os.getpid(), None)
    return found


def become_subreaper():
    """Make this process the reaper of its orphaned descendants (Linux prctl).

    @return: True if done; False where the system does not support it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    if result != 0:
        _log.debug("prctl(PR_SET_CHILD_SUBREAPER): {e}", e=os.strerror(ctypes.get_errno()))
        return False
    return True


def reap_orphans(known_pids=()):
    """Collect (waitpid) zombie children of this process that nobody else waits for.

    Twisted reaps the children it spawned only by their pids; orphans re-parented
    to a subreaper would stay zombies forever without this. Children whose
    owners need their exit status are left alone: those Twisted waits for
    (C{twisted.internet.process.reapProcessHandlers}), those of live
    C{subprocess.Popen} objects (a service script may use them) and C{known_pids}.

    @return: the pids reaped.
    """
    # Imported here: procs stays importable without Twisted's process support.
    from twisted.internet.process import reapProcessHandlers

    me = os.getpid()
    zombies = [p for p in _stats() if p.ppid == me and p.state == "Z"]
    skip = set(known_pids) | set(reapProcessHandlers)
    if any(p.pid not in skip for p in zombies):
        skip |= _popen_pids()
    reaped = []
    for entry in zombies:
        if entry.pid in skip:
            continue
        try:
            pid, _ = os.waitpid(entry.pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped by someone else meanwhile
        if pid:
            _log.debug("reaped orphan {pid} ({cmdline})", pid=pid, cmdline=entry.cmdline)
            reaped.append(pid)
    return reaped


def _popen_pids():
    """Pids of the C{subprocess.Popen} objects that have not collected their child's status."""
    return {
        obj.pid for obj in gc.get_objects()
        if isinstance(obj, subprocess.Popen) and obj.returncode is None
    }


def environ_has(pid, entry):
    """Whether process C{pid}'s environment holds C{entry} (bytes, C{NAME=value}).

    False when the process is gone or its environment cannot be read.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


#: The gateway's own secrets and systemd's socket-activation variables: a
#: child must not see them (the token would let a session script call /v1/stop).
GATEWAY_ONLY_ENV = ("WEBSOCKETSERVER_SECURITY_TOKEN", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def child_environment(env):
    """A copy of C{env} without L{GATEWAY_ONLY_ENV}."""
    return {k: v for k, v in env.items() if k not in GATEWAY_ONLY_ENV}


#: The soft open-files limit the gateway started with, once it raised its own
#: (L{raise_open_files_limit}): what the programs it starts get back.
CHILD_NOFILE_ENV = "NEXUSWS_CHILD_NOFILE"
child_nofile = None


def open_files_hard_limit():
    """The hard RLIMIT_NOFILE, or None if unlimited."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def raise_open_files_limit(getrlimit=resource.getrlimit, setrlimit=resource.setrlimit):
    """Raise the soft RLIMIT_NOFILE to the hard limit (each tunnel holds two
    descriptors); return C{(old, new)} soft limits. Programs started later get
    the old limit back (see L{nexusws.sessions.wrapping.SETSID_WRAPPER}): some select()
    or loop over every possible descriptor."""
    global child_nofile
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        child_nofile = soft
        return soft, hard
    return soft, soft
