"""nexusws against websockify 0.13 (and plain TCP): the benchmark of issue 6.

    bench/run [--rounds N] [--quick] [--only 1,2,...] [--client-procs N] [--json PATH]
              [--profile]

Starts a TCP backend (source/sink/echo, bench/backend.py), both gateways in
front of it, the bench's own minimal WebSocket server (bench/wsmini.py: the
client's ceiling) and drives them all with one client (bench/wsproto.py),
measuring each figure on each target in turn (A B A B ..., --rounds times).
Figure 10 has a backend of its own, an RFB server (backend.py --rfb), with
nexusws in front of it through session tunnels (bench/rfb.py says why).
Figure 11 starts Slurm sessions on the test Slurm, against plain sbatch (bench/slurmfig.py).
Prints one table and writes every sample as JSON. Everything runs on
127.0.0.1; every process started is stopped on exit, Ctrl-C included.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import figures
import procs
import report
import rfb
import slurmfig
from figures import Target
from procs import BENCH, Proc
from report import (
    QUICK_IDLE_MAX,
    format_profile,
    machine,
    machine_line,
    summarize_profile,
)

MiB = 1 << 20
GiB = 1 << 30
KiB = 1024

FULL = {
    "down": GiB, "up": GiB, "par_each": 256 * MiB, "lat_samples": 5000, "setup_seconds": 3.0,
    "idle_levels": (0, 500, 1000), "idle_hold": 60.0, "websockify_idle": 1000, "slow_bytes": GiB,
    "slow_rate": 64 * MiB, "launches": 10, "rest_seconds": 3.0, "status_repeats": 20,
    "status_levels": (10, 100, 1000), "profile_seconds": 8.0,
    "rfb_bulk": GiB, "rfb_paste": 256 * MiB, "rfb_events": 128 * KiB, "rfb_batched": 256 * MiB,
    "slurm_launches": 6,
}
QUICK = {
    "down": 64 * MiB, "up": 64 * MiB, "par_each": 16 * MiB, "lat_samples": 500, "setup_seconds": 1.0,
    "idle_levels": (0, 200, 500), "idle_hold": 5.0, "websockify_idle": 600, "slow_bytes": 64 * MiB,
    "slow_rate": 32 * MiB, "launches": 3, "rest_seconds": 1.0, "status_repeats": 5,
    "status_levels": (10, 100, 1000), "profile_seconds": 3.0,
    "rfb_bulk": 64 * MiB, "rfb_paste": 32 * MiB, "rfb_events": 32 * KiB, "rfb_batched": 32 * MiB,
    "slurm_launches": 2,
}
PROFILE_PATHS = ("down", "up", "setup", "latency", "rest", "rfb", "rfb-events", "rfb-batched")
# Figure 5b's client processes: leave a core each to the server measured and to
# bench/wsmini.py. On 2 cores that is 1: with 2 or 3 the client ceiling does not
# rise (wsmini, one Python process, is then what limits it, at ~0.9 core) and
# the gateway's rate falls, since the clients take its CPU.
CLIENT_PROCS = max(1, min(4, (os.cpu_count() or 2) - 2))
REST_CLIENTS = 4  # figure 9's parallel keep-alive clients, one thread each
FOREIGN_NOTE = 0.03  # a figure notes the CPU other processes used meanwhile from this share on
WEBSOCKIFY_SAFE = 500  # websockify 0.13 select()s: no descriptor above 1023, about 508 tunnels


class Bench:
    rest_clients = REST_CLIENTS
    def __init__(self, args):
        self.args = args
        self.size = QUICK if args.quick else FULL
        self.rounds = args.rounds
        self.results = {}  # figure -> {metric -> {target -> stats}}
        self.notes = []
        self.tmp = Path(tempfile.mkdtemp(prefix="nexusws-bench-"))
        # The processes' logs, kept after the run (next to the JSON).
        self.logdir = Path(args.json).resolve().parent / "logs"
        shutil.rmtree(self.logdir, ignore_errors=True)
        self.logdir.mkdir(parents=True)

    def say(self, text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def record(self, fig, metric, target, value):
        self.results.setdefault(fig, {}).setdefault(metric, {}).setdefault(target, []).append(value)

    def alternate(self, fig, metric, targets, measure):
        """A B A B ...: C{measure(target)} per round, per target, in this order."""
        for r in range(self.rounds):
            for t in targets:
                try:
                    value = measure(t)
                except Exception as e:  # recorded; the bench goes on
                    self.note(f"figure {fig} {metric} on {t.name}, round {r + 1}: {e!r}")
                    value = None
                self.record(fig, metric, t.name, value)
                shown = value if not isinstance(value, float) else f"{value:.1f}"
                self.say(f"  {fig} {metric} {t.name} round {r + 1}: {shown}")

    def note(self, text):
        self.notes.append(text)
        self.say(f"NOTE {text}")

    # --- the shared set-up of figures 1-5 -------------------------------------------

    def start_main(self):
        self.backend = procs.start_backend(self.logdir)
        self.wsmini = procs.start_wsmini(self.logdir)
        self.relay = procs.start_wsmini(self.logdir, relay_to=self.backend.port)
        self.nexusws = procs.start_nexusws(self.backend.port, self.logdir)
        self.websockify = procs.start_websockify(self.backend.port, self.logdir)
        self.t_nexusws = Target("nexusws", self.nexusws.port, proc=self.nexusws)
        self.t_websockify = Target("websockify", self.websockify.port, proc=self.websockify)
        self.t_plain = Target("plain TCP", self.backend.port, ws=False)
        self.t_ceiling = Target("client ceiling", self.wsmini.port)
        self.t_relay = Target("minimal relay", self.relay.port, proc=self.relay)
        self.all_targets = [self.t_nexusws, self.t_websockify, self.t_plain, self.t_ceiling]
        # The minimal relay where it tells what a gateway can reach here: throughput.
        self.all_targets = [*self.all_targets, self.t_relay]

    def fig1(self):
        self.say("figure 1: backend -> client, one tunnel")
        n = self.size["down"]
        self.alternate(1, "MB/s", self.all_targets, lambda t: figures.down(t, n))

    def fig2(self):
        self.say("figure 2: client -> backend, one tunnel")
        n = self.size["up"]
        self.alternate(2, "MB/s", self.all_targets, lambda t: figures.up(t, n))

    def fig3(self):
        self.say("figure 3: 4 tunnels at once")
        n = self.size["par_each"]
        self.alternate("3a", "MB/s", self.all_targets, lambda t: figures.parallel(t, n, 4, "down"))
        self.alternate("3b", "MB/s", self.all_targets, lambda t: figures.parallel(t, n, 4, "up"))

    def fig4(self):
        self.say("figure 4: round trip of a 64-byte message")
        samples = self.size["lat_samples"]
        for r in range(self.rounds):
            for t in self.all_targets:
                # A one-process server's CPU per round trip: the latency path's own
                # cost, which the machine's scheduling noise does not blur.
                one_process = t.proc is not None and t.name != "websockify"
                cpu0 = procs.cpu_seconds(t.proc.pid) if one_process else None
                try:
                    p50, p99 = figures.latency(t, samples)
                except Exception as e:  # recorded; the bench goes on
                    self.note(f"figure 4 on {t.name}: {e!r}")
                    p50 = p99 = None
                if one_process and p50 is not None:
                    used = procs.cpu_seconds(t.proc.pid) - cpu0
                    self.record(4, "server CPU µs/round trip", t.name,
                                used / (samples + figures.LATENCY_WARMUP) * 1e6)
                self.record(4, "p50 µs", t.name, p50)
                self.record(4, "p99 µs", t.name, p99)
                self.say(f"  4 {t.name} round {r + 1}: p50 {p50} p99 {p99}")

    def fig5(self):
        self.say("figure 5: tunnel set-ups per second")
        sec = self.size["setup_seconds"]
        # 5a: one loop in this process. 5b: 16 loops spread over --client-procs
        # client processes (started once, all starting each measurement together),
        # so that more cores can drive the set-ups where the machine has them.
        nprocs = max(1, self.args.client_procs)
        self.client_procs = nprocs
        clients = figures.ClientProcesses(nprocs)
        try:
            for fig, par in (("5a", 1), ("5b", 16)):
                def measure(t, fig=fig, par=par):
                    if fig == "5b":
                        rate, cpu_us = clients.setups(t, sec, par)
                    else:
                        rate, cpu_us = figures.setups(t, sec, par)
                    self.record(fig, "client CPU µs/set-up", t.name, cpu_us)
                    return rate
                self.alternate(fig, "set-ups/s", self.all_targets, measure)
        finally:
            clients.close()

    # --- 6: idle tunnels -------------------------------------------------------------

    def idle_max(self):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        most = (limit - 200) // 2  # the gateway holds two descriptors per tunnel
        return min(most, QUICK_IDLE_MAX) if self.args.quick else most

    def fig6(self):
        """Idle tunnels: memory at each level; in the last round, as many as can be held.

        websockify 0.13 waits with select(), so it cannot serve a descriptor
        above 1023: it holds about 500 tunnels, which its last round shows
        (up to C{websockify_idle}, stopping at the first failure).
        """
        self.say("figure 6: memory of idle tunnels")
        levels = list(self.size["idle_levels"])
        for r in range(self.rounds):
            last = r == self.rounds - 1
            for kind in ("nexusws", "websockify"):
                if kind == "nexusws":
                    most, lv = (self.idle_max() if last else None), levels
                else:
                    most = self.size["websockify_idle"] if last else None
                    lv = [x for x in levels if x <= WEBSOCKIFY_SAFE]
                self._idle_round(kind, lv, most, hold=last and kind == "nexusws", r=r)

    def _idle_round(self, kind, levels, most, hold, r):
        name = f"{kind}-idle{r + 1}"
        if kind == "nexusws":
            gw = procs.start_nexusws(self.backend.port, self.logdir, name=name)
        else:
            gw = procs.start_websockify(self.backend.port, self.logdir, name=name)
        target = Target(kind, gw.port)
        tunnels = figures.IdleTunnels(target)
        try:
            time.sleep(0.5)
            want = [(str(lv), lv) for lv in levels] + ([("max", most)] if most else [])
            base = None
            for label, level in want:
                got = tunnels.grow(level) if level else 0
                if tunnels.error is not None:
                    self.say(f"  6 {kind}: stopped at {got} tunnels: {tunnels.error!r}")
                    if label != "max":
                        self.note(f"figure 6 {kind}: stopped at {got} tunnels (level {level}):"
                                  f" {tunnels.error!r}")
                        break
                time.sleep(1.0)
                rss, pss, nproc = procs.tree_memory(gw.gateway_pid)
                if base is None:
                    base = (rss, pss)
                self.say(f"  6 {kind} {got} tunnels: RSS {rss / MiB:.1f} MiB PSS {pss / MiB:.1f} MiB"
                         f" ({nproc} processes)")
                if label == "max":
                    self.record(6, "most tunnels held", kind, got)
                    if tunnels.error is not None:
                        self.record(6, "the next one failed with", kind, repr(tunnels.error)[:80])
                self.record(6, f"RSS MiB at {label}", kind, rss / MiB)
                self.record(6, f"PSS MiB at {label}", kind, pss / MiB)
                if got:
                    self.record(6, f"RSS KiB/tunnel at {label}", kind, (rss - base[0]) / got / KiB)
                    self.record(6, f"PSS KiB/tunnel at {label}", kind, (pss - base[1]) / got / KiB)
            if hold:
                seconds = self.size["idle_hold"]
                self.say(f"  6 holding {len(tunnels.conns)} idle tunnels for {seconds:g} s")
                time.sleep(seconds)
                ok = tunnels.check()
                rss, pss, _ = procs.tree_memory(gw.gateway_pid)
                self.say(f"  6 {kind}: {ok}/{len(tunnels.conns)} still echo after {seconds:g} s;"
                         f" RSS {rss / MiB:.1f} MiB")
                self.record(6, f"echoing after {seconds:g} s hold", kind, ok)
        finally:
            tunnels.close()
            gw.stop()

    # --- 7: slow reader --------------------------------------------------------------

    def fig7(self):
        self.say("figure 7: a slow reader")
        n, rate = self.size["slow_bytes"], self.size["slow_rate"]
        figures.expected_crc(n)
        for r in range(self.rounds):
            for kind in ("nexusws", "websockify"):
                name = f"{kind}-slow{r + 1}"
                if kind == "nexusws":
                    gw = procs.start_nexusws(self.backend.port, self.logdir, name=name)
                else:
                    gw = procs.start_websockify(self.backend.port, self.logdir, name=name)
                try:
                    time.sleep(0.5)
                    res = figures.slow_reader(
                        Target(kind, gw.port), n, rate,
                        lambda pid=gw.gateway_pid: procs.tree_memory(pid)[:2])
                except Exception as e:  # recorded; the bench goes on
                    self.note(f"figure 7 {kind}: {e!r}")
                    res = None
                finally:
                    gw.stop()
                if res is None:
                    continue
                self.say(f"  7 {kind} round {r + 1}: {res}")
                self.record(7, "RSS growth MiB", kind, res["rss_growth"] / MiB)
                self.record(7, "PSS growth MiB", kind, res["pss_growth"] / MiB)
                self.record(7, "bytes lost", kind, n - res["bytes"] if res["crc_ok"] else n)
                self.record(7, "checksum ok", kind, 1 if res["crc_ok"] else 0)
                self.record(7, "read MB/s", kind, res["read_rate_MBps"])

    # --- 8, 9: sessions --------------------------------------------------------------

    def start_sessions(self, name="nexusws-sessions", wrap=(), services=None, extra=()):
        """nexusws with the bench's session services (figures 8, 9; C{services}: others instead,
        by name, as the config file has them), HTTP on a free port; C{extra}: more options."""
        d = self.tmp / name
        (d / "www").mkdir(parents=True, exist_ok=True)
        self.records = d / "records.txt"
        self.records.touch()
        script = str(BENCH / "service" / "bench_session.py")
        config = services or {
            "Bench": {"script": script, "count": 8, "options": {"record": str(self.records)}},
            "Many": {"script": script, "count": 1100, "options": {"record": str(self.records)}},
        }
        (d / "services.json").write_text(json.dumps(config))
        # The state file on the same disk as a default one (~/.local/state).
        argv = [procs.BIN / "nexus-websocketserver", "--ws_listen", "tcp:0:interface=127.0.0.1",
                "--http_listen", "tcp:0:interface=127.0.0.1", "--http_directory", d / "www",
                "--remote_session_config", d / "services.json", "--state_file", d / "state.json",
                "--max_reservations_per_user", "0", "--max_tunnels", "0",
                "--max_tunnels_per_address", "0", "--timeout", "3600", *extra]
        if wrap:
            argv = [*wrap, sys.executable, *argv]
        gw = Proc(name, argv, self.logdir / f"{name}.log",
                  ready=r"--http_listen listening on http://127\.0\.0\.1:(\d+)/")
        gw.http_port = int(gw.match.group(1))
        gw.port = int(gw.wait_log(r"--ws_listen listening on ws://127\.0\.0\.1:(\d+)/").group(1))
        gw.gateway_pid = procs.find_gateway(gw) if wrap else gw.pid
        return gw

    def fig8(self):
        self.say("figure 8: session launch")
        interp = figures.interpreter_start(sys.executable)
        self.say(f"  8 the service's interpreter takes {interp * 1e3:.1f} ms to its first line")
        self.record(8, "interpreter start ms", "nexusws", interp * 1e3)
        gw = self.start_sessions()
        rest = figures.Rest(gw.http_port)
        try:
            k = 0
            for _round in range(self.rounds):
                for _ in range(self.size["launches"]):
                    k += 1
                    try:
                        res = figures.launch(gw.port, rest, k, self.records, interp)
                    except Exception as e:  # recorded; the bench goes on
                        self.note(f"figure 8 launch {k}: {e!r}")
                        rest.close()
                        rest = figures.Rest(gw.http_port)
                        continue
                    self.record(8, "launch ms", "nexusws", res["launch"] * 1e3)
                    self.record(8, "service's own start ms", "nexusws", res["own"] * 1e3)
                    self.record(8, "overhead ms", "nexusws", res["overhead"] * 1e3)
                    self.record(8, "connect→spawn ms", "nexusws", res["before"] * 1e3)
                    self.record(8, "spawning ms", "nexusws", res["spawn"] * 1e3)
                    self.record(8, "listening→first byte ms", "nexusws", res["after"] * 1e3)
                    self.say(f"  8 launch {k}: " + ", ".join(
                        f"{name} {v * 1e3:.1f} ms" for name, v in res.items()))
        finally:
            rest.close()
            gw.stop()

    def fig9(self):
        self.say("figure 9: REST")
        gw = self.start_sessions()
        rest = figures.Rest(gw.http_port)
        try:
            for r in range(self.rounds):
                cpu, gw_cpu = {}, procs.cpu_seconds(gw.pid)
                v = figures.rest_cycles(rest, self.size["rest_seconds"], cpu=cpu)
                gw_us = (procs.cpu_seconds(gw.pid) - gw_cpu) / (v * self.size["rest_seconds"]) * 1e6
                self.record(9, "reserve+release/s", "nexusws", v)
                self.record(9, "client CPU µs per cycle", "nexusws", cpu["client_us"])
                self.record(9, "gateway CPU µs per cycle", "nexusws", gw_us)
                p = figures.rest_cycles_parallel(gw.http_port, self.size["rest_seconds"],
                                                 REST_CLIENTS)
                self.record(9, "reserve+release/s parallel", "nexusws", p)
                self.say(f"  9 cycles round {r + 1}: {v:.0f}/s (client CPU {cpu['client_us']:.0f}"
                         f" µs, gateway CPU {gw_us:.0f} µs per cycle); {REST_CLIENTS} clients in "
                         f"parallel: {p:.0f}/s")
            held = before = 0
            reps = self.size["status_repeats"]
            for level in self.size["status_levels"]:
                t0 = time.perf_counter()
                while held < level:
                    rest.get("/v1/reserve/Many")
                    held += 1
                took = time.perf_counter() - t0
                if took and level > before:
                    self.record(9, f"reserve ms, {before}→{level} held", "nexusws",
                                took / (level - before) * 1e3)
                before = level
                t = figures.status_time(rest, reps)
                self.record(9, f"/v1/status ms at {level}", "nexusws", t * 1e3)
                self.say(f"  9 /v1/status with {level} reservations: {t * 1e3:.2f} ms")
        finally:
            rest.close()
            gw.stop()

    # --- 10: client -> backend over RFB, input tracking on --------------------------

    def rfb_backend(self):
        if getattr(self, "_rfb_backend", None) is None:
            self._rfb_backend = procs.start_rfb_backend(self.logdir)
        return self._rfb_backend

    def start_rfb_sessions(self, name="nexusws-rfb", wrap=()):
        """nexusws with one service, C{Rfb}, whose sessions tunnel to the RFB backend, and
        basic mode to the same backend (a WebSocket without a token); its session target."""
        port = self.rfb_backend().port
        service = {"script": str(BENCH / "service" / "rfb_session.py"), "count": 8,
                   "options": {"port": str(port)}}
        gw = self.start_sessions(name=name, wrap=wrap, services={"Rfb": service},
                                 extra=["--client_hostname", "127.0.0.1", "--client_port", str(port)])
        pid = gw.gateway_pid
        target = rfb.RfbTarget("nexusws", gw.port, proc=gw, rest_port=gw.http_port,
                               log_path=gw.log_path, cpu=lambda: procs.cpu_seconds(pid))
        return gw, target

    def fig10(self):
        """Client -> backend over RFB; nexusws through a session tunnel (its InputTracker on).

        Also through a basic-mode tunnel (no tracker) of the same nexusws process to the same
        backend, recorded in the nexusws column under metrics of its own: the tracker's cost
        (and anything else a session tunnel adds) is the difference.
        """
        self.say("figure 10: client -> backend over RFB, input tracking on")
        port = self.rfb_backend().port
        gw, session = self.start_rfb_sessions()
        wsk = procs.start_websockify(port, self.logdir, name="websockify-rfb")
        relay = procs.start_wsmini(self.logdir, relay_to=port, name="wsmini-relay-rfb")
        targets = [
            session,
            rfb.RfbTarget("websockify", wsk.port, proc=wsk),
            rfb.RfbTarget("plain TCP", port, ws=False),
            rfb.RfbTarget("minimal relay", relay.port, proc=relay),
            rfb.RfbTarget("nexusws basic", gw.port, proc=gw, column="nexusws",
                          suffix=rfb.NO_TRACKING, cpu=session.cpu),
        ]
        # figure, stream, its size, metric: value from a measurement's result, CPU per what.
        lines = [
            ("10a", "bulk", "rfb_bulk", "MB/s", lambda m: m["bytes"] / m["seconds"] / 1e6,
             "frame"),
            ("10b", "events", "rfb_events", "messages/s", lambda m: m["messages"] / m["seconds"],
             "message"),
            ("10c", "batched", "rfb_batched", "messages/s",
             lambda m: m["messages"] / m["seconds"], "message"),
            ("10d", "paste", "rfb_paste", "MB/s", lambda m: m["bytes"] / m["seconds"] / 1e6,
             "frame"),
        ]
        try:
            for fig, stream, size, metric, value, per in lines:
                for r in range(self.rounds):
                    for t in targets:
                        try:
                            m = rfb.measure(t, rfb.STREAMS[stream], self.size[size])
                        except Exception as e:  # recorded; the bench goes on
                            self.note(f"figure {fig} on {t.name}, round {r + 1}: {e!r}")
                            self.record(fig, metric + t.suffix, t.column, None)
                            continue
                        v = value(m)
                        self.record(fig, metric + t.suffix, t.column, v)
                        shown = f"{v:.1f}"
                        if m["cpu"] is not None:
                            us = m["cpu"] / m[f"{per}s"] * 1e6
                            self.record(fig, f"gateway CPU µs/{per}" + t.suffix, t.column, us)
                            shown += f" (gateway CPU {us:.2f} µs/{per})"
                        self.say(f"  {fig} {metric} {t.name} round {r + 1}: {shown}")
            found = session.fallbacks()
            if found:
                self.note(f"figure 10: the session gateway logged {found} input tracking"
                          f" fallback(s) (see {gw.log_path})")
        finally:
            session.close_rest()
            for p in (relay, wsk, gw):
                p.stop()

    # --- 11: a Slurm session's start --------------------------------------------------

    def fig11(self):
        slurmfig.run(self)

    # --- profile ---------------------------------------------------------------------

    def profile(self):
        """nexusws under py-spy on its hot paths; top functions by own time.

        down, up, setup, latency: the basic-mode gateway under load (CPU samples only);
        rest: reserve+release cycles on a sessions gateway, idle samples
        included, since that path waits on the disk (fsync) rather than the CPU;
        rfb, rfb-events, rfb-batched: figure 10a's, 10b's and 10c's streams through a session
        tunnel (input tracking on), CPU samples only.
        """
        outdir = Path(self.args.json).resolve().parent
        outdir.mkdir(parents=True, exist_ok=True)
        seconds = self.size["profile_seconds"]
        paths = {
            "down": (lambda t: figures.down(t, 256 * MiB), False),
            "up": (lambda t: figures.up(t, 256 * MiB), False),
            "setup": (lambda t: figures.setups(t, 1.0, 4), False),
            "latency": (lambda t: figures.latency(t, 5000, warmup=0), False),
            "rest": (None, True),
            "rfb": (lambda t: rfb.measure(t, rfb.STREAMS["bulk"], 256 * MiB), False),
            "rfb-events": (lambda t: rfb.measure(t, rfb.STREAMS["events"], 64 * KiB), False),
            "rfb-batched": (lambda t: rfb.measure(t, rfb.STREAMS["batched"], 32 * MiB), False),
        }
        report = {}
        wanted = [p.strip() for p in self.args.profile.split(",") if p.strip()]
        for name in wanted:
            if name not in paths:
                self.note(f"no profile path {name!r} (known: {', '.join(paths)})")
        for name, (work, idle) in paths.items():
            if name not in wanted:
                continue
            raw = outdir / f"profile-{name}.txt"
            raw.unlink(missing_ok=True)
            wrap = [procs.BIN / "py-spy", "record", "--rate", "500", "--format", "raw",
                    "--nonblocking", *(["--idle"] if idle else []), "-o", raw, "--"]
            target = None
            if name == "rest":
                gw = self.start_sessions(name=f"nexusws-pyspy-{name}", wrap=wrap)
            elif name.startswith("rfb"):
                gw, target = self.start_rfb_sessions(name=f"nexusws-pyspy-{name}", wrap=wrap)
            else:
                gw = procs.start_nexusws(self.backend.port, self.logdir,
                                         name=f"nexusws-pyspy-{name}", wrap=wrap)
            self.say(f"profile {name}: {seconds:g} s of load")
            t_end = time.monotonic() + seconds
            if name == "rest":
                rest = figures.Rest(gw.http_port)
                figures.rest_cycles(rest, seconds)
                rest.close()
            else:
                target = target or Target("nexusws", gw.port)
                while time.monotonic() < t_end:
                    work(target)
                if isinstance(target, rfb.RfbTarget):
                    target.close_rest()
            # Stop the gateway itself (not py-spy), so that py-spy writes its file.
            os.kill(gw.gateway_pid, signal.SIGTERM)
            try:
                gw.p.wait(60)
            except Exception:  # moot in cleanup
                pass
            gw.stop()
            if not raw.exists():
                self.note(f"profile {name}: py-spy wrote nothing (see {gw.log_path})")
                continue
            top = summarize_profile(raw)
            report[name] = top
            text = format_profile(name, top, idle)
            (outdir / f"profile-{name}-top.txt").write_text(text)
            print(text, flush=True)
        self.profile_report = report

    # --- the table -------------------------------------------------------------------

    def table(self, m):
        return report.table(self, m)

    def write_json(self, m, text):
        out = Path(self.args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "machine": m, "machine_line": machine_line(m), "rounds": self.rounds,
            "quick": self.args.quick, "sizes": self.size,
            "client_procs_5b": getattr(self, "client_procs", None), "figures": {
                str(f): ms for f, ms in getattr(self, "stats", {}).items()},
            "raw": {str(f): ms for f, ms in self.results.items()},
            "table": {"header": self.header, "rows": self.rows}, "notes": self.notes,
            "profile": getattr(self, "profile_report", None), "text": text,
        }
        out.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str))
        return out


# --- profile summaries ------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11",
                    help="figures to run, comma-separated (default: all)")
    ap.add_argument("--client-procs", type=int, default=CLIENT_PROCS, metavar="N",
                    help="client processes for figure 5b's 16 parallel set-up loops"
                         f" (default: {CLIENT_PROCS})")
    ap.add_argument("--json", default=str(BENCH / "results" / "latest.json"))
    ap.add_argument("--profile", nargs="?", const=",".join(PROFILE_PATHS), default="",
                    metavar="PATHS",
                    help="also profile nexusws under py-spy on these paths (default: "
                         f"{','.join(PROFILE_PATHS)}); --only 0 profiles alone")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_signal(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    m = machine()
    print(machine_line(m), flush=True)
    started = time.monotonic()
    try:
        bench.start_main()
        for fig in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"):
            if fig in only:
                load = procs.ForeignLoad()
                try:
                    getattr(bench, f"fig{fig}")()
                except Exception as e:  # recorded; the bench goes on
                    bench.note(f"figure {fig} failed: {e!r}")
                    traceback.print_exc()
                share = load.share()
                if share >= FOREIGN_NOTE:
                    bench.note(f"figure {fig}: other processes used {share:.0%} of the machine's"
                               " CPU meanwhile: its numbers are noisier than a quiet machine's")
        if args.profile:
            bench.profile()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping every process", file=sys.stderr)
        Proc.stop_all()
        return 130
    finally:
        Proc.stop_all()
    text = bench.table(m)
    text += f"\ntotal bench time {time.monotonic() - started:.0f} s"
    print()
    print(text)
    out = bench.write_json(m, text)
    print(f"\nJSON: {out}")
    if args.profile:
        print(f"profiles: {out.parent}/profile-*.txt (py-spy raw stacks) and profile-*-top.txt")
    shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
