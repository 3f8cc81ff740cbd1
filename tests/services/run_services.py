"""Runs services with the real reactor and real processes; used by tests/test_services.py.

    run_services.py --tag TAG --out FILE [--config FILE] [--local APP=COUNT]... [--ensight EXE]
                    [--envision EXE] [--vnc-port-base N] [--password PW] [--concurrent]

Starts every instance of every service (one after another, or all at once
with --concurrent), reads the first line each address sends, records the
instance's processes (Service.pids), stops everything, and writes one JSON
object to the --out file::

    {"instances": [{"service", "index", "address", "greeting", "pids"}],
     "errors": ["one line per failed start"],
     "left": [[pid, start_time], ...]}   # recorded processes alive 3 s after the stops

The gateway's log goes to stderr. Like the gateway, it makes itself a child
subreaper first, so daemons its sessions start stay among its descendants.
"""

import argparse
import json
import socket
import sys

import txaio
from twisted.internet import defer, task, threads
from twisted.logger import globalLogBeginner, textFileLogObserver

from nexusws.logs import set_verbosity
from nexusws.sessions import procs
from nexusws.sessions.builtin import builtin_specs
from nexusws.sessions.config import build_services, read_config
from nexusws.sessions.launcher import Launcher


def first_line(host, port):
    with socket.create_connection((host, port), timeout=10) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
        return data.decode()


async def run(reactor, args):
    procs.become_subreaper()
    launcher = Launcher(reactor)
    services = build_services(read_config(args.config), reactor, launcher) if args.config else []
    specs = [(app, int(count)) for app, count in (spec.split("=") for spec in args.local)]
    executables = {"ensight": args.ensight, "envision": args.envision,
                   "vnc_port_base": args.vnc_port_base}
    services += build_services(builtin_specs(specs, executables), reactor, launcher)
    report = {"instances": [], "errors": [], "left": []}
    recorded = set()

    async def one(service, index):
        options = {"tag": args.tag, "token": f"token-{service.name}-{index}"}
        if args.password:
            options["password"] = args.password
        try:
            host, port = await service.start(index, options)
            greeting = await threads.deferToThread(first_line, host, port)
        except Exception as e:  # reported
            report["errors"].append(str(e))
            return
        pids = service.pids(index)
        recorded.update(map(tuple, pids))
        report["instances"].append({"service": service.name, "index": index,
                                    "address": [host, port], "greeting": greeting,
                                    "pids": pids})

    starts = [(service, index) for service in services for index in range(service.count)]
    for service in services:
        service.grace = 1.0
    if args.concurrent:
        await defer.gatherResults([defer.ensureDeferred(one(s, i)) for s, i in starts])
    else:
        for service, index in starts:
            await one(service, index)
    for service, index in starts:
        recorded.update(service.pids(index))  # a failed start may have left processes too
        await service.stop(index)
    # SIGKILL is sent, not awaited: give the kernel a moment to finish them.
    for _ in range(30):
        report["left"] = sorted(p for p in recorded if procs.same_process(*p))
        if not report["left"]:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config")
    parser.add_argument("--local", action="append", default=[])
    parser.add_argument("--ensight")
    parser.add_argument("--envision")
    parser.add_argument("--vnc-port-base", type=int)
    parser.add_argument("--password")
    parser.add_argument("--concurrent", action="store_true")
    args = parser.parse_args()
    txaio.use_twisted()
    set_verbosity(1)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    def done(report):
        with open(args.out, "w") as f:
            json.dump(report, f)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)).addCallback(done))


if __name__ == "__main__":
    main()
