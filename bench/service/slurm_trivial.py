"""Figure 11's job program: listens on PORT at 127.0.0.1, records when, greets each client with
RFB's version line (b"RFB 003.008\\n"), as a VNC server would.

    /usr/bin/python3 -S slurm_trivial.py PORT RECORD_FILE SAMPLE

It runs in a Slurm job on this host, nexusws's (started by the job's Python runner) or plain
sbatch's (started by the --wrap shell), and appends one line to RECORD_FILE:

    SAMPLE FIRST_LINE LISTENING OWN_START PARENT_START PARENT_NAME

FIRST_LINE and LISTENING are time.monotonic() (CLOCK_MONOTONIC: one clock for every process
on the machine, the bench's included); OWN_START and PARENT_START are when this process and
its parent (the job script: the runner, or the shell) began, from /proc (10 ms ticks of
CLOCK_BOOTTIME, half a tick added, moved to CLOCK_MONOTONIC). Standard library only: a node
needs nothing of nexusws or of the bench.
"""

import time

first_line = time.monotonic()

import os
import socket
import sys

GREETING = b"RFB 003.008\n"


def started(pid):
    """(start time as time.monotonic, name) of process C{pid}, from /proc; (nan, "?") if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return float("nan"), "?"
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    hz = os.sysconf("SC_CLK_TCK")
    boot = (int(fields[19]) + 0.5) / hz  # field 22, starttime: ticks since boot
    shift = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return boot - shift, "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "_"


port, record, sample = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", port))
lsock.listen(16)
listening = time.monotonic()
own, _ = started(os.getpid())
parent, parent_name = started(os.getppid())
with open(record, "a") as f:
    f.write(f"{sample} {first_line!r} {listening!r} {own!r} {parent!r} {parent_name}\n")
conns = []  # kept open: the job ends by Slurm's SIGTERM
while True:
    conn, _ = lsock.accept()
    try:
        conn.sendall(GREETING)
    except OSError:  # a probe (the runner's, the gateway's) that closed at once
        conn.close()
        continue
    conns.append(conn)
