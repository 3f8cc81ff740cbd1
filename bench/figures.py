"""The measurements: each function measures one figure once, on one target."""

import json
import re
import socket
import statistics
import threading
import time
import zlib

from backend import _BLOCK, CHUNK, pattern
from wsproto import TCPClient, WSClient, frame

MB = 1e6
PING = bytes(range(64))


class Target:
    """Where the client connects: a gateway, the bench's own WS server, or the backend itself."""

    def __init__(self, name, port, ws=True, proc=None):
        self.name = name
        self.port = port
        self.ws = ws
        self.proc = proc
        # One pre-masked 64 KiB frame (or the raw chunk for TCP), sent again and again.
        self.up_unit = frame(_BLOCK) if ws else _BLOCK
        self.ping_unit = frame(PING) if ws else PING

    def open(self, path="/", timeout=30.0, bufsize=1 << 20):
        if self.ws:
            return WSClient("127.0.0.1", self.port, path=path, timeout=timeout, bufsize=bufsize)
        return TCPClient("127.0.0.1", self.port, timeout=timeout, bufsize=bufsize)

    def command(self, client, text):
        client.send((text + "\n").encode())


# --- 1, 2: one tunnel --------------------------------------------------------------


def down(target, nbytes):
    """Backend -> client: MB/s for C{nbytes} (the backend writes 64 KiB chunks)."""
    c = target.open()
    try:
        t0 = time.perf_counter()
        target.command(c, f"SRC {nbytes}")
        c.read(nbytes)
        return nbytes / (time.perf_counter() - t0) / MB
    finally:
        c.close(wait=False)


def up(target, nbytes):
    """Client -> backend: MB/s for C{nbytes} in 64 KiB masked messages, until the sink's ack."""
    c = target.open()
    try:
        unit = target.up_unit
        send = c.send_raw
        t0 = time.perf_counter()
        target.command(c, f"SINK {nbytes}")
        for _ in range(nbytes // CHUNK):
            send(unit)
        c.read(1)
        return nbytes / (time.perf_counter() - t0) / MB
    finally:
        c.close(wait=False)


# --- 3: four tunnels ---------------------------------------------------------------


def parallel(target, nbytes_each, n, direction):
    """Aggregate MB/s of C{n} tunnels at once, each moving C{nbytes_each} one way."""
    clients = [target.open() for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    ends, errors = [], []

    def run(c):
        try:
            barrier.wait()
            if direction == "down":
                target.command(c, f"SRC {nbytes_each}")
                c.read(nbytes_each)
            else:
                target.command(c, f"SINK {nbytes_each}")
                for _ in range(nbytes_each // CHUNK):
                    c.send_raw(target.up_unit)
                c.read(1)
            ends.append(time.perf_counter())
        except Exception as e:  # recorded; the bench goes on
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    for c in clients:
        c.close(wait=False)
    if errors:
        raise errors[0]
    return n * nbytes_each / (max(ends) - t0) / MB


# --- 4: latency ----------------------------------------------------------------------


LATENCY_WARMUP = 200


def latency(target, samples, warmup=LATENCY_WARMUP):
    """Round trips of a 64-byte message: (p50, p99) in microseconds."""
    c = target.open()
    try:
        target.command(c, "LAT")
        unit = target.ping_unit
        rtts = []
        for i in range(warmup + samples):
            t0 = time.perf_counter()
            c.send_raw(unit)
            c.read(64)
            if i >= warmup:
                rtts.append(time.perf_counter() - t0)
        rtts.sort()
        return rtts[len(rtts) // 2] * 1e6, rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e6
    finally:
        c.close(wait=False)


# --- 5: set-ups ----------------------------------------------------------------------


def one_setup(target):
    """Connect, handshake (backend connect), one echo, close."""
    c = target.open(timeout=10)
    try:
        c.send(b"ECHO\n" + PING)
        if c.read_bytes(64) != PING:
            raise AssertionError("echo mismatch")
    finally:
        c.close(wait=True)


def _setup_loops(target, deadline, parallel, limit):
    """C{parallel} threads doing set-ups until C{deadline} (perf_counter) or C{limit} in all.

    @return: (set-ups completed, the errors).
    """
    count = [0]
    errors = []
    lock = threading.Lock()

    def loop():
        while time.perf_counter() < deadline:
            with lock:
                if count[0] >= limit:
                    return
            try:
                one_setup(target)
            except Exception as e:  # recorded; the bench goes on
                errors.append(e)
                return
            with lock:
                count[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0], errors


def setups(target, seconds, parallel=1, limit=10000):
    """Tunnel set-ups per second, C{parallel} clients in a loop for C{seconds}.

    @return: (set-ups per second, the client's CPU microseconds per set-up).
    """
    t0 = time.perf_counter()
    c0 = time.process_time()
    count, errors = _setup_loops(target, t0 + seconds, parallel, limit)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if errors:
        raise RuntimeError(f"{len(errors)} set-ups failed, first: {errors[0]!r}")
    return count / elapsed, cpu / max(count, 1) * 1e6


def _setup_worker(conn):
    """A client process: runs its share of the set-up loops for each job the parent sends.

    A job is (port, ws, start, seconds, parallel, limit); C{start} is a
    perf_counter() time (CLOCK_MONOTONIC: the same clock in every process).
    The answer is (count, errors, first error, CPU seconds, end time).
    """
    while True:
        job = conn.recv()
        if job is None:
            return
        port, ws, start, seconds, parallel, limit = job
        try:
            target = Target("worker", port, ws=ws)
            delay = start - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            c0 = time.process_time()
            count, errors = _setup_loops(target, start + seconds, parallel, limit)
            answer = (count, len(errors), repr(errors[0]) if errors else None,
                      time.process_time() - c0, time.perf_counter())
        except Exception as e:  # sent to the parent
            answer = (0, 1, repr(e), 0.0, time.perf_counter())
        conn.send(answer)


class ClientProcesses:
    """C{n} client processes (spawned once, reused) that run set-up loops together.

    With one client process the client itself, not the server, limits the
    parallel set-up rate (about 2,000/s against bench/wsmini.py): the loops
    are shared among the processes and their set-ups summed over wall time.
    """

    def __init__(self, n):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # the bench has threads: no fork
        self.n = n
        self.conns, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_setup_worker, args=(child,), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def setups(self, target, seconds, parallel=16, limit=10000, lead=0.2):
        """As L{setups}, the C{parallel} loops spread over the processes.

        @return: (set-ups per second, the clients' CPU microseconds per set-up).
        """
        shares = [parallel // self.n + (i < parallel % self.n) for i in range(self.n)]
        start = time.perf_counter() + lead  # every process starts at the same moment
        sent = []
        for conn, share in zip(self.conns, shares, strict=True):
            if share:
                conn.send((target.port, target.ws, start, seconds, share,
                           max(1, limit * share // parallel)))
                sent.append(conn)
        answers = []
        for conn in sent:
            if not conn.poll(seconds + 120):
                raise RuntimeError("a client process did not answer")
            answers.append(conn.recv())
        count = sum(a[0] for a in answers)
        failed = sum(a[1] for a in answers)
        cpu = sum(a[3] for a in answers)
        elapsed = max(a[4] for a in answers) - start
        if failed:
            first = next(a[2] for a in answers if a[2])
            raise RuntimeError(f"{failed} set-ups failed, first: {first}")
        return count / elapsed, cpu / max(count, 1) * 1e6

    def close(self):
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for conn in self.conns:
            conn.close()


# --- 6: idle tunnels -----------------------------------------------------------------


class IdleTunnels:
    """Many open tunnels, each checked by one echo, held without traffic."""

    def __init__(self, target):
        self.target = target
        self.conns = []
        self.error = None

    def _open_one(self):
        c = self.target.open(timeout=15, bufsize=4096)
        c.send(b"ECHO\n" + PING)
        if c.read_bytes(64) != PING:
            raise AssertionError("echo mismatch")
        return c

    def grow(self, n, threads=8, timeout=600.0):
        """Open tunnels until C{n} are open or one fails; return how many are open."""
        lock = threading.Lock()
        deadline = time.monotonic() + timeout
        want = n

        def worker():
            while True:
                with lock:
                    if self.error is not None or len(self.conns) + pending[0] >= want:
                        return
                    pending[0] += 1
                try:
                    if time.monotonic() > deadline:
                        raise TimeoutError("opening idle tunnels took too long")
                    c = self._open_one()
                except Exception as e:  # recorded; the bench goes on
                    with lock:
                        pending[0] -= 1
                        if self.error is None:
                            self.error = e
                    return
                with lock:
                    pending[0] -= 1
                    self.conns.append(c)

        pending = [0]
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return len(self.conns)

    def check(self, threads=8):
        """Echo once on every tunnel; return how many answered correctly."""
        ok = [0]
        lock = threading.Lock()
        parts = [self.conns[i::threads] for i in range(threads)]

        def worker(conns):
            good = 0
            for c in conns:
                try:
                    c.send_raw(self.target.ping_unit)
                    if c.read_bytes(64) == PING:
                        good += 1
                except Exception:  # moot in cleanup
                    pass
            with lock:
                ok[0] += good

        ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return ok[0]

    def close(self):
        for c in self.conns:
            try:
                c.close(wait=False)
            except Exception:  # moot in cleanup
                pass
        self.conns = []


# --- 7: slow reader ------------------------------------------------------------------

_expected_crc = {}


def expected_crc(nbytes):
    if nbytes not in _expected_crc:
        crc = 0
        for i in range(nbytes // CHUNK):
            crc = zlib.crc32(pattern(i), crc)
        _expected_crc[nbytes] = crc
    return _expected_crc[nbytes]


def slow_reader(target, nbytes, rate, memory, interval=0.1):
    """The backend pushes C{nbytes}; the client reads at C{rate} bytes/s.

    @param memory: C{() -> (rss, pss)} of the gateway.
    @return: dict with the growth of gateway memory over its level before the
        tunnel, bytes received, and whether the checksum matched.
    """
    base = memory()
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(memory())
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    c = target.open(bufsize=65536 + 64)  # a small buffer: the client really reads slowly
    sampler.start()
    state = {"crc": 0, "got": 0}

    def on(view):
        state["crc"] = zlib.crc32(view, state["crc"])
        state["got"] += len(view)

    try:
        t0 = time.perf_counter()
        target.command(c, f"PAT {nbytes}")
        step = 64 * 1024
        while state["got"] < nbytes:
            c.read(min(step, nbytes - state["got"]), on)
            ahead = t0 + state["got"] / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        sampler.join()
        c.close(wait=False)
    peak_rss = max(s[0] for s in samples + [base])
    peak_pss = max(s[1] for s in samples + [base])
    return {
        "rss_growth": peak_rss - base[0], "pss_growth": peak_pss - base[1],
        "bytes": state["got"], "crc_ok": state["crc"] == expected_crc(nbytes),
        "read_rate_MBps": state["got"] / elapsed / MB, "seconds": elapsed,
    }


# --- 8, 9: sessions and REST ---------------------------------------------------------


class Rest:
    """A keep-alive HTTP/1.1 client for /v1: one socket, a prebuilt request, a minimal
    response parser (status line, Content-Length, body), so that its own CPU per request
    (tens of microseconds) stays well below the gateway's."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, path):
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, buf = buf[:end], buf[end + 4:]
        status = int(head[9:12])
        m = _CONTENT_LENGTH.search(head)
        if m is None:
            raise RuntimeError(f"GET {path}: no Content-Length in {head[:200]!r}")
        length = int(m.group(1))
        while len(buf) < length:
            buf += self._recv()
        body, self.buf = buf[:length], buf[length:]
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the gateway closed the HTTP connection")
        return data

    def close(self):
        self.sock.close()


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def interpreter_start(python, samples=10):
    """Median seconds from spawning C{python -S} to its first line (what the service's own
    start-up includes before trivial_service.py can take the time)."""
    import subprocess
    times = []
    for _ in range(samples):
        t0 = time.monotonic()
        out = subprocess.run([python, "-S", "-c", "import time; print(repr(time.monotonic()))"],
                             capture_output=True, text=True, check=True).stdout
        times.append(float(out) - t0)
    return statistics.median(times)


def launch(ws_port, rest, sample, records, interp):
    """Reserve, then time WebSocket-with-token -> first backend byte; minus the service's start.

    @param interp: seconds the service's interpreter takes to reach its first line
        (L{interpreter_start}).
    @return: dict of seconds: launch (WebSocket connect to first byte), own (the
        service's start-up: C{interp} plus its first line to listening),
        overhead (launch - own), before (connect to the script's spawn call:
        handshake, token, state, script), spawn (spawn call to the service's
        first line, minus C{interp}: what the gateway's spawning costs), after
        (listening to first byte: the gateway noticing the port, connecting,
        forwarding).
    """
    token = rest.get(f"/v1/reserve/Bench?sample={sample}")["token"]
    t0 = time.monotonic()
    c = WSClient("127.0.0.1", ws_port, path=f"/?token={token}", timeout=30)
    first = c.read_bytes(1)
    t1 = time.monotonic()
    if first != b"G":
        raise AssertionError(f"first byte {first!r}")
    c.close(wait=True)
    line = None
    for text in records.read_text().splitlines():
        if text.split(" ", 1)[0] == str(sample):
            line = text
    if line is None:
        raise RuntimeError(f"no record for sample {sample}")
    spawned, started, listening = (float(x) for x in line.split()[1:])
    own = interp + (listening - started)
    try:
        rest.get(f"/v1/release/{token}")
    except RuntimeError:
        pass  # already released when the WebSocket closed
    return {"launch": t1 - t0, "own": own, "overhead": (t1 - t0) - own,
            "before": spawned - t0, "spawn": started - spawned - interp, "after": t1 - listening}


def rest_cycles(rest, seconds, service="Many", cpu=None):
    """Reserve+release cycles per second, one after the other on one connection.

    @param cpu: a dict that gets C{client_us}, the client's own CPU per cycle."""
    count = 0
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        token = rest.get(f"/v1/reserve/{service}")["token"]
        rest.get(f"/v1/release/{token}")
        count += 1
    if cpu is not None:
        cpu["client_us"] = (time.process_time() - c0) / count * 1e6
    return count / (time.perf_counter() - t0)


def rest_cycles_parallel(port, seconds, clients, service="Many"):
    """Reserve+release cycles per second summed over C{clients} connections, each its own
    thread running L{rest_cycles}: the gateway's capacity rather than one client's latency."""
    rests = [Rest(port) for _ in range(clients)]
    rates = [0.0] * clients

    def loop(i):
        rates[i] = rest_cycles(rests[i], seconds, service)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in rests:
        r.close()
    return sum(rates)


def status_time(rest, repeats):
    """Median seconds of GET /v1/status."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rest.get("/v1/status")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
