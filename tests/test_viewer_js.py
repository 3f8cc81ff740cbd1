"""The viewer page's URL logic (nexusws/ansys/nexus/novnc/viewer_url.js), run in Node."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import have, require
from nexusws.viewer import PAGES

DRIVER = r"""
import { readParams, websocketUrl } from './viewer_url.mjs';
const cases = JSON.parse(process.argv[2]);
const out = cases.map(([page]) => {
  const location = new URL(page);
  return websocketUrl(readParams(location), location);
});
const merged = readParams(new URL('http://h/p?password=query&x=1#password=fragment&token=t'));
console.log(JSON.stringify({ urls: out, merged: Object.fromEntries(merged) }));
"""

CASES = [
    # The reference's basic-mode URL: path defaults to websockify, as in noVNC's vnc.html.
    ("http://gw:9000/v.html?host=127.0.0.1&port=9090&password=x", "ws://127.0.0.1:9090/websockify"),
    # A launched service: the token goes in the WebSocket's query, encoded.
    ("http://gw:9000/v.html?path=websockify&token=a%20b%2Fc%26d&host=h&port=1",
     "ws://h:1/websockify?token=a%20b%2Fc%26d"),
    ("http://gw:9000/v.html?path=/ws/x%3Fy%3D1&token=t&host=h&port=1", "ws://h:1/ws/x?y=1&token=t"),
    ("http://gw:9000/v.html?path=&host=h&port=1", "ws://h:1/"),
    # Defaults: the page's own host and port; wss when the page came over https.
    ("http://gw:9000/v.html", "ws://gw:9000/websockify"),
    ("https://nexus.example.com/v.html?token=t", "wss://nexus.example.com/websockify?token=t"),
    ("https://nexus.example.com/v.html?encrypt=0&port=9090", "ws://nexus.example.com:9090/websockify"),
    ("http://gw/v.html?encrypt=true&host=h&port=443", "wss://h:443/websockify"),
    # IPv6 literals are bracketed; a name with one colon is left alone.
    ("http://gw/v.html?host=::1&port=9090", "ws://[::1]:9090/websockify"),
    ("http://gw/v.html?host=[::1]&port=9090", "ws://[::1]:9090/websockify"),
    ("http://[::1]:9000/v.html?port=9090", "ws://[::1]:9090/websockify"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    require(have("node"), "node")
    work = tmp_path_factory.mktemp("viewer_js")
    (work / "viewer_url.mjs").write_text((Path(PAGES) / "viewer_url.js").read_text())
    (work / "driver.mjs").write_text(DRIVER)
    run = subprocess.run(["node", str(work / "driver.mjs"), json.dumps([[page] for page, _ in CASES])],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[page.split("?", 1)[-1] for page, _ in CASES])
def test_websocket_url(results, index):
    assert results["urls"][index] == CASES[index][1]


def test_fragment_parameters_fill_in_what_the_query_lacks(results):
    assert results["merged"] == {"password": "query", "x": "1", "token": "t"}
