"""The supervisor of one started program: what L{nexusws.sessions.launcher.Launcher.spawn} runs.

Run as C{python -I -S supervisor.py} (standard library only: it is not
imported); the launcher starts one ahead of need, a I{spare}, so a session's
start does not wait for an interpreter. It

  - starts a session of its own (its pid is then the session and process group
    id of everything the program starts that does not leave them),
  - becomes the child subreaper of its descendants (Linux C{PR_SET_CHILD_SUBREAPER}):
    a process the program daemonizes (double fork, new session, environment
    cleared) is re-parented to it, not to the gateway or init, so everything the
    program ever started stays below it, where it is found by walking the tree;
  - reads its command from stdin, to EOF: one JSON object C{{"argv", "env",
    "cwd", "nofile"}}, optionally C{"relay"} too (nothing: it exits 0, a spare
    dismissed); the program inherits that stdin, at its end, so it reads EOF;
  - runs the program (with C{nofile} as its soft open-files limit, unless null)
    with its own stdout and stderr (unless relaying, below); one line on stderr
    and exit status 127 when it cannot be started;
  - reaps every child until none is left, then ends as the program did (its exit
    code, or the signal that killed it): it lives while anything the program
    started lives;
  - on SIGTERM, SIGINT or SIGHUP passes the signal on to every descendant outside
    its process group (those inside got it with the group); SIGKILL ends it, and
    its orphans then go to the next subreaper up (the gateway);
  - runs the program with SIGPIPE ignored: one that outlives the gateway
    (C{--keep_sessions}) gets EPIPE writing to its output, not killed;
  - with C{"relay": true} in its command, I{relays} the program's output: the
    program gets fresh pipes as its stdout and stderr, and the supervisor copies
    what arrives on them to its own stdout and stderr (which the gateway reads and
    logs line by line, as without relaying). Once a write to its own stdout or
    stderr fails (the gateway has gone, C{--keep_sessions}), it goes on reading
    that pipe and discards the data: the program never sees a broken pipe (many
    runtimes, Python's among them, die of EPIPE: an uncaught C{BrokenPipeError}).
    It waits in C{select} on the two pipes and a pipe its SIGCHLD wakes it
    through (C{set_wakeup_fd}); once no child is left it reads what the pipes
    still hold, to their end, and ends as the program did. C{select} is imported
    only then (a shared library): a spare starts no slower.

C{signal} is not imported: its enums cost 4 ms at start; C{_signal} is enough.
"""

import _signal
import json
import os
import sys

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)
#: Bytes read from a relayed output pipe at a time.
CHUNK = 64 * 1024


def become_subreaper():
    """prctl(PR_SET_CHILD_SUBREAPER, 1) through _ctypes: 3 ms cheaper to import than ctypes."""
    try:
        import _ctypes

        prctl = _ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_NOW), "prctl")
        return _ctypes.call_function(prctl, (PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (ImportError, OSError, AttributeError):
        return False


def descendants(root):
    """The pids of every process below C{root}, from /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


started = False


def forward(number, frame):
    if not started:  # a spare, asked to end (a previous run's, at a restart)
        _signal.signal(number, _signal.SIG_DFL)
        os.kill(os.getpid(), number)
    group = os.getpgrp()
    for pid in descendants(os.getpid()):
        try:
            if os.getpgid(pid) != group:
                os.kill(pid, number)
        except OSError:
            pass  # gone meanwhile


def fail(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(127)


def start(command, file_actions=()):
    """Start the program C{command} describes (with C{file_actions}, as posix_spawn's); its pid."""
    argv = command["argv"]
    if command.get("cwd") is not None:
        try:
            os.chdir(command["cwd"])
        except OSError as e:
            fail(f"cannot change to directory {command['cwd']}: {e.strerror}")
    if command.get("nofile") is not None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(command["nofile"]), hard))
    try:
        # posix_spawn: a vfork, 2 ms cheaper than os.fork here; signals we catch
        # are reset to their default by the exec.
        return os.posix_spawnp(argv[0], argv, command["env"], file_actions=file_actions)
    except OSError as e:
        fail(f"cannot execute {argv[0]}: {e.strerror}")


def woken(number, frame):
    """SIGCHLD's handler: nothing to do but have a handler, so set_wakeup_fd writes its byte."""


def relay(command):
    """Start the program C{command} describes with pipes of its own as its stdout and
    stderr; copy what it writes on them to ours (or discard it, once ours are broken)
    and reap every child until none is left; the program's wait status (None if lost)."""
    import select  # not at start: a shared library, and only relaying needs it

    wake, waker = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(waker, warn_on_full_buffer=False)
    _signal.signal(_signal.SIGCHLD, woken)  # set before the start: no exit goes unnoticed
    targets, actions, ends = {}, [], []
    for target in (1, 2):
        read_end, write_end = os.pipe()  # both close-on-exec; dup2 clears it on the copy
        targets[read_end] = target
        actions.append((os.POSIX_SPAWN_DUP2, write_end, target))
        ends.append(write_end)
    child = start(command, actions)
    for write_end in ends:
        os.close(write_end)  # the pipes' ends, once all that write to them have gone
    broken = set()

    def copy(fd):
        """Read once from C{fd} and pass it on; False at its end (then it is closed)."""
        data = os.read(fd, CHUNK)
        if not data:
            os.close(fd)
            del targets[fd]
            return False
        target = targets[fd]
        if target not in broken:
            view = memoryview(data)
            try:
                while view:
                    try:
                        view = view[os.write(target, view):]
                    except BlockingIOError:  # our output is non-blocking: wait until it drains
                        select.select([], [target], [])
            except OSError:  # the gateway has gone: discard from now on
                broken.add(target)
        return True

    status = None
    while True:
        try:
            while True:
                pid, code = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                if pid == child:
                    status = code
        except ChildProcessError:
            break
        for fd in select.select([wake, *targets], [], [])[0]:
            if fd == wake:
                try:
                    while os.read(wake, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                copy(fd)
    # No child is left, so none holds a pipe: what they wrote is there (a pipe holds
    # 1 MiB at most, unprivileged), then the end. Without blocking, and bounded: a
    # process that is not our descendant may hold one (passed to it), even write on.
    for fd in targets:
        os.set_blocking(fd, False)
    for fd in list(targets):
        try:
            for _ in range(64):
                if not copy(fd):
                    break
        except BlockingIOError:
            pass
    return status


def main():
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    subreaper = become_subreaper()
    for number in FORWARDED:
        _signal.signal(number, forward)
    # The program inherits it ignored (an exec keeps ignored signals): a write to its
    # output fails with EPIPE, not kills it, once the gateway has gone (--keep_sessions).
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    raw = sys.stdin.buffer.read()  # waits, a spare, until the launcher has a program
    if not raw.strip():
        os._exit(0)
    if not subreaper:
        sys.stderr.write("nexusws supervisor: cannot become the child subreaper\n")
    global started
    started = True
    command = json.loads(raw)
    if command.get("relay"):
        status = relay(command)
    else:
        child = start(command)
        status = None
        while True:
            try:
                pid, code = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == child:
                status = code
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number in FORWARDED:  # SIGKILL and the like have no handler to reset (EINVAL)
            _signal.signal(number, _signal.SIG_DFL)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its core, if any, was the program's
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status) if status is not None else 127)


if __name__ == "__main__":
    main()
