"""The HTTP side of a real gateway process, driven by curl, raw sockets and node.

Every gateway listens on 127.0.0.1 port 0; its ports come from its log.
"""

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import have, require

SECRET = "s3cr3t-T0KEN"
OTHER = "0ther-VALUE"
OUTSIDE_TEXT = b"TOP SECRET: outside the served root\n"
LOOPBACK = "tcp:0:interface=127.0.0.1"
PACKAGE = Path(__file__).resolve().parent.parent / "nexusws"


def curl(url, *options):
    """Run curl; return (status, headers with lower-case names, body)."""
    require(have("curl"), "curl")
    out = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", *options, url],
        capture_output=True, check=True, timeout=20,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def raw_http(port, request):
    """Send raw bytes on a fresh connection; return everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def www(tmp_path):
    """A served directory beside outside/, which holds the secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE_TEXT)
    root = tmp_path / "www"
    root.mkdir()
    for name in ("page.html", "app.js", "style.css", "data.json", "logo.png", "icon.svg", "mod.wasm"):
        (root / name).write_bytes(b"content of " + name.encode())
    (root / "counting.txt").write_bytes(b"".join(b"%03d" % i for i in range(100)))
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "out-file").symlink_to(outside / "secret.txt")
    (root / "out-dir").symlink_to(outside)
    (root / "in-file").symlink_to("counting.txt")
    (root / "in-dir").symlink_to("sub")
    return root


def http_args(directory, *more):
    return ["--http_directory", str(directory), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK, *more]


@pytest.fixture
def served(gateway, www):
    return gateway(http_args(www), http=True)


def test_directory_listing_and_content_types_over_curl(served):
    status, headers, body = curl(served.http_url + "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b">counting.txt<" in body and b">sub/<" in body
    expected = {
        "page.html": "text/html", "app.js": "text/javascript", "style.css": "text/css",
        "data.json": "application/json", "logo.png": "image/png", "icon.svg": "image/svg+xml",
        "mod.wasm": "application/wasm",
    }
    for name, content_type in expected.items():
        status, headers, body = curl(f"{served.http_url}/{name}")
        assert (status, headers["content-type"], body) == (200, content_type, b"content of " + name.encode())


def test_head_and_range_requests_over_curl(served):
    url = served.http_url + "/counting.txt"
    status, headers, body = curl(url, "-I")
    assert (status, headers["content-length"], headers["accept-ranges"], body) == (200, "300", "bytes", b"")
    status, headers, body = curl(url, "-r", "30-38")
    assert (status, headers["content-range"], body) == (206, "bytes 30-38/300", b"010011012")
    status, headers, body = curl(url, "-H", "Range: bytes=-3")
    assert (status, body) == (206, b"099")
    status, headers, _ = curl(url, "-r", "300-400")
    assert (status, headers["content-range"]) == (416, "bytes */300")


def test_write_methods_are_refused_with_405(served):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/counting.txt", "/", "/sub/", "/ansys/nexus/"):
            status, headers, _ = curl(served.http_url + path, "-X", method, "--data-binary", "x")
            assert (method, path, status, headers.get("allow")) == (method, path, 405, "GET, HEAD")


def test_ansys_nexus_serves_the_bundled_landing_page(served):
    status, headers, body = curl(served.http_url + "/ansys/nexus/")
    assert (status, headers["content-type"]) == (200, "text/html")
    assert body == (PACKAGE / "ansys" / "nexus" / "index.html").read_bytes()
    status, headers, _ = curl(served.http_url + "/ansys/nexus")
    assert status in (301, 302) and headers["location"].endswith("/ansys/nexus/")


def test_v1_unknown_calls_are_json_404_and_status_without_services_is_empty(served):
    for path in ("/v1/", "/v1/nope", "/v1/release/a/b", "/v1/status/x", "/v1/reserve/ensight?x=1"):
        status, headers, body = curl(served.http_url + path)
        assert (path, status, headers["content-type"]) == (path, 404, "application/json; charset=utf-8")
        assert json.loads(body)["error"]
    status, headers, body = curl(served.http_url + "/v1/status")
    assert (status, headers["content-type"], json.loads(body)) == (200, "application/json; charset=utf-8", [])


@pytest.mark.parametrize("via", ["option", "environment"])
def test_v1_with_a_token_needs_it_as_query_or_bearer(gateway, www, via):
    if via == "option":
        gw = gateway(http_args(www, "--security_token", SECRET), http=True)
    else:
        gw = gateway(http_args(www), env={"WEBSOCKETSERVER_SECURITY_TOKEN": SECRET}, http=True)
    url = gw.http_url + "/v1/status"
    for options in ([], ["-H", "Authorization: Bearer nope"]):
        status, headers, body = curl(url, *options)
        assert (status, headers["www-authenticate"][:6]) == (401, "Bearer")
        assert "error" in json.loads(body)
    assert curl(url + "?security_token=nope")[0] == 401
    status, _, body = curl(url + f"?security_token={SECRET}")
    assert (status, json.loads(body)) == (200, [])
    assert curl(url, "-H", f"Authorization: Bearer {SECRET}")[0] == 200


def test_v1_stop_with_the_token_answers_200_then_the_gateway_exits_cleanly(gateway, www):
    """What the Nexus client does: GET /v1/stop?security_token=KEY; a wrong token stops nothing."""
    gw = gateway(http_args(www, "--security_token", SECRET), http=True)
    assert curl(f"{gw.http_url}/v1/stop?security_token=nope")[0] == 401
    assert curl(f"{gw.http_url}/v1/status?security_token={SECRET}")[0] == 200  # still serving
    status, headers, body = curl(f"{gw.http_url}/v1/stop?security_token={SECRET}")
    assert (status, headers["content-type"], json.loads(body)) == (
        200, "application/json; charset=utf-8", {"stopping": True})
    assert gw.proc.wait(20) == 0
    assert SECRET not in gw.log


def test_access_log_redacts_security_token_and_token_values(gateway, www):
    gw = gateway(http_args(www, "--security_token", SECRET), http=True)
    curl(f"{gw.http_url}/v1/status?security_token={SECRET}")
    curl(f"{gw.http_url}/v1/status?security_token={SECRET}", "-I")
    curl(f"{gw.http_url}/counting.txt?token={OTHER}&x=1", "-e", f"http://app/?token={OTHER}")
    curl(f"{gw.http_url}/missing?token={OTHER}", "-I")
    curl(f"{gw.http_url}/out-file?security_token={SECRET}")
    gw.wait_for(r'"GET /out-file\?security_token=\*\*\* HTTP/1.1" 404')
    log = gw.log
    assert '"GET /v1/status?security_token=*** HTTP/1.1" 200' in log
    assert '"HEAD /v1/status?security_token=*** HTTP/1.1" 200' in log
    assert '"GET /counting.txt?token=***&x=1 HTTP/1.1" 200 300 "http://app/?token=***"' in log
    assert '"HEAD /missing?token=*** HTTP/1.1" 404' in log
    assert SECRET not in log and OTHER not in log


TRAVERSALS = [
    "/../outside/secret.txt",
    "/sub/../../outside/secret.txt",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E%2Foutside%2Fsecret.txt",
    "/%252e%252e/outside/secret.txt",
    "/%252e%252e%252foutside%252fsecret.txt",
    "/..%2foutside%2fsecret.txt",
    "/..\\outside\\secret.txt",
    "/%5c..%5coutside%5csecret.txt",
    "/%c0%ae%c0%ae/outside/secret.txt",
    "/..;/outside/secret.txt",
    "/out-file",
    "/out-dir/secret.txt",
    "/out-dir/",
]


def test_traversal_is_refused_over_curl_path_as_is(served, www):
    absolute = f"/{www.parent / 'outside' / 'secret.txt'}"
    for prefix in ("", "/ansys"):
        for path in [*TRAVERSALS, absolute, "//etc/passwd"]:
            status, _, body = curl(served.http_url + prefix + path, "--path-as-is")
            assert (prefix + path, status) == (prefix + path, 404)
            assert OUTSIDE_TEXT not in body and b"root:" not in body
    for path in ("/ansys/../web.py", "/ansys/%2e%2e/web.py", "/ansys/..%2fweb.py", f"/ansys/{PACKAGE}/web.py"):
        status, _, body = curl(served.http_url + path, "--path-as-is")
        assert (path, status) == (path, 404) and b"import" not in body


def test_traversal_is_refused_for_raw_request_lines(served, www):
    outside = str(www.parent / "outside" / "secret.txt").encode()
    targets = [
        b"../outside/secret.txt",
        b"/../outside/secret.txt",
        b"//" + outside.lstrip(b"/"),
        b"http://127.0.0.1/../outside/secret.txt",
        b"http://127.0.0.1" + outside,
        b"/%2e%2e%2f%2e%2e%2f" + outside.replace(b"/", b"%2f"),
        b"\\..\\outside\\secret.txt",
        b"/\xc0\xae\xc0\xae/outside/secret.txt",
        b"/..%00/outside/secret.txt",
    ]
    for target in targets:
        for version in (b" HTTP/1.1", b" HTTP/1.0"):
            response = raw_http(
                served.http_port, b"GET " + target + version + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            status = int(response.split(b" ", 2)[1])
            assert (target, status) in ((target, 400), (target, 404)), response[:200]
            assert OUTSIDE_TEXT not in response
    # The asterisk form is only for OPTIONS; twisted.web answers it without the tree.
    assert raw_http(served.http_port, b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 405 "
    )


def test_symlinks_inside_work_and_listing_hides_links_out(served):
    assert curl(served.http_url + "/in-file")[2].startswith(b"000001")
    assert curl(served.http_url + "/in-dir/inner.txt")[2] == b"inner\n"
    body = curl(served.http_url + "/")[2]
    assert b">in-file<" in body and b"out-file" not in body and b"out-dir" not in body


def listening_sockets(pid):
    """How many TCP sockets the process holds in LISTEN state (Linux /proc)."""
    require(os.path.exists(f"/proc/{pid}/fd"), "Linux /proc")
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                count += fields[3] == "0A" and fields[9] in inodes
    return count


@pytest.mark.parametrize(
    "extra", [[], ["--http_listen", LOOPBACK], ["--http_port", "0"]], ids=["no-http-flags", "http_listen", "http_port"]
)
def test_without_http_directory_no_http_listener_starts(gateway, extra):
    gw = gateway(["--ws_listen", LOOPBACK, *extra])
    assert listening_sockets(gw.proc.pid) == 1  # the WebSocket listener only
    assert gw.stop() == 0
    assert "--ws_listen listening on" in gw.log
    assert "--http_listen listening" not in gw.log
    if extra:
        assert "without --http_directory: no HTTP server" in gw.log


class Backend(threading.Thread):
    """A one-connection TCP server on 127.0.0.1:0: greets, then records what it receives."""

    def __init__(self, greeting):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.greeting = greeting
        self.received = b""

    def run(self):
        self.server.settimeout(30)
        with self.server, self.server.accept()[0] as conn:
            conn.sendall(self.greeting)
            while data := conn.recv(65536):
                self.received += data


NODE_DRIVER = r"""
// Runs the landing page's own script (its module, as the gateway serves it) against a tiny
// fake DOM and a real gateway.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
const [pageUrl, wsUrl] = process.argv.slice(2);
const elements = {};
const element = (id) => elements[id] || (elements[id] = {
  id, value: "", checked: false, disabled: false, textContent: "", childNodes: [], listeners: {},
  addEventListener(type, fn) { this.listeners[type] = fn; },
  appendChild(child) { this.childNodes.push(child); },
  removeChild(child) { this.childNodes.splice(this.childNodes.indexOf(child), 1); },
  get firstChild() { return this.childNodes[0]; },
});
globalThis.document = { getElementById: element, createElement: () => ({}) };
globalThis.location = new URL(pageUrl);
const fire = (id, type) => element(id).listeners[type]({ preventDefault() {} });
const logText = () => element("log").childNodes.map((n) => n.textContent).join("\n");
const until = async (what, test) => {
  for (let i = 0; i < 200 && !test(); i++) await new Promise((r) => setTimeout(r, 50));
  if (!test()) throw new Error("timed out waiting for " + what + "\n" + logText());
};
(async () => {
  const html = await (await fetch(pageUrl)).text();
  const dir = mkdtempSync(join(tmpdir(), "landing-"));
  writeFileSync(join(dir, "package.json"), '{"type": "module"}');
  for (const name of ["landing.js", "places.js"]) {
    writeFileSync(join(dir, name), await (await fetch(new URL("js/" + name, pageUrl))).text());
  }
  if (!html.includes('src="js/landing.js"')) throw new Error("the page no longer loads js/landing.js");
  await import(join(dir, "landing.js"));
  const guessed = element("url").value;  // before /v1/services answers
  await until("the gateway's own URL", () => element("url").value !== guessed);
  const defaultUrl = element("url").value;
  element("url").value = wsUrl;
  fire("connect-form", "submit");
  await until("open", () => element("state").textContent === "open");
  await until("greeting", () => logText().includes("hex:  00 01 ff 52 46 42"));
  element("text").value = "hello";
  fire("send-form", "submit");
  element("as-binary").checked = true;
  element("text").value = "bin\u00e9";
  fire("send-form", "submit");
  fire("disconnect", "click");
  await until("closed", () => element("state").textContent === "closed");
  console.log(JSON.stringify({ defaultUrl, log: logText() }));
})().catch((e) => { console.error(String(e.stack || e)); process.exit(1); });
"""


def test_landing_page_websocket_client_works_against_the_gateway(gateway, www, tmp_path):
    """The page's script, run in node, defaults to the gateway's WebSocket URL, connects with
    subprotocol binary, shows bytes, sends text."""
    require(have("node"), "node")
    flags = []
    if subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]).returncode:
        flags = ["--experimental-websocket"]  # node 20 and 21
    backend = Backend(b"\x00\x01\xffRFB")
    backend.start()
    gw = gateway(http_args(www, "--client_hostname", "127.0.0.1", "--client_port", str(backend.port)), http=True)
    driver = tmp_path / "driver.mjs"
    driver.write_text(NODE_DRIVER)
    run = subprocess.run(
        ["node", *flags, str(driver), gw.http_url + "/ansys/nexus/", gw.ws_url + "/"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    backend.join(10)
    assert result["defaultUrl"] == f"{gw.ws_url}/websockify", "the gateway's own ws listener, from /v1/services"
    assert "open, subprotocol: binary" in result["log"]
    assert "binary (6 bytes)" in result["log"] and "text: ..\ufffdRFB" in result["log"]
    assert "sent binary (5 bytes): 62 69 6e c3 a9" in result["log"]
    assert "closed: code 1000" in result["log"]
    assert backend.received == b"hello" + "bin\u00e9".encode()
