"""The bench's report: statistics, the machine line, the table, profile summaries."""

import datetime
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QUICK_IDLE_MAX = 2000  # --quick holds at most this many idle tunnels


def stats(samples):
    s = [x for x in samples if x is not None]
    if not s or not all(isinstance(x, (int, float)) for x in s):
        return None
    return {"median": statistics.median(s), "min": min(s), "max": max(s), "samples": s}


def fmt(st, digits=0, unit=""):
    if st is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if len(st["samples"]) == 1 or st["min"] == st["max"]:
        return f.format(st["median"]) + unit
    return f"{f.format(st['median'])}{unit} [{f.format(st['min'])}–{f.format(st['max'])}]"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def v(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    def commit():
        """The checkout's commit (read-only git), '+changes' if nexusws differs from it."""
        try:
            head = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(BENCH.parent), "status", "--porcelain", "--", "nexusws", "twisted",
                 "setup.cfg"], capture_output=True, text=True, check=True).stdout.strip()
            return head + ("+changes" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            return "-"

    from autobahn.websocket import USES_NVX
    return {
        "commit": commit(),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "twisted": v("twisted"), "autobahn": v("autobahn"),
        "nvx": bool(USES_NVX), "websockify": v("websockify"), "numpy": v("numpy"),
        "nexusws": v("nexusws"), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def machine_line(m):
    return (f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
            f"Twisted {m['twisted']}, Autobahn {m['autobahn']} (NVX {'on' if m['nvx'] else 'OFF'}), "
            f"websockify {m['websockify']} (numpy {m['numpy']}), nexusws {m['nexusws']} ({m['commit']}), "
            f"RLIMIT_NOFILE {m['nofile']}")


def table(bench, m):
    """The result table (a string); sets bench.stats, bench.rows, bench.header."""
    self = bench
    R = {f: {k: {t: stats(v) for t, v in d.items()} for k, d in ms.items()}
         for f, ms in self.results.items()}
    self.stats = R
    rows = []
    cols = ["nexusws", "websockify", "plain TCP", "client ceiling", "minimal relay"]
    if 11 in R:  # figure 11's peer: plain Slurm (bench/slurmfig.py)
        cols.append("plain Slurm")

    def get(fig, metric, t):
        return R.get(fig, {}).get(metric, {}).get(t)

    def ratio(fig, metric, a="nexusws", b="websockify"):
        x, y = get(fig, metric, a), get(fig, metric, b)
        if not x or not y or not y["median"]:
            return None
        return x["median"] / y["median"]

    def row(label, fig, metric, digits=0, rat=True, target="", verdict=None, versus="websockify"):
        if fig not in R or metric not in R[fig]:
            return
        cells = [fmt(get(fig, metric, c), digits) for c in cols]
        r = ratio(fig, metric, b=versus) if rat else None
        shown = "" if r is None else f"{r:.2f}" if r >= 0.1 else f"{r:.4f}"
        rows.append([label] + cells + [shown, target,
                                      verdict if verdict is not None else ""])

    def ok(cond):
        return "" if cond is None else ("met" if cond else "NOT MET")

    def med(fig, metric, t="nexusws"):
        s = get(fig, metric, t)
        return None if s is None else s["median"]

    r1 = ratio(1, "MB/s")
    row("1 backend→client, 1 tunnel, MB/s", 1, "MB/s", target="≥1.5×",
        verdict=ok(None if r1 is None else r1 >= 1.5))
    r2 = ratio(2, "MB/s")
    row("2 client→backend, 1 tunnel, MB/s", 2, "MB/s", target="≥2×",
        verdict=ok(None if r2 is None else r2 >= 2))
    r3a, r3b = ratio("3a", "MB/s"), ratio("3b", "MB/s")
    row("3a 4 tunnels backend→client, MB/s", "3a", "MB/s", target="≥1×",
        verdict=ok(None if r3a is None else r3a >= 1))
    row("3b 4 tunnels client→backend, MB/s", "3b", "MB/s", target="≥1×",
        verdict=ok(None if r3b is None else r3b >= 1))
    row("4 RTT 64 B p50, µs", 4, "p50 µs")
    row("4 RTT 64 B p99, µs", 4, "p99 µs")
    row("4 server CPU per round trip, µs (info)", 4, "server CPU µs/round trip", 1, rat=False)
    # Added latency: gateway p50 minus plain TCP p50, per round.
    if 4 in self.results:
        plain = self.results[4]["p50 µs"].get("plain TCP", [])
        for t in ("nexusws", "websockify"):
            vals = self.results[4]["p50 µs"].get(t, [])
            added = [a - b for a, b in zip(vals, plain, strict=False) if a is not None and b is not None]
            self.results[4].setdefault("added p50 µs", {})[t] = added
        R[4]["added p50 µs"] = {t: stats(v) for t, v in self.results[4]["added p50 µs"].items()}
        ra = ratio(4, "added p50 µs")
        row("4 added RTT p50 (gateway − plain), µs", 4, "added p50 µs", target="≤0.5×",
            verdict=ok(None if ra is None else ra <= 0.5))
    r5 = ratio("5a", "set-ups/s")
    row("5a set-ups/s, sequential", "5a", "set-ups/s", target="≥10×",
        verdict=ok(None if r5 is None else r5 >= 10))
    r5b = ratio("5b", "set-ups/s")
    row("5b set-ups/s, 16 in parallel", "5b", "set-ups/s", target="≥10×",
        verdict=ok(None if r5b is None else r5b >= 10))
    row("5a client CPU per set-up, µs (info)", "5a", "client CPU µs/set-up", rat=False)
    row("5b client CPU per set-up, µs (info)", "5b", "client CPU µs/set-up", rat=False)
    if 6 in R:
        failed = self.results.get(6, {}).get("the next one failed with", {})
        for kind, errs in failed.items():
            self.notes.append(f"figure 6 {kind}: the tunnel after the most held failed: {errs[-1]}")
        for metric in R[6]:
            if metric == "the next one failed with":
                continue
            digits = 1 if "MiB" in metric or "KiB" in metric else 0
            target = verdict = ""
            if metric == "most tunnels held":
                target = "≥9000"
                v = med(6, metric)
                verdict = ok(None if v is None else v >= 9000)
                if self.args.quick:
                    target, verdict = f"(--quick: ≤{QUICK_IDLE_MAX})", ""
            elif metric.startswith("echoing"):
                target = "all"
                held = med(6, "most tunnels held")
                v = med(6, metric)
                verdict = ok(None if v is None or held is None else v == held)
            elif "KiB/tunnel at max" in metric:
                target = "≤64 KiB"
                v = med(6, metric)
                verdict = ok(None if v is None else v <= 64)
            row(f"6 {metric}", 6, metric, digits=digits, rat="KiB/tunnel" in metric,
                target=target, verdict=verdict)
    if 7 in R:
        g = med(7, "PSS growth MiB")
        gr = med(7, "RSS growth MiB")
        row("7 slow reader: RSS growth, MiB", 7, "RSS growth MiB", 1, target="≤16 MiB",
            verdict=ok(None if gr is None else gr <= 16))
        row("7 slow reader: PSS growth, MiB", 7, "PSS growth MiB", 1, target="≤16 MiB",
            verdict=ok(None if g is None else g <= 16))
        lost = get(7, "bytes lost", "nexusws")
        row("7 slow reader: bytes lost", 7, "bytes lost", rat=False, target="0",
            verdict=ok(None if lost is None else lost["max"] == 0))
        row("7 slow reader: client read MB/s", 7, "read MB/s", 1, rat=False)
    if 8 in R:
        o = med(8, "overhead ms")
        row("8 session launch, ms", 8, "launch ms", 1, rat=False)
        row("8 the service's own start, ms", 8, "service's own start ms", 1, rat=False)
        row("8  (its interpreter's start-up, calibrated), ms", 8, "interpreter start ms", 1,
            rat=False)
        row("8 launch overhead, ms", 8, "overhead ms", 1, rat=False, target="≤20 ms",
            verdict=ok(None if o is None else o <= 20))
        row("8  of which connect→spawn call, ms (info)", 8, "connect→spawn ms", 1, rat=False)
        row("8  of which spawning (spawn call→service's first line − interpreter), ms (info)",
            8, "spawning ms", 1, rat=False)
        row("8  of which listening→first byte, ms (info)", 8, "listening→first byte ms", 1,
            rat=False)
    if 9 in R:
        c = med(9, "reserve+release/s")
        row("9 reserve+release cycles/s", 9, "reserve+release/s", rat=False, target="≥1000",
            verdict=ok(None if c is None else c >= 1000))
        row("9  gateway CPU per cycle, µs (info)", 9, "gateway CPU µs per cycle", rat=False)
        row("9  client CPU per cycle, µs (info)", 9, "client CPU µs per cycle", rat=False)
        row(f"9 reserve+release cycles/s, {bench.rest_clients} clients in parallel (info)", 9,
            "reserve+release/s parallel", rat=False)
        for metric in R[9]:
            if metric.startswith("reserve ms"):
                row(f"9 {metric.replace('ms', 'time, ms', 1)} (info)", 9, metric, 2, rat=False)
        levels = [lv for lv in self.size["status_levels"] if f"/v1/status ms at {lv}" in R[9]]
        for lv in levels:
            row(f"9 /v1/status with {lv} reservations, ms", 9, f"/v1/status ms at {lv}", 2,
                rat=False)
        if len(levels) >= 2:
            lo, hi = levels[0], levels[-1]
            a, b = med(9, f"/v1/status ms at {lo}"), med(9, f"/v1/status ms at {hi}")
            mid = levels[len(levels) // 2]
            cm = med(9, f"/v1/status ms at {mid}")
            slope = (b - a) / (hi - lo) * 1e3  # µs per reservation
            R[9]["µs per reservation"] = {"nexusws": stats([slope])}
            linear = None
            if cm is not None and mid not in (lo, hi) and cm > a:
                # Linear: the step mid->hi costs per reservation no more than 2x lo->mid.
                linear = (b - cm) / (hi - mid) <= 2 * (cm - a) / (mid - lo) + 0.002
            row("9 /v1/status cost per reservation, µs", 9, "µs per reservation", 1, rat=False,
                target="linear", verdict=ok(linear))
    if any(f in R for f in ("10a", "10b", "10c", "10d")):
        nt = ", basic mode (no tracking)"  # rfb.NO_TRACKING
        r10 = ratio("10a", "MB/s")
        row("10a client→backend over RFB, 64 KiB ClientCutText a frame, input tracking on, MB/s",
            "10a", "MB/s", target="≥2×", verdict=ok(None if r10 is None else r10 >= 2))
        row("10a  nexusws basic-mode tunnel (no tracking), MB/s (info)", "10a", "MB/s" + nt,
            rat=False)
        row("10b RFB events one a frame (PointerEvent, FBUR alternating), messages/s",
            "10b", "messages/s")
        row("10b  nexusws basic-mode tunnel (no tracking), messages/s (info)", "10b",
            "messages/s" + nt, rat=False)
        row("10c 4096 PointerEvent+FBUR pairs a 64 KiB frame, messages/s", "10c", "messages/s")
        row("10c  nexusws basic-mode tunnel (no tracking), messages/s (info)", "10c",
            "messages/s" + nt, rat=False)
        row("10d a noVNC paste (one ClientCutText, 10 KiB frames), MB/s", "10d", "MB/s")
        row("10d  nexusws basic-mode tunnel (no tracking), MB/s (info)", "10d", "MB/s" + nt,
            rat=False)
        for fig, per, digits in (("10a", "frame", 1), ("10b", "message", 2),
                                 ("10c", "message", 3), ("10d", "frame", 1)):
            row(f"{fig}  nexusws CPU per {per}, tracking on, µs (info)", fig,
                f"gateway CPU µs/{per}", digits, rat=False)
            row(f"{fig}  nexusws CPU per {per}, no tracking, µs (info)", fig,
                f"gateway CPU µs/{per}" + nt, digits, rat=False)
    if 11 in R:
        import slurmfig
        slurmfig.rows(row)
    versus = "nexusws/websockify"
    if 11 in R:  # figure 11's ratio is against plain Slurm
        versus = "nexusws/plain Slurm" if set(R) == {11} else versus + " (11: /plain Slurm)"
    header = ["figure", *cols, versus, "target", "verdict"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [machine_line(m), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    lines.append("")
    lines.append(f"median [min–max] over {self.rounds} rounds, measured alternately; MB = 10^6 bytes;"
                 f" {'--quick sizes' if self.args.quick else 'full sizes'}.")
    lines.append("client ceiling: the same client against bench/wsmini.py, a WebSocket server that is"
                 " itself the source/sink/echo (no gateway, no second hop); plain TCP: the same")
    lines.append("client straight to the backend. Figures 6, 7: websockify's memory is summed over its"
                 " processes (it forks per tunnel): PSS is the fair figure, RSS counts shared pages")
    lines.append("once per process. Added RTT: gateway p50 − plain TCP p50 of the same round."
                 " Client CPU per set-up:")
    lines.append("the bench process's CPU time over the set-ups it made; 10^6 / that is the client's own"
                 " CPU-bound ceiling in set-ups/s.")
    if any(f in self.results for f in ("10a", "10b", "10c", "10d")):
        lines.append("Figure 10: the client speaks RFB to bench/backend.py --rfb; nexusws through a"
                     " session tunnel (a token of the Rfb service: its InputTracker on, checked each")
        lines.append("time), and, for the tracker's cost, through a basic-mode tunnel of the same"
                     " nexusws (no token, no tracker): the 'basic mode' rows. Messages/s and MB/s")
        lines.append("count RFB bytes to the backend. CPU per frame or message: the nexusws"
                     " process's, over the timed part.")
    if "5b" in self.results:
        k = getattr(self, "client_procs", None)
        lo, hi = 16 // k, -(-16 // k)
        each = f"{lo}" if lo == hi else f"{lo}–{hi}"
        each += " loops" if k == 1 else " loops each"
        lines.append(f"note: figure 5b runs its 16 set-up loops in {k} client"
                     f" process{'es' if k != 1 else ''}"
                     f" ({each}), set-ups summed over wall time;"
                     " 5a runs one loop in the bench process. 5b's client CPU per set-up is"
                     " summed over those processes.")
    if 11 in self.results:
        import slurmfig
        lines += slurmfig.NOTES
    for n in self.notes:
        lines.append(f"note: {n}")
    self.rows = rows
    self.header = header
    return "\n".join(lines)


def _stacks(raw):
    """(frames, count) from py-spy's raw output; a frame's name may hold newlines."""
    pending = ""
    for line in Path(raw).read_text(errors="replace").splitlines():
        pending += line
        stack, _, count = pending.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)
            pending = ""


def _function(frame):
    """C{name (file:line)} -> C{name (file)}."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if name else frame


def summarize_profile(raw, top=20):
    """Own and inclusive shares per function (and own per line) of the reactor's samples.

    Only samples inside the reactor loop count: start-up (imports) is left out.
    """
    own, own_line, incl, total = {}, {}, {}, 0
    for frames, n in _stacks(raw):
        if not any("mainLoop" in f for f in frames):
            continue
        total += n
        own_line[frames[-1]] = own_line.get(frames[-1], 0) + n
        leaf = _function(frames[-1])
        own[leaf] = own.get(leaf, 0) + n
        for f in {_function(f) for f in frames}:
            incl[f] = incl.get(f, 0) + n

    def share(d, k=top):
        return [(f, c / max(total, 1) * 100) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:k]]

    return {"samples": total, "own": share(own), "own_lines": share(own_line, 12),
            "inclusive": share(incl, 30)}


def format_profile(name, top, idle=False):
    what = "wall clock, idle included" if idle else "CPU samples, idle excluded"
    lines = [f"profile {name}: {top['samples']} samples in the reactor loop ({what})",
             "  own time by function:"]
    lines += [f"    {pct:5.1f}%  {f}" for f, pct in top["own"]]
    lines.append("  own time by line:")
    lines += [f"    {pct:5.1f}%  {f}" for f, pct in top["own_lines"]]
    lines.append("  inclusive:")
    lines += [f"    {pct:5.1f}%  {f}" for f, pct in top["inclusive"]]
    return "\n".join(lines) + "\n"
