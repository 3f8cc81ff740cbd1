"""The portal's, the dashboard's and the test page's pure logic (nexusws/ansys/nexus/js/places.js),
run in Node: where the API, the viewer and the WebSocket are seen from a page (at the gateway's
root and behind a proxy at a path prefix), and how durations, sizes and states read."""

import json
import subprocess

import pytest

from conftest import have, require
from nexusws.web import ANSYS_ROOT

PLACES = f"{ANSYS_ROOT}/nexus/js/places.js"

DRIVER = r"""
import * as p from './places.mjs';
const run = (name, args) => {
  if (name === 'websocket') {
    const [place, page, root] = args;
    return p.websocketUrl(p.websocketPlace(place, new URL(page), root));
  }
  if (name === 'viewer') {
    const [root, token, service, place, page] = args;
    return p.viewerUrl(root, token, service, p.websocketPlace(place, new URL(page), root));
  }
  return p[name](...args);
};
const cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(([name, args]) => run(name, args))));
"""

DIRECT = {"url": None, "port": 9090, "secure": False, "proxied": False}
PROXIED = {"url": None, "port": None, "secure": False, "proxied": True}
CASES = [
    # The gateway's root: the path before /ansys/nexus/.
    (("gatewayRoot", ["/ansys/nexus/sessions/"]), "/"),
    (("gatewayRoot", ["/nexus/ansys/nexus/admin/index.html"]), "/nexus/"),
    (("gatewayRoot", ["/n1/ansys/nexus/"]), "/n1/"),
    (("apiPath", ["/nexus/", "release", "a b/c", None]), "/nexus/v1/release/a%20b%2Fc"),
    (("apiPath", ["/", "admin_extend", "ab12", {"seconds": 900}]), "/v1/admin_extend/ab12?seconds=900"),
    (("apiPath", ["/", "services", None, None]), "/v1/services"),
    # Directly: the listener's own port on the page's host; wss if the listener is.
    (("websocket", [DIRECT, "http://gw.example:9000/ansys/nexus/", "/"]), "ws://gw.example:9090/websockify"),
    (("websocket", [{**DIRECT, "secure": True}, "https://[::1]:9000/ansys/nexus/", "/"]),
     "wss://[::1]:9090/websockify"),
    # Through a proxy: the page's own origin, at <prefix>/ws/.
    (("websocket", [PROXIED, "https://nexus.example/nexus/ansys/nexus/sessions/", "/nexus/"]),
     "wss://nexus.example/nexus/ws/"),
    (("websocket", [PROXIED, "http://127.0.0.1:8443/ansys/nexus/", "/"]), "ws://127.0.0.1:8443/ws/"),
    # --advertise_url wins; nothing known (the call refused): the proxy's guess.
    (("websocket", [{**DIRECT, "url": "wss://cluster.example/n1/ws/"}, "http://h:1/ansys/nexus/", "/"]),
     "wss://cluster.example/n1/ws/"),
    (("websocket", [None, "http://h:9000/x/ansys/nexus/", "/x/"]), "ws://h:9000/x/ws/"),
    (("viewer", ["/nexus/", "T", "Desktop", PROXIED, "https://n.example/nexus/ansys/nexus/sessions/"]),
     "/nexus/ansys/nexus/novnc/vnc_envision.html?host=n.example&port=&path=nexus%2Fws%2F&encrypt=1"
     "&token=T&session_name=Desktop&api=%2Fnexus"),
    (("duration", [None]), "\u2013"),
    (("duration", [44.6]), "45 s"),
    (("duration", [725]), "12 min 5 s"),
    (("duration", [3 * 3600 + 240]), "3 h 04 min"),
    (("duration", [2 * 86400 + 3 * 3600]), "2 d 3 h"),
    (("bytes", [512]), "512 B"),
    (("bytes", [1500]), "1.5 KB"),
    (("bytes", [20_000_000]), "20 MB"),
    (("throughput", [{"up": 0, "down": 1000, "at": 0}, {"up": 500, "down": 3000, "at": 2000}]),
     {"up": 250, "down": 1000}),
    (("throughput", [None, {"up": 1, "down": 1, "at": 1}]), None),
    (("throughput", [{"up": 9, "down": 9, "at": 0}, {"up": 1, "down": 1, "at": 1000}]), None),
    (("stateText", [{"state": "active"}]), "running"),
    (("stateText", [{"state": "detached", "grace_left": 42}]), "detached: 42 s left to reconnect"),
    (("stateText", [{"state": "starting", "queue": "Resources",
                     "backend": {"slurm_state": "PENDING"}}]), "queued: Resources"),
    (("stateText", [{"state": "starting", "backend": None}]), "starting"),
    (("stateText", [{"state": "stopping"}]), "ending"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    require(have("node"), "node")
    work = tmp_path_factory.mktemp("pages_js")
    (work / "places.mjs").write_text(open(PLACES, encoding="utf-8").read())
    (work / "driver.mjs").write_text(DRIVER)
    run = subprocess.run(["node", str(work / "driver.mjs"), json.dumps([case for case, _ in CASES])],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_places(results, index):
    assert results[index] == CASES[index][1]
