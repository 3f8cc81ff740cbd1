"""Autobahn TestSuite (fuzzingclient) run against nexusws, websockify and Autobahn's echo.

Run it through bench/conformance, which makes the virtualenvs. Everything is on
127.0.0.1, on ports the kernel picks (each listener binds port 0, or is handed
a socket bound to port 0), and every process started here is stopped on exit.

    python bench/conformance.py --wstest W --nexusws N --websockify S [options]
    python bench/conformance.py echo-backend     (internal: the TCP echo behind a gateway)
    python bench/conformance.py autobahn-echo    (internal: the reference WebSocket echo)
"""

import argparse
import collections
import datetime
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AGENTS = ("nexusws", "websockify", "autobahn")
REFERENCE = "autobahn"
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
CLOSE_VERDICTS = ("OK", "INFORMATIONAL", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT", "FAILED")
LOG_WORDS = ("Traceback", "Unhandled", "Disconnected")


# --- the helper servers (run as child processes) -----------------------------------


def echo_backend():
    """Plain TCP echo on a free port; one line per connection opened and closed."""
    import asyncio

    count = 0

    def note(*words):
        print(f"{time.time():.3f}", *words, flush=True)

    async def handle(reader, writer):
        nonlocal count
        count += 1
        n = count
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        note("open", n, peer)
        got = 0
        how = "eof"
        try:
            while data := await reader.read(65536):
                got += len(data)
                writer.write(data)
                await writer.drain()
        except OSError as e:
            how = type(e).__name__
        finally:
            writer.close()
            note("close", n, peer, got, how)

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        note("listening", server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def autobahn_echo():
    """Autobahn's Twisted WebSocketServerProtocol echoing every message as it came."""
    import txaio

    txaio.use_twisted()
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    txaio.start_logging(level="info")  # its warnings, as nexusws logs Autobahn's
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    # As Autobahn's own testee server: fail connections with a close handshake.
    factory.setProtocolOptions(failByDrop=False)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print("listening", port.getHost().port, flush=True)
    reactor.run()


# --- processes -----------------------------------------------------------------------


class Proc:
    """A child in a process group of its own, its output in a file."""

    def __init__(self, name, argv, log, stdin=subprocess.DEVNULL, cwd=None):
        self.name, self.log = name, log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdin=stdin, stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=cwd)

    def text(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not say /{pattern}/ (exit {self.popen.poll()}); "
                           f"its log {self.log}:\n{self.text()[-2000:]}")

    def stop(self, grace=10.0):
        """SIGTERM to its process group, SIGKILL after C{grace} seconds; the exit code."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # the group too: websockify forks a child per connection
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()
        self._out.close()
        return self.popen.returncode


class Stopped(Exception):
    pass


def _on_signal(signum, frame):
    raise Stopped(signal.Signals(signum).name)


# --- analysis ------------------------------------------------------------------------


def one_line(text, limit=110):
    text = html.unescape(re.sub(r"<[^>]+>", " ", text or ""))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def case_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def load_reports(outdir):
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    details = {}
    for agent, cases in index.items():
        for case_id, entry in cases.items():
            with open(os.path.join(outdir, entry["reportfile"])) as f:
                details[agent, case_id] = json.load(f)
    return index, details


def counts(index, agent, field, order):
    c = collections.Counter(e[field] for e in index.get(agent, {}).values())
    out = {v: c.pop(v, 0) for v in order}
    out.update(sorted(c.items()))
    return out


def messages(events):
    return [e for e in events if e[0] == "message"]


def tags(detail):
    """What a case's outcome says about why it is not OK (a tunnel's usual reasons first)."""
    out = []
    received = messages(detail["received"])
    expected = [messages(v) for v in detail["expected"].values()]
    texts = any(not m[2] for exp in expected for m in exp)
    if texts and received and all(m[2] for m in received):
        out.append("text echoed as binary")
    if expected and received and all(len(exp) != len(received) for exp in expected):
        out.append(f"{len(received)} messages for {min(len(e) for e in expected)} expected")
    if expected and any(expected) and not received:
        out.append("no echo")
    if detail["behavior"] == "OK" and detail["behaviorClose"] != "OK":
        out.append("close only")
    return out


def category(detail):
    """Why a case is not OK, in the terms of docs/conformance.rst."""
    behavior, result = detail["behavior"], detail["result"] or ""
    received = messages(detail["received"])
    expected = [messages(v) for v in detail["expected"].values()]
    if behavior == "INFORMATIONAL":
        return "informational"
    if behavior == "NON-STRICT":
        return "echo not back before the connection was failed"
    if behavior == "OK":
        return "close only"
    if "did not finish within" in result or (
            not received and any(expected) and all(m[1] == "" for e in expected for m in e)):
        return "empty message: nothing to forward"
    if received and not any(expected) and detail["remoteCloseCode"] == 1007:
        return "valid prefix of an invalid text message forwarded"
    if "but got binary" in result or "got binary = True" in result or (
            received and all(m[2] for m in received) and any(not m[2] for e in expected for m in e)):
        return "text echoed as binary"
    if "Expected binary message with payload of length" in result or (
            expected and all(len(e) != len(received) for e in expected)):
        return "message boundaries not kept"
    return "other"


def parse_gateway_log(text):
    """nexusws: its tunnel lines in order, and where each traceback-ish line falls."""
    tunnels, current, words = [], {}, {w: [] for w in LOG_WORDS}
    for lineno, line in enumerate(text.splitlines()):
        m = re.search(r"tunnel open: (\S+) (\S+) -> ", line)
        if m:
            client = m.group(1)  # host:port; a later tunnel may reuse the port
            current[client] = {"client": client, "line": lineno, "closed": None}
            tunnels.append(current[client])
        m = re.search(r"tunnel closed: (\S+) -> .*?: (\d+) bytes up, (\d+) bytes down, "
                      r"([\d.]+)s, close (\S+)(.*)$", line)
        if m and m.group(1) in current:
            t = current.pop(m.group(1))
            t.update(closed=lineno, up=int(m.group(2)), down=int(m.group(3)),
                     seconds=float(m.group(4)), code=m.group(5), unclean="(unclean)" in m.group(6),
                     reason=m.group(6).replace("(unclean)", "").strip())
        for w in LOG_WORDS:
            if w in line:
                words[w].append(lineno)
    return tunnels, words


def open_sockets(ports):
    """Sockets (not TIME-WAIT) with either end on one of C{ports}, as ss shows them."""
    try:
        out = subprocess.run(["ss", "-Htan"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] in ("LISTEN", "TIME-WAIT"):
            continue
        if any(addr.rsplit(":", 1)[-1] in {str(p) for p in ports} for addr in f[3:5]):
            rows.append(" ".join(f))
    return rows


def close_of(detail):
    return {
        "behaviorClose": detail["behaviorClose"],
        "remoteCloseCode": detail["remoteCloseCode"],
        "wasClean": detail["wasClean"],
        "closedByMe": detail["closedByMe"],
    }


def compare_close(details, agent, case_ids):
    """Cases whose close differs from the reference echo's: code, cleanliness, verdict."""
    out = {"code": [], "clean": [], "closedByMe": [], "behaviorClose": []}
    for cid in case_ids:
        a, r = details.get((agent, cid)), details.get((REFERENCE, cid))
        if a is None or r is None:
            continue
        for field, key in (("remoteCloseCode", "code"), ("wasClean", "clean"),
                           ("closedByMe", "closedByMe"), ("behaviorClose", "behaviorClose")):
            if a[field] != r[field]:
                out[key].append({"case": cid, agent: a[field], REFERENCE: r[field]})
    return out


# --- the run -------------------------------------------------------------------------


def source_state():
    """The checkout nexusws was installed from: commit, and changed files under nexusws/."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain", "--", "nexusws", "twisted", "setup.cfg",
                                         "pyproject.toml", "constraints.txt").splitlines()]
    try:
        with open(os.path.join(ROOT, ".conformance", "py3", ".nexusws")) as f:
            installed = f.read().strip()
    except OSError:
        installed = None
    return {"commit": git("rev-parse", "HEAD").strip(), "changed": changed, "sources_sha256": installed}


def version_of(python, module):
    code = ("try:\n from importlib.metadata import version\n"
            "except ImportError:\n"
            " import pkg_resources\n version = lambda n: pkg_resources.get_distribution(n).version\n"
            f"print(version({module!r}))")
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wstest", required=True)
    ap.add_argument("--nexusws", required=True)
    ap.add_argument("--websockify", required=True)
    ap.add_argument("--cases", default="*", help="comma-separated case patterns (default: all)")
    ap.add_argument("--exclude", default="12.*,13.*", help="excluded cases (default: compression)")
    ap.add_argument("--servers", default=",".join(AGENTS))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds wstest may run in all")
    ap.add_argument("--json", help="summary file (default bench/results/conformance-<time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    args.wstest, args.nexusws, args.websockify = map(os.path.abspath, (args.wstest, args.nexusws, args.websockify))
    agents = [a for a in args.servers.split(",") if a]
    for a in agents:
        if a not in AGENTS:
            ap.error(f"unknown server {a}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    out_json = args.json or os.path.join(results, f"conformance-{stamp}.json")
    tmp = tempfile.mkdtemp(prefix="conformance-")
    procs = []
    started = time.monotonic()
    try:
        return run(args, agents, tmp, procs, out_json, started)
    except Stopped as e:
        print(f"conformance: stopped by {e}", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"conformance: {e}", file=sys.stderr)
        return 2
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            print(f"temporary directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, agents, tmp, procs, out_json, started):
    me = [sys.executable, os.path.abspath(__file__)]
    servers, backends = [], {}

    def start(name, argv, **kw):
        p = Proc(name, argv, os.path.join(tmp, name + ".log"), **kw)
        procs.append(p)
        return p

    def backend(name):
        p = start(f"echo-backend-{name}", me + ["echo-backend"])
        backends[name] = p
        return int(p.wait_for(r"listening (\d+)").group(1))

    ports = {}
    if "nexusws" in agents:
        bport = backend("nexusws")
        p = start("nexusws", [args.nexusws, "--ws_listen", "tcp:0:interface=127.0.0.1",
                              "--client_hostname", "127.0.0.1", "--client_port", str(bport)])
        ports["nexusws"] = int(p.wait_for(r"--ws_listen listening on ws://127\.0\.0\.1:(\d+)/").group(1))
        servers.append(("nexusws", p))
    if "websockify" in agents:
        bport = backend("websockify")
        # Handed a socket already bound to a free port (--inetd): no race for the port.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        ports["websockify"] = listener.getsockname()[1]
        try:
            p = start("websockify", [args.websockify, "--inetd", f"127.0.0.1:{bport}"], stdin=listener.fileno())
        finally:
            listener.close()
        p.wait_for(r"proxying from inetd")
        servers.append(("websockify", p))
    if "autobahn" in agents:
        p = start("autobahn", me + ["autobahn-echo"])
        ports["autobahn"] = int(p.wait_for(r"listening (\d+)").group(1))
        servers.append(("autobahn", p))

    outdir = os.path.join(tmp, "reports")
    spec = {
        "outdir": outdir,
        "options": {"failByDrop": False},
        "servers": [{"agent": a, "url": f"ws://127.0.0.1:{ports[a]}/"} for a in agents],
        "cases": [c.strip() for c in args.cases.split(",") if c.strip()],
        "exclude-cases": [c.strip() for c in args.exclude.split(",") if c.strip()],
        "exclude-agent-cases": {},
    }
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=2)
    print("servers: " + ", ".join(f"{a} ws://127.0.0.1:{ports[a]}/" for a in agents), flush=True)

    t0 = time.monotonic()
    wstest = start("wstest", [args.wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=tmp)
    last = 0
    while wstest.popen.poll() is None:
        if time.monotonic() - t0 > args.timeout:
            raise RuntimeError(f"wstest still running after {args.timeout:g} s; log: {wstest.log}")
        n = wstest.text().count("Running test case ID")
        if n >= last + 50:
            print(f"  {n} cases run, {time.monotonic() - t0:.0f} s", flush=True)
            last = n
        time.sleep(1)
    suite_seconds = time.monotonic() - t0
    wlog = wstest.text()
    if wstest.popen.returncode != 0 or not os.path.exists(os.path.join(outdir, "index.json")):
        raise RuntimeError(f"wstest exited {wstest.popen.returncode} without a report:\n{wlog[-3000:]}")
    for name, p in servers:
        if p.popen.poll() is not None:
            print(f"warning: {name} exited ({p.popen.returncode}) during the run", file=sys.stderr)

    # Connections still held a moment after the suite closed its last one.
    time.sleep(3)
    lingering = {}
    for name, _ in servers:
        watch = [ports[name]]
        if name in backends:
            watch.append(int(re.search(r"listening (\d+)", backends[name].text()).group(1)))
        lingering[name] = open_sockets(watch)
    logs_during = {name: p.text() for name, p in servers}

    # Stop the servers now, so that their shutdown is in their logs too.
    for _name, p in servers:
        p.stop()
    logs = {name: p.text() for name, p in servers}

    index, details = load_reports(outdir)
    case_ids = sorted({cid for a in index for cid in index[a]}, key=case_key)
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/conformance"] + _user_args(sys.argv[1:])),
        "suite_seconds": round(suite_seconds, 1),
        "versions": {
            "autobahntestsuite": version_of(os.path.join(os.path.dirname(args.wstest), "python"), "autobahntestsuite"),
            "autobahn (wstest)": version_of(os.path.join(os.path.dirname(args.wstest), "python"), "autobahn"),
            "twisted (wstest)": version_of(os.path.join(os.path.dirname(args.wstest), "python"), "Twisted"),
            "nexusws": version_of(sys.executable, "nexusws"),
            "websockify": version_of(sys.executable, "websockify"),
            "autobahn (nexusws, reference echo)": version_of(sys.executable, "autobahn"),
            "twisted (nexusws, reference echo)": version_of(sys.executable, "Twisted"),
            "python (wstest)": subprocess.run([os.path.join(os.path.dirname(args.wstest), "python"), "-c",
                                               "import sys; print(sys.version.split()[0])"],
                                              capture_output=True, text=True).stdout.strip(),
            "python": sys.version.split()[0],
        },
        "nexusws_source": source_state(),
        "spec": {k: v for k, v in spec.items() if k != "outdir"},
        "cases_run": len(case_ids),
        "servers": {},
    }
    for a in agents:
        summary["servers"][a] = {
            "url": f"ws://127.0.0.1:{ports[a]}/",
            "behavior": counts(index, a, "behavior", VERDICTS),
            "behaviorClose": counts(index, a, "behaviorClose", CLOSE_VERDICTS),
            "lingering_sockets_after_suite": lingering.get(a),
        }
        if a != REFERENCE and REFERENCE in agents:
            summary["servers"][a]["close_vs_reference"] = compare_close(details, a, case_ids)
        log_words = {w: sum(w in line for line in logs[a].splitlines()) for w in LOG_WORDS}
        summary["servers"][a]["log_lines"] = log_words
        summary["servers"][a]["log_lines_during_suite"] = {
            w: sum(w in line for line in logs_during[a].splitlines()) for w in LOG_WORDS}
        if a in backends:
            b = backends[a].text()
            summary["servers"][a]["backend_connections"] = {
                "opened": len(re.findall(r"^\S+ open ", b, re.M)),
                "closed": len(re.findall(r"^\S+ close ", b, re.M)),
            }

    if "nexusws" in agents:
        summary["nexusws"] = nexusws_details(index, details, case_ids, logs["nexusws"], agents)

    # Keep the logs and wstest's reports beside the summary.
    base = os.path.splitext(out_json)[0]
    for name, p in servers:
        shutil.copy(p.log, f"{base}-{name}.log")
    shutil.copy(wstest.log, f"{base}-wstest.log")
    # wstest's own reports (index.html, one JSON and HTML per case) unpack to ~75 MB.
    shutil.make_archive(f"{base}-reports", "gztar", outdir)
    summary["files"] = {"logs": [f"{base}-{n}.log" for n, _ in servers] + [f"{base}-wstest.log"],
                        "reports": f"{base}-reports.tar.gz"}
    with open(out_json, "w") as f:
        json.dump(summary, f, indent=1)
    print_table(summary, agents)
    print(f"\nsummary: {os.path.relpath(out_json, ROOT)} (wstest: {suite_seconds:.0f} s, "
          f"in all {time.monotonic() - started:.0f} s)")
    return 0


def _user_args(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--wstest", "--nexusws", "--websockify"):
            skip = True
            continue
        out.append(a)
    return out


def nexusws_details(index, details, case_ids, log, agents):
    tunnels, words = parse_gateway_log(log)
    lines = log.splitlines()
    mapped = len(tunnels) == len(case_ids)
    by_case = dict(zip(case_ids, tunnels, strict=True)) if mapped else {}

    def case_at(lineno):
        """The case whose tunnel was the last opened before log line C{lineno}."""
        best = None
        for cid, t in by_case.items():
            if t["line"] <= lineno and (best is None or t["line"] > by_case[best]["line"]):
                best = cid
        return best

    non_ok = []
    by_category = collections.defaultdict(list)
    for cid in case_ids:
        d = details[("nexusws", cid)]
        if d["behavior"] == "OK" and d["behaviorClose"] == "OK":
            continue
        ref = details.get((REFERENCE, cid))
        entry = {
            "case": cid,
            "behavior": d["behavior"],
            "behaviorClose": d["behaviorClose"],
            "remoteCloseCode": d["remoteCloseCode"],
            "wasClean": d["wasClean"],
            "category": category(d),
            "tags": tags(d),
            "description": one_line(d["description"]),
            "result": one_line(d["result"], 160),
            "resultClose": one_line(d["resultClose"], 160),
        }
        if ref is not None:
            entry["reference"] = {"behavior": ref["behavior"], **close_of(ref)}
        non_ok.append(entry)
        by_category[entry["category"]].append(cid)
        if d["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            by_category["close " + d["behaviorClose"]].append(cid)

    # Tunnels the gateway held well past the moment the suite's case ended.
    held = []
    for cid, t in by_case.items():
        d = details[("nexusws", cid)]
        if t["closed"] is None:
            held.append({"case": cid, "client": t["client"], "tunnel_seconds": None,
                         "case_seconds": d["duration"] / 1000, "note": "never closed"})
        elif t["seconds"] > d["duration"] / 1000 + 2.0:
            held.append({"case": cid, "client": t["client"], "tunnel_seconds": t["seconds"],
                         "case_seconds": d["duration"] / 1000, "close": t["code"], "unclean": t["unclean"]})
    samples = {}
    for w, found in words.items():
        samples[w] = [{"line": n + 1, "case": case_at(n), "text": lines[n][:300]} for n in found[:20]]
    gateway_close = {}
    for cid, t in by_case.items():
        if t["closed"] is not None:
            gateway_close[cid] = {"code": t["code"], "reason": t["reason"], "unclean": t["unclean"],
                                  "seconds": t["seconds"]}
    return {
        "non_ok_by_category": dict(by_category),
        "non_ok": non_ok,
        "tunnels": {"opened": len(tunnels), "closed": sum(t["closed"] is not None for t in tunnels),
                    "mapped_to_cases": mapped, "held_past_case": held},
        "log_samples": samples,
        "log_lines_by_case": {w: dict(collections.Counter(s["case"] for s in samples[w])) for w in samples},
        "gateway_close_by_case": gateway_close,
    }


def print_table(summary, agents):
    servers = summary["servers"]
    print(f"\nAutobahn TestSuite {summary['versions']['autobahntestsuite']}: "
          f"{summary['cases_run']} cases (excluded: {', '.join(summary['spec']['exclude-cases'])})\n")
    w = max(len(a) for a in agents) + 2

    def table(title, field, order):
        cols = list(order) + sorted({v for a in agents for v in servers[a][field]} - set(order))
        print(f"{title:<{w}}" + "".join(f"{c:>{max(len(c), 4) + 2}}" for c in cols))
        for a in agents:
            row = servers[a][field]
            print(f"{a:<{w}}" + "".join(f"{row.get(c, 0):>{max(len(c), 4) + 2}}" for c in cols))
        print()

    table("behavior", "behavior", VERDICTS)
    table("close", "behaviorClose", CLOSE_VERDICTS)
    for a in agents:
        s = servers[a]
        extra = ""
        if "close_vs_reference" in s:
            c = s["close_vs_reference"]
            extra = (f"; vs {REFERENCE}: close code differs in {len(c['code'])}, clean close in "
                     f"{len(c['clean'])}, closing side in {len(c['closedByMe'])}, close verdict in "
                     f"{len(c['behaviorClose'])} cases")
        logw = ", ".join(f"{k} {v}" for k, v in s["log_lines"].items())
        ling = s["lingering_sockets_after_suite"]
        print(f"{a}: log lines: {logw}; sockets open 3 s after the suite: "
              f"{'?' if ling is None else len(ling)}{extra}")
    nx = summary.get("nexusws")
    if nx:
        print(f"\nnexusws cases not OK ({len(nx['non_ok'])}):")
        for e in nx["non_ok"]:
            ref = e.get("reference", {})
            print(f"  {e['case']:<8} {e['behavior']:<13} close {e['behaviorClose']:<10} "
                  f"code {str(e['remoteCloseCode']):<5} (ref {ref.get('behavior', '-')}/"
                  f"{ref.get('remoteCloseCode', '-')})  {e['description'][:60]}  [{e['category']}]")
        print("\nby category:")
        for cat, ids in nx["non_ok_by_category"].items():
            print(f"  {len(ids):>3}  {cat}: {' '.join(ids)}")
        t = nx["tunnels"]
        print(f"\nnexusws tunnels: {t['opened']} opened, {t['closed']} closed; "
              f"held > 2 s past their case: {len(t['held_past_case'])}")
        for w, s in nx["log_samples"].items():
            if s:
                print(f"  first '{w}' line: {s[0]['line']} (case {s[0]['case']}): {s[0]['text'][:150]}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo-backend":
        echo_backend()
    elif len(sys.argv) > 1 and sys.argv[1] == "autobahn-echo":
        autobahn_echo()
    else:
        sys.exit(main())
