"""The program inside a Slurm session job (issue 16): start the session, tell the gateway where it listens.

The Slurm backend (L{nexusws.sessions.slurm}) sends this file to C{sbatch} as
the job's script, a C{#!} line before it and a call of L{main} with the job's
parameters after it, so a node needs Python 3 and nothing of nexusws. It uses
the standard library only, and nothing of this file runs in the gateway.

In the job it:
  1. starts an X server first if asked (C{"xvfb": "WxHxD"}: Xvfb with a fresh
     MIT-MAGIC-COOKIE-1 in a 0600 file of a private directory, its display
     number from C{-displayfd});
  2. picks a free TCP port on the node, and a one-time VNC password if asked
     (C{"password": true}, in a 0600 file);
  3. starts C{"programs"} (argument lists; the first is the one that listens),
     each in a session of its own, after putting in C{{port}}, C{{host}},
     C{{display}}, C{{password_file}}, C{{user}} and C{{dir}} (the private directory);
  4. once C{host:port} accepts a connection, writes the I{connection file}
     C{<connection_dir>/<job id>.json} (mode 0600, written whole under another
     name and renamed): the job id, the per-job secret the gateway gave it,
     host, port and password; if a program or the X server ends first, or the
     port does not open within C{"ready_timeout"} seconds, the file says
     C{"error"} instead, and the job exits non-zero;
  5. runs until the first program ends (the job ends with its status) or the
     job is cancelled (SIGTERM: every program's session gets it, then SIGKILL
     after 5 s), and removes its private directory.

Its messages go to stderr: the job's output file, which the gateway shows
the last line of when a job ends before it reported.
"""

import json
import os
import re
import secrets
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time

#: Seconds between SIGTERM and SIGKILL for the job's programs.
GRACE = 5.0

#: Placeholders in the programs' arguments.
PLACEHOLDERS = ("port", "host", "display", "password_file", "user", "dir")
PLACEHOLDER = re.compile("\\{(" + "|".join(PLACEHOLDERS) + ")\\}")


class JobError(Exception):
    """Why the session could not start; one line, written to the connection file."""


def say(text):
    sys.stderr.write(f"nexusws job: {text}\n")
    sys.stderr.flush()


def xauthority(cookie):
    """An Xauthority file's bytes: C{cookie} for any display on any host (FamilyWild)."""
    def field(data):
        return struct.pack(">H", len(data)) + data
    return struct.pack(">H", 0xFFFF) + field(b"") + field(b"") + field(b"MIT-MAGIC-COOKIE-1") + field(cookie)


def private_file(directory, name, content):
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


def free_port(host):
    """A TCP port free on C{host}'s address (and on the others: bound on all of them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def listeners(port):
    """The socket inodes listening on TCP C{port} (any address), from /proc/net; None without it."""
    found, read = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if read else None


def descendants(root):
    """C{root} and every process below it (from /proc's parent ids)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def socket_inodes(pids):
    """The inodes of the sockets C{pids} hold open, and how many of C{pids} could not be read
    (gone meanwhile is no failure)."""
    inodes, unreadable = set(), 0
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except PermissionError:
            unreadable += 1
        except OSError:
            continue
    return inodes, unreadable


def write_connection_file(directory, job, content):
    """C{<directory>/<job>.json}, mode 0600, appearing whole (written under another name, renamed)."""
    final = os.path.join(directory, f"{job}.json")
    partial = os.path.join(directory, f".{job}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(partial, final)


class Job:
    def __init__(self, params, job_id):
        self.params, self.job_id = params, job_id
        self.children = []  # (name, Popen)
        self.stopping = False
        self.private = tempfile.mkdtemp(prefix="nexusws-job-")
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.host = params.get("host") or node
        self.values = {"host": self.host, "user": params.get("user") or "", "dir": self.private}
        self.env = dict(os.environ, NEXUSWS_USER=params.get("user") or "", NEXUSWS_JOB=job_id)
        self.password = None
        self.main = self.xvfb = None  # (name, Popen) of the listening program, of the X server

    def run(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._cancelled)
        try:
            try:
                self._start()
            except JobError as e:
                say(str(e))
                self._report({"error": str(e)})
                return 1
            status = self._wait()
            return status
        finally:
            self._end_all()
            for name in os.listdir(self.private):
                os.unlink(os.path.join(self.private, name))
            os.rmdir(self.private)

    def _cancelled(self, signum, frame):
        if not self.stopping:
            say(f"signal {signum}: ending the session")
        self.stopping = True

    def _start(self):
        if self.params.get("xvfb"):
            self._start_x(self.params["xvfb"])
        self.values["port"] = str(free_port(self.host))
        if self.params.get("password"):
            alphabet = string.ascii_letters + string.digits
            self.password = "".join(secrets.choice(alphabet) for _ in range(8))  # VNC auth: 8 at most
            self.values["password_file"] = private_file(self.private, "vnc-password",
                                                        self.password.encode() + b"\n")
        programs = self.params["programs"]
        for argv in programs:
            argv = [self._fill(arg) for arg in argv]
            self.children.append((os.path.basename(argv[0]), self._spawn(argv)))
            self.main = self.main or self.children[-1]
        port = int(self.values["port"])
        deadline = time.monotonic() + float(self.params.get("ready_timeout", 60))
        while not accepts(self.host, port):
            self._check_alive(f"before {self.host}:{port} accepted connections")
            if time.monotonic() > deadline:
                raise JobError(f"{self.host}:{port} did not accept connections within "
                               f"{self.params.get('ready_timeout', 60)} s")
            time.sleep(0.005)  # a connect to a port nobody listens on costs microseconds
        self._check_alive("")
        taken = self._taken_by_another(port)
        if taken:
            raise JobError(taken)
        self._report({"host": self.host, "port": port, "password": self.password})
        say(f"ready at {self.host}:{port}")

    def _taken_by_another(self, port):
        """Why the listener on C{port} is not this job's (another user of the node bound it
        first), or None: it is held by the job's own processes, or /proc cannot tell."""
        listening = listeners(port)
        if listening is None:
            return None  # no /proc/net: nothing to check against
        ours, unreadable = socket_inodes(descendants(os.getpid()))
        # Every listener on the port must be the job's: one of another user's on 127.0.0.1 beside
        # the job's on [::] (a program that binds each family on its own) would get the session.
        if listening - ours:
            if unreadable:  # a program of the job's whose sockets cannot be seen (not dumpable)
                say(f"port {port}: cannot tell whose every listener is ({unreadable} process(es) "
                    f"of the job not readable); reporting it")
                return None
            return (f"port {port} on {self.host} is held by a process that is not this job's "
                    f"(another user of the node bound it first); not reporting it")
        return None

    def _fill(self, arg):
        """C{arg} with its placeholders put in, in one pass: a value is never expanded again."""
        def value(found):
            name = found.group(1)
            if name not in self.values:
                raise JobError(f"{{{name}}} in a program's arguments, but the job has none")
            return self.values[name]

        return PLACEHOLDER.sub(value, arg)

    def _spawn(self, argv):
        try:
            return subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise JobError(f"cannot run {argv[0]}: {e.strerror or e}") from None

    def _start_x(self, screen):
        auth = private_file(self.private, "xauthority", xauthority(os.urandom(16)))
        read, write = os.pipe()
        xvfb = self.params.get("xvfb_program") or "Xvfb"
        try:
            child = subprocess.Popen(
                [xvfb, "-displayfd", str(write), "-screen", "0", screen, "-nolisten", "tcp", "-noreset",
                 "-auth", auth], pass_fds=(write,), env=self.env, stdin=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as e:
            raise JobError(f"cannot run {xvfb}: {e.strerror or e}") from None
        finally:
            os.close(write)
        self.xvfb = ("Xvfb", child)
        self.children.append(self.xvfb)
        with os.fdopen(read, "rb") as pipe:
            number = pipe.readline().strip()  # written once the display accepts clients
        if not number.isdigit():
            self._check_alive("before it opened a display")
            raise JobError("Xvfb gave no display number")
        self.values["display"] = ":" + number.decode()
        self.env.update(DISPLAY=self.values["display"], XAUTHORITY=auth)

    def _check_alive(self, when):
        if self.stopping:
            raise JobError("the job was cancelled while starting")
        for name, child in filter(None, (self.xvfb, self.main)):
            status = child.poll()
            if status is not None:
                raise JobError(f"{name} exited (status {status}) {when}".rstrip())

    def _report(self, content):
        content = dict(content, job=self.job_id, secret=self.params["secret"])
        try:
            write_connection_file(self.params["connection_dir"], self.job_id, content)
        except OSError as e:
            say(f"cannot write the connection file in {self.params['connection_dir']}: {e.strerror or e}")

    def _wait(self):
        while not self.stopping:
            status = self.main[1].poll()
            if status is not None:
                say(f"{self.main[0]} exited (status {status})")
                return status if status >= 0 else 128 - status
            if self.xvfb is not None and self.xvfb[1].poll() is not None:
                say(f"the X server exited (status {self.xvfb[1].returncode})")
                return 1
            time.sleep(0.2)
        return 0

    def _end_all(self):
        live = [child for _, child in self.children if child.poll() is None]
        for child in live:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while any(child.poll() is None for child in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in live:
            _signal(child, signal.SIGKILL)
            child.wait()


def _signal(child, sig):
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(params):
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id:
        say("not in a Slurm job (no SLURM_JOB_ID)")
        sys.exit(2)
    sys.exit(Job(params, job_id).run())
