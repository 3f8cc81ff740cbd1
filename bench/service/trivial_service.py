"""A trivial TCP service: listens, records when it did, greets each client with b"G".

    python -S trivial_service.py PORT RECORD_FILE SAMPLE SPAWNED

It records (time.monotonic, one clock for every process) the time the script
began (SPAWNED: when the session script called spawn) and its first line ran,
and when it listened. The interpreter's own start-up before the first line is
calibrated by the bench separately.
"""

import time

started = time.monotonic()

import socket
import sys

port, record, sample, spawned = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", port))
lsock.listen(16)
listening = time.monotonic()
with open(record, "a") as f:
    f.write(f"{sample} {spawned} {started!r} {listening!r}\n")
conns = []  # kept open: the session ends by the gateway terminating this process
while True:
    conn, _ = lsock.accept()
    try:
        conn.sendall(b"G")
    except OSError:
        pass
    conns.append(conn)
