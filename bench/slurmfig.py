"""Figure 11: a Slurm session's start, nexusws against plain Slurm (issue 16).

On the test cluster of tests/slurm/up.sh (one node, this host; started here if it is not
running; without root or Slurm the figure is skipped with a note), each launch is timed:

  nexusws      reserve a session of the bench's Slurm service (bench/service/slurm_session.py),
               open its event stream (/v1/events/{token}, read by a thread that stamps each
               event as it arrives) and its WebSocket, and read the first 12 bytes: the
               job's b"RFB 003.008\\n". Reserve -> that first RFB byte.
  plain Slurm  the same program (bench/service/slurm_trivial.py) under
               ``sbatch --parsable --export=NONE --wrap`` on a port the bench picked, the
               client trying a TCP connection to it every 10 ms until it reads the greeting.
               sbatch -> that first byte.

A launch pair is one of each, in turn order swapped from one pair to the next, each started
on an idle node (no job of ours left, no slurmstepd) after a random pause of up to a second
(slurmctld starts pending jobs on a one-second beat: the pause spreads the launches over it,
the same way for both). A warm-up pair before the rounds is not recorded.

Where the time goes, per launch, on CLOCK_MONOTONIC (the jobs run on this host):
  - start -> job id: sbatch's answer (nexusws: from the reserve, to the progress event
    "Slurm job N submitted" as the event stream's client receives it);
  - PENDING -> RUNNING: slurmctld's log, its submission line to its allocation line
    ("sched: Allocate" or the backfill scheduler's "Started"; the log's milliseconds);
  - RUNNING -> slurmd's launch (slurmd's log: "Launching batch job"), then -> the job
    script's process (its start from /proc, 10 ms ticks: slurmstepd's part);
  - the job script -> the program's process (nexusws: its Python runner, nexusws/sessions/
    slurmjob.py; plain: sh), the program -> listening (the program's own record);
  - nexusws only: listening -> the connection file written (its mtime: the runner's 5 ms
    port poll and fsync), -> the ``ready`` event (the gateway's 0.1 s file poll, reading
    the report, its own port probe), -> the first byte (the tunnel's connection);
  - (b) listening -> ready, listening -> first byte.
The gateway runs with the service's defaults (poll_interval 2 s; it does not delay a start:
the file poll does not wait for squeue) but reconnect_grace 0, host 127.0.0.1 and a 0700
connection directory of its own. Nothing is left at the end: the gateway is stopped, every
job of its name and of the plain jobs' name is cancelled (scancel --name) and waited for,
and no job program may remain.
"""

import datetime
import http.client
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import figures
import procs
import psutil
from procs import BENCH, ROOT
from wsproto import WSClient

FIG = 11
SLURM_SCRIPTS = ROOT / "tests" / "slurm"
SERVICE = BENCH / "service" / "slurm_session.py"
PROGRAM = BENCH / "service" / "slurm_trivial.py"
JOB_PYTHON = "/usr/bin/python3"  # the job script's and the program's interpreter on the node
PLAIN_NAME = "nexusws-bench-plain"  # the plain jobs' name (scancel --name at the end)
GREETING = b"RFB 003.008\n"
PROGRAMS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "slurmctld", "slurmd", "munged")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "BOOT_FAIL", "NODE_FAIL",
         "OUT_OF_MEMORY", "DEADLINE", "REVOKED", "SPECIAL_EXIT")

NEXUSWS, PLAIN = "nexusws", "plain Slurm"
# Metrics (all ms), in the table's order.
TOTAL = "start→first byte ms"
UNQUEUED = "start→first byte less PENDING→RUNNING ms"
ADDED = "added ms"
JOB_ID = "start→job id ms"
SCHED = "PENDING→RUNNING ms"
LAUNCH = "RUNNING→slurmd launch ms"
STEPD = "slurmd launch→job script ms"
SCRIPT = "job script→program ms"
PROGRAM_START = "program→listening ms"
REPORT = "listening→report ms"
POLL = "report→ready ms"
AFTER = "ready→first byte ms"
READY = "listening→ready ms"
FIRST = "listening→first byte ms"
BACKFILL = "started by backfill"


def slurm(*argv, timeout=30, check=True):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def unavailable():
    """Why the figure cannot run here (None: it can); starts the test Slurm if needed."""
    if os.geteuid() != 0:
        return "needs root (tests/slurm/up.sh runs Slurm's daemons as root)"
    missing = [p for p in PROGRAMS if shutil.which(p, path=ENV["PATH"]) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} not found; see tests/slurm/up.sh)"
    if not os.access(JOB_PYTHON, os.X_OK):
        return f"no {JOB_PYTHON} for the jobs"
    done = subprocess.run(["bash", str(SLURM_SCRIPTS / "up.sh")], capture_output=True, text=True,
                          timeout=180)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        return f"tests/slurm/up.sh failed ({done.returncode}): {last}"
    return None


def live_jobs():
    """{job id: (name, state)} of every job Slurm knows that has not ended."""
    out = slurm("squeue", "-h", "-t", "all", "-o", "%i|%j|%T")
    jobs = {}
    for line in out.splitlines():
        if line.count("|") == 2:
            i, name, state = line.split("|")
            if state not in ENDED:
                jobs[i] = (name, state)
    return jobs


def stepds():
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "slurmstepd":
            found.append(p.pid)
    return found


def job_programs():
    """Pids of figure 11's job programs still running."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if str(PROGRAM) in (p.info["cmdline"] or []):
            found.append(p.pid)
    return found


def wait_idle(names, timeout=60.0):
    """Until no job of C{names} is live and no slurmstepd runs; False if that does not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(name in names for name, _ in live_jobs().values()) and not stepds():
            return True
        time.sleep(0.05)
    return False


def to_monotonic(wall):
    return wall - (time.time() - time.monotonic())


class SlurmLogs:
    """The times slurmctld and slurmd logged for a job (their lines from the figure's start)."""

    SUBMIT = re.compile(r"^\[([0-9T:.-]+)\] _slurm_rpc_submit_batch_job: JobId=(\d+) ", re.M)
    ALLOCATE = re.compile(
        r"^\[([0-9T:.-]+)\] (sched: Allocate|sched/backfill: _start_job: Started|backfill: Started)"
        r" JobId=(\d+) ", re.M)
    LAUNCH = re.compile(r"^\[([0-9T:.-]+)\] Launching batch job (\d+) ", re.M)

    def __init__(self):
        conf = slurm("scontrol", "show", "config")
        self.paths = {}
        for key in ("SlurmctldLogFile", "SlurmdLogFile"):
            m = re.search(rf"^{key}\s*=\s*(\S+)", conf, re.M)
            self.paths[key] = Path(m.group(1)) if m and m.group(1).startswith("/") else None
        self.start = {k: (p.stat().st_size if p and p.exists() else 0) for k, p in self.paths.items()}

    def _text(self, key):
        path = self.paths[key]
        if path is None:
            return ""
        try:
            with open(path, "rb") as f:
                f.seek(self.start[key])
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _time(stamp):
        """A log time (local, milliseconds) as time.monotonic."""
        return to_monotonic(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp())

    def job(self, job_id, wait=2.0):
        """{"submit", "allocate", "launch": time.monotonic or None, "backfill": bool}."""
        deadline = time.monotonic() + wait
        while True:
            ctld, d = self._text("SlurmctldLogFile"), self._text("SlurmdLogFile")
            found = {"submit": None, "allocate": None, "launch": None, "backfill": None}
            for m in self.SUBMIT.finditer(ctld):
                if m.group(2) == job_id:
                    found["submit"] = self._time(m.group(1))
            for m in self.ALLOCATE.finditer(ctld):
                if m.group(3) == job_id:
                    found["allocate"] = self._time(m.group(1))
                    found["backfill"] = "backfill" in m.group(2)
            for m in self.LAUNCH.finditer(d):
                if m.group(2) == job_id:
                    found["launch"] = self._time(m.group(1))
            if all(v is not None for v in found.values()) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class EventStream:
    """A client of /v1/events/{token}: each event with the time.monotonic it arrived at."""

    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", f"/v1/events/{token}", headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"/v1/events: {self.response.status}")
        self.events = []  # (time.monotonic, name, data)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        pending = b""
        try:
            while chunk := self.response.read1(65536):
                now = time.monotonic()
                pending += chunk
                *blocks, pending = pending.split(b"\n\n")
                for block in blocks:
                    fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                                  if ": " in line and not line.startswith(":"))
                    if "event" in fields:
                        with self.cond:
                            self.events.append((now, fields["event"], json.loads(fields.get("data", "{}"))))
                            self.cond.notify_all()
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed under the read (AttributeError: http.client's, once closed)

    def wait(self, match, timeout=10.0):
        """The first (time, name, data) for which C{match(name, data)}; None after C{timeout}."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if match(e[1], e[2]):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end, then stops
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()


def unqueued(parts):
    """C{parts} with the start less Slurm's scheduling wait (its one-second beat: the noise)."""
    if SCHED in parts:
        parts[UNQUEUED] = parts[TOTAL] - parts[SCHED]
    return parts


class Figure:
    def __init__(self, bench):
        self.bench = bench
        self.dir = bench.tmp / "slurm"
        self.jobs_dir = self.dir / "jobs"
        self.jobs_dir.mkdir(parents=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.record = self.dir / "records.txt"
        self.record.touch()
        self.logs = SlurmLogs()
        self.gw = self.rest = None
        self.names = [PLAIN_NAME]

    # --- the gateway ------------------------------------------------------------------

    def start_gateway(self):
        services = {"Slurm": {"script": str(SERVICE), "count": 4, "options": {
            "record": str(self.record), "connection_dir": str(self.jobs_dir), "host": "127.0.0.1",
            "reconnect_grace": 0, "job_python": JOB_PYTHON}}}
        self.gw = self.bench.start_sessions(name="nexusws-slurm", services=services)
        from nexusws.sessions.slurmsite import job_name  # the gateway's own digest of its state file
        self.names.append(job_name(str(self.bench.tmp / "nexusws-slurm" / "state.json")))
        self.rest = figures.Rest(self.gw.http_port)

    # --- one launch each ----------------------------------------------------------------

    def line(self, sample):
        for text in self.record.read_text().splitlines():
            if text.split(" ", 1)[0] == sample:
                f = text.split()
                return {"first": float(f[1]), "listening": float(f[2]), "own": float(f[3]),
                        "parent": float(f[4]), "parent_name": f[5]}
        raise RuntimeError(f"no record of sample {sample}")

    def slurm_parts(self, job_id, rec, answered):
        """The components both kinds share, in seconds, from Slurm's logs and /proc."""
        log = self.logs.job(job_id)
        # The job script: the program's parent, unless the shell exec'd the program.
        script = rec["own"] if rec["parent_name"] == "slurmstepd" else rec["parent"]
        parts = {JOB_ID: answered, PROGRAM_START: rec["listening"] - rec["own"],
                 SCRIPT: rec["own"] - script}
        if log["submit"] is not None and log["allocate"] is not None:
            parts[SCHED] = log["allocate"] - log["submit"]
        if log["allocate"] is not None and log["launch"] is not None:
            parts[LAUNCH] = log["launch"] - log["allocate"]
        if log["launch"] is not None:
            parts[STEPD] = script - log["launch"]
        parts[BACKFILL] = None if log["backfill"] is None else float(log["backfill"])
        return parts

    def nexusws(self, sample):
        t0 = time.monotonic()
        token = self.rest.get(f"/v1/reserve/Slurm?sample={sample}")["token"]
        events = EventStream(self.gw.http_port, token)
        try:
            ws = WSClient("127.0.0.1", self.gw.port, path=f"/?token={token}", timeout=120)
            first = ws.read_bytes(len(GREETING))
            t1 = time.monotonic()
            if first != GREETING:
                raise AssertionError(f"first bytes {first!r}")
            job_id = str(self.rest.get(f"/v1/session/{token}")["backend"]["job"])
            report = to_monotonic(os.stat(self.jobs_dir / f"{job_id}.json").st_mtime_ns / 1e9)
            ready = events.wait(lambda name, data: name == "ready")
            submitted = events.wait(lambda name, data: name == "progress" and re.fullmatch(
                r"Slurm job \d+ submitted", data.get("text", "")))
            ws.close(wait=True)
        finally:
            events.close()
        try:
            self.rest.get(f"/v1/release/{token}")
        except RuntimeError:
            pass  # released when its WebSocket closed (reconnect_grace 0)
        if ready is None or submitted is None:
            raise RuntimeError(f"no {'ready' if ready is None else 'submitted'} event")
        rec = self.line(sample)
        parts = self.slurm_parts(job_id, rec, submitted[0] - t0)
        parts.update({TOTAL: t1 - t0, REPORT: report - rec["listening"], POLL: ready[0] - report,
                      AFTER: t1 - ready[0], READY: ready[0] - rec["listening"],
                      FIRST: t1 - rec["listening"]})
        return unqueued(parts)

    def plain(self, sample):
        port = procs.free_port()
        command = " ".join(shlex.quote(a) for a in (JOB_PYTHON, "-S", str(PROGRAM), str(port),
                                                      str(self.record), sample))
        t0 = time.monotonic()
        out = slurm("sbatch", "--parsable", "--export=NONE", f"--job-name={PLAIN_NAME}",
                    f"--output={self.dir}/plain-%j.out", f"--chdir={self.dir}", "--wrap", command)
        answered = time.monotonic()
        job_id = out.strip().split(";")[0]
        try:
            deadline = t0 + 120
            while True:
                got = b""
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                        while len(got) < len(GREETING):
                            data = s.recv(64)
                            if not data:
                                break
                            got += data
                except OSError:
                    pass
                if got == GREETING:
                    t1 = time.monotonic()
                    break
                if got:
                    raise AssertionError(f"first bytes {got!r}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id}: port {port} gave no greeting within 120 s")
                time.sleep(0.01)
        finally:
            slurm("scancel", job_id, check=False)
        rec = self.line(sample)
        parts = self.slurm_parts(job_id, rec, answered - t0)
        parts.update({TOTAL: t1 - t0, FIRST: t1 - rec["listening"]})
        return unqueued(parts)

    # --- the figure -------------------------------------------------------------------

    def measure(self, kind, sample):
        if not wait_idle(self.names):
            self.bench.note(f"figure 11: the node was not idle before {kind} launch {sample}"
                            f" (jobs {live_jobs()}, slurmstepd {stepds()})")
        time.sleep(random.uniform(0.0, 1.0))
        return self.nexusws(sample) if kind == NEXUSWS else self.plain(sample)

    def run(self):
        b = self.bench
        foreign = {i: j for i, j in live_jobs().items()}
        if foreign:
            b.note(f"figure 11: Slurm had live jobs before it started (they share the node): {foreign}")
        self.start_gateway()
        for kind in (NEXUSWS, PLAIN):  # warm-up: file caches, the gateway's first sbatch
            try:
                self.measure(kind, f"w{kind[0]}")
            except Exception as e:  # recorded; the bench goes on
                b.note(f"figure 11 warm-up on {kind}: {e!r}")
        k = 0
        for r in range(b.rounds):
            for _ in range(b.size["slurm_launches"]):
                k += 1
                pair = {}
                for kind in ((NEXUSWS, PLAIN) if k % 2 else (PLAIN, NEXUSWS)):
                    try:
                        res = self.measure(kind, f"{'n' if kind == NEXUSWS else 'p'}{k}")
                    except Exception as e:  # recorded; the bench goes on
                        b.note(f"figure 11 {kind} launch {k} (round {r + 1}): {e!r}")
                        if kind == NEXUSWS:
                            self.rest.close()
                            self.rest = figures.Rest(self.gw.http_port)
                        continue
                    pair[kind] = res
                    for metric, v in res.items():
                        if v is not None:
                            b.record(FIG, metric, kind, v if metric == BACKFILL else v * 1e3)
                    b.say(f"  11 {kind} launch {k}: " + ", ".join(
                        f"{m.removesuffix(' ms')} {v * 1e3:.0f}" for m, v in res.items()
                        if v is not None and m != BACKFILL) + (" (backfill)" if res.get(BACKFILL) else ""))
                if len(pair) == 2 and all(UNQUEUED in res for res in pair.values()):
                    b.record(FIG, ADDED, NEXUSWS, (pair[NEXUSWS][UNQUEUED] - pair[PLAIN][UNQUEUED]) * 1e3)
        for kind in (NEXUSWS, PLAIN):
            flags = [v for v in b.results.get(FIG, {}).get(BACKFILL, {}).get(kind, []) if v is not None]
            if sum(flags):
                b.note(f"figure 11 {kind}: Slurm's backfill scheduler, not its main one, started"
                       f" {sum(flags):.0f} of {len(flags)} jobs")

    def clean(self):
        """Stop the gateway, cancel every job of ours, check that none and no program is left."""
        if self.rest is not None:
            self.rest.close()
        if self.gw is not None:
            self.gw.stop()
        for name in self.names:
            slurm("scancel", f"--name={name}", check=False)
        if not wait_idle(self.names, timeout=60):
            self.bench.note(f"figure 11: jobs still live after scancel: {live_jobs()}")
        left = job_programs()
        if left:
            self.bench.note(f"figure 11: job programs left after the jobs ended: {left} (killed)")
            for pid in left:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        ours = {i: j for i, j in live_jobs().items() if j[0] in self.names}
        self.bench.say(f"  11 cleaned up: squeue shows {len(ours)} live job(s) of ours")


def run(bench):
    """Figure 11 (see the module docstring); skipped, with a note, where Slurm cannot run."""
    bench.say("figure 11: Slurm session start, nexusws against plain Slurm")
    why = unavailable()
    if why is not None:
        bench.note(f"figure 11 skipped: {why}")
        return
    fig = Figure(bench)
    try:
        fig.run()
    finally:
        fig.clean()


def rows(row):
    """Figure 11's table rows, through report.table's C{row}."""
    info = dict(rat=False)
    row("11 Slurm session start, ms: reserve (plain: sbatch) → first RFB byte", FIG, TOTAL,
        versus=PLAIN)
    row("11 the same less Slurm's scheduling wait (PENDING → RUNNING), ms", FIG, UNQUEUED,
        versus=PLAIN)
    row("11  added by nexusws (that, nexusws − plain Slurm, pair by pair), ms", FIG, ADDED, **info)
    row("11  of which start → job id (nexusws: reserve, WebSocket, sbatch; plain: sbatch), ms",
        FIG, JOB_ID, 1, **info)
    row("11  of which PENDING → RUNNING (slurmctld's log), ms", FIG, SCHED, **info)
    row("11  of which RUNNING → slurmd launches the batch job (slurmd's log), ms", FIG, LAUNCH,
        **info)
    row("11  of which slurmd's launch → job script started (/proc, 10 ms ticks), ms", FIG, STEPD,
        **info)
    row("11  of which job script → program started (nexusws: its Python runner; plain: sh execs it), ms",
        FIG, SCRIPT, **info)
    row("11  of which program started → listening (the same program), ms", FIG, PROGRAM_START,
        **info)
    row("11  of which listening → report written (runner's 5 ms port poll, fsync), ms", FIG,
        REPORT, 1, **info)
    row("11  of which report → ready event (gateway's 0.1 s file poll), ms", FIG, POLL, **info)
    row("11  of which ready event → first byte, ms", FIG, AFTER, 1, **info)
    row("11 (b) port open → ready event (SSE client), ms", FIG, READY, **info)
    row("11 (b) port open → first RFB byte (plain: the client's 10 ms poll), ms", FIG, FIRST,
        **info)


NOTES = [
    "Figure 11: a Slurm session's start on the one-node test Slurm (tests/slurm/up.sh) on this"
    " host; its ratio is nexusws / plain Slurm. nexusws: reserve → first RFB byte through the",
    "WebSocket (the job's program greets b\"RFB 003.008\\n\"); plain Slurm: sbatch --wrap of the"
    " same program → the first byte, the client trying every 10 ms. Components from the event",
    "stream (stamped on arrival), slurmctld's and slurmd's logs (ms), /proc (10 ms ticks) and the"
    " program's record, all on CLOCK_MONOTONIC; they need not add up exactly.",
]
