"""Real gateway nodes and a real balancer process on loopback, and polling their HTTP answers."""

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from conftest import BIN
from support.waiting import wait_until

TESTS = Path(__file__).parent.parent
LOOPBACK = "tcp:0:interface=127.0.0.1"


def get(url, parse=True):
    with urllib.request.urlopen(url, timeout=10) as answer:
        raw = answer.read()
    return json.loads(raw) if parse else raw.decode()


class Node:
    def __init__(self, gateway, tmp_path, name, http_listen=LOOPBACK):
        www = tmp_path / name
        www.mkdir(exist_ok=True)
        services = tmp_path / "services.json"  # one service of two instances: 2 in use is load 100
        services.write_text(json.dumps({"echo": {"script": str(TESTS / "sessions" / "helper_echo.py"),
                                                 "count": 2, "options": {"kind": "helpers"}}}))
        self.args = ["--ws_listen", LOOPBACK, "--http_listen", http_listen, "--http_directory", str(www),
                     "--remote_session_config", str(services),
                     "--state_file", str(tmp_path / f"{name}.state")]
        self.gw = gateway(self.args, http=True)
        self.http = f"127.0.0.1:{self.gw.http_port}"


def start_balancer(tmp_path, nodes, mail):
    cfg = tmp_path / "session.json"
    cfg.write_text(json.dumps({"port": 0, "ssl": False, "debug": True, "server": "balancer.test",
                               "pollInterval": 0.5, "pollTimeout": 0.3, "mailInterval": 0,
                               "simulationServers": [n.http for n in nodes], **mail}))
    log = tmp_path / "balancer.log"
    with open(log, "w") as out:
        p = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "nexusws-balancer", "--config",
                              str(cfg), "--listen", LOOPBACK], stdout=out, stderr=subprocess.STDOUT)
    m = wait_until(lambda: re.search(r"--listen listening on http://127\.0\.0\.1:(\d+)/", log.read_text()),
                   15, "the balancer listens")
    url = f"http://127.0.0.1:{m.group(1)}"
    wait_until(lambda: get(url + "/", parse=False) == "1", 10, "a node answers")
    return p, url, log


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(15)
    return p.returncode
