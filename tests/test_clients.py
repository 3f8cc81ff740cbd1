"""Independent clients against real gateways: Node's ws speaking RFB to a real
VNC desktop (VNC authentication with noVNC's own DES), and curl running the
README's REST API session verbatim."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest

from conftest import NODE_DIR, ROOT, have, require

LOOPBACK = ["--ws_listen", "tcp:0:interface=127.0.0.1"]


# --- Node's ws completes VNC authentication through the tunnel ------------------

#: An RFB 3.8 client: version, security type 2 (VNC authentication, the challenge
#: encrypted by noVNC's DES), SecurityResult, ClientInit, ServerInit; prints JSON.
#: WebSocket messages do not follow RFB messages, so bytes are buffered and read
#: in exact counts. {des_url} is the absolute file URL of noVNC's core/crypto/des.js.
RFB_CLIENT = r"""
import WebSocket from 'ws';
import { DESECBCipher } from {des_url};

const [url, password] = process.argv.slice(2);
const out = (result, code) => { console.log(JSON.stringify(result)); process.exit(code); };
setTimeout(() => out({error: 'timed out', log}, 3), 30000).unref();
const log = [];

const ws = new WebSocket(url, ['binary']);
let buffered = Buffer.alloc(0);
let pending = null;
let ended = null;

function pump() {
  if (pending === null) return;
  if (buffered.length >= pending.n) {
    const {n, resolve} = pending;
    pending = null;
    const bytes = buffered.subarray(0, n);
    buffered = buffered.subarray(n);
    resolve(bytes);
  } else if (ended !== null) {
    const {n, reject} = pending;
    pending = null;
    reject(new Error(`connection ended (${ended}) with ${buffered.length} of ${n} bytes`));
  }
}

function read(n) {
  return new Promise((resolve, reject) => { pending = {n, resolve, reject}; pump(); });
}

ws.on('message', (data) => { log.push(data.length); buffered = Buffer.concat([buffered, data]); pump(); });
ws.on('close', (code) => { ended = code; pump(); });
ws.on('error', (e) => out({error: String(e)}, 1));

ws.on('open', async () => {
  try {
    const result = {protocol: ws.protocol};
    result.version = (await read(12)).toString('latin1');
    ws.send(Buffer.from('RFB 003.008\n', 'latin1'));
    const count = (await read(1))[0];
    if (count === 0) {
      const length = (await read(4)).readUInt32BE(0);
      out({...result, types: [], reason: (await read(length)).toString()}, 0);
    }
    result.types = Array.from(await read(count));
    if (!result.types.includes(2)) out(result, 0);
    ws.send(Buffer.from([2]));
    const challenge = await read(16);
    // VNC's key: the password's first 8 bytes, zero-padded; noVNC's DES takes
    // each key byte's bits in VNC's reversed order itself.
    const key = new Uint8Array(8);
    key.set(Buffer.from(password, 'latin1').subarray(0, 8));
    const cipher = DESECBCipher.importKey(key, {name: 'DES-ECB'}, false, ['encrypt']);
    ws.send(Buffer.from(cipher.encrypt({name: 'DES-ECB'}, challenge)));
    result.security_result = (await read(4)).readUInt32BE(0);
    if (result.security_result !== 0) {
      const length = (await read(4)).readUInt32BE(0);
      result.reason = (await read(length)).toString();
      out(result, 0);
    }
    ws.send(Buffer.from([1]));  // ClientInit: shared
    const init = await read(24);
    result.width = init.readUInt16BE(0);
    result.height = init.readUInt16BE(2);
    result.bits_per_pixel = init[4];
    result.name = (await read(init.readUInt32BE(20))).toString();
    result.messages = log.length;
    ws.close(1000);
    ws.on('close', (code) => out({...result, close: code}, 0));
  } catch (e) {
    out({error: String(e), log}, 1);
  }
});
"""


@pytest.fixture(scope="module")
def rfb_client(node_modules):
    """The Node RFB client script, in NODE_DIR so that `import 'ws'` resolves there."""
    novnc = node_modules / "@novnc" / "novnc"
    assert json.loads((novnc / "package.json").read_text())["type"] == "module"  # hence .mjs
    des = novnc / "core" / "crypto" / "des.js"
    assert des.is_file(), "noVNC 1.7 keeps its DES in core/crypto/des.js"
    script = NODE_DIR / "rfb_client.mjs"
    script.write_text(RFB_CLIENT.replace("{des_url}", json.dumps(des.as_uri())))
    return script


def rfb_handshake(script, url, password):
    done = subprocess.run(["node", str(script), url, password], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from the Node client (exit {done.returncode}):\n{done.stderr}"
    result = json.loads(lines[-1])
    assert done.returncode == 0 and "error" not in result, f"{result}\n{done.stderr}"
    return result


def test_node_ws_completes_vnc_authentication_through_the_tunnel(gateway, desktop, rfb_client):
    """Node's ws reads the RFB greeting, authenticates with the right password
    (noVNC's DES) and gets the desktop's ServerInit, all through nexusws."""
    d = desktop(password="s3cret", size="800x600")
    gw = gateway([*LOOPBACK, "--client_hostname", "127.0.0.1", "--client_port", str(d.port)])
    result = rfb_handshake(rfb_client, gw.ws_url + "/websockify", "s3cret")
    assert result["protocol"] == "binary"
    assert result["version"] == "RFB 003.008\n"
    assert 2 in result["types"]
    assert result["security_result"] == 0, result
    assert (result["width"], result["height"]) == (800, 600)
    assert result["bits_per_pixel"] in (8, 16, 32) and result["name"]
    assert result["close"] == 1000
    closed = gw.wait_for(r"tunnel closed").string
    assert f"127.0.0.1:{d.port}" in closed


def test_node_ws_with_a_wrong_vnc_password_gets_a_failure_and_a_reason(gateway, desktop, rfb_client):
    """A wrong password gets SecurityResult 1 and the server's reason string through the tunnel."""
    d = desktop(password="s3cret")
    gw = gateway([*LOOPBACK, "--client_hostname", "127.0.0.1", "--client_port", str(d.port)])
    result = rfb_handshake(rfb_client, gw.ws_url, "wrong")
    assert result["version"] == "RFB 003.008\n" and 2 in result["types"]
    assert result["security_result"] == 1, result
    assert result["reason"].strip(), result
    assert "width" not in result


# --- curl runs the README's REST API session ------------------------------------

README = ROOT / "README.rst"
DEMO = [sys.executable, str(ROOT / "config" / "demo" / "run.py")]
README_ADDRESS = "127.0.0.1:9000"
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def rest_api_subsection():
    text = README.read_text(encoding="utf-8")
    start = text.index("\nREST API\n--------\n")
    after = re.compile(r"\n\n[^\n]+\n([-=~^])\1+\n").search(text, start + 10)
    return text[start:after.start() if after else len(text)]


def readme_curl_session():
    """[(command line, [answer lines])] of the REST API subsection's literal blocks:
    each line starting with `curl ` and the lines after it up to a blank line."""
    session = []
    answer = None
    for line in rest_api_subsection().splitlines():
        stripped = line.strip()
        if line.startswith("    ") and stripped.startswith("curl "):
            answer = []
            session.append((stripped, answer))
        elif answer is not None and line.startswith("    ") and stripped:
            answer.append(stripped)
        else:
            answer = None
    return session


def same_shape(expected, actual, where="answer"):
    """Equal, except values whose key is C{timestamp}: any ISO time there."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and expected.keys() == actual.keys(), (where, expected, actual)
        for key in expected:
            if key == "timestamp":
                assert ISO_TIME.fullmatch(actual[key]), (where, actual)
            else:
                same_shape(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), (where, expected, actual)
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            same_shape(e, a, f"{where}[{i}]")
    else:
        assert expected == actual, (where, expected, actual)


def check_answer(expected_lines, stdout, status):
    """The answer as the README shows it: an optional `curl -i` head (status line,
    some headers, `...` for the rest), then JSON; 200 unless a status line says otherwise."""
    expected_lines = list(expected_lines)
    expected_status = 200
    if expected_lines and expected_lines[0].startswith("HTTP/"):
        head, body = stdout.split("\n\n", 1)  # text mode: CRLF read as LF
        head_lines = head.splitlines()
        assert head_lines[0] == expected_lines.pop(0)
        expected_status = int(head_lines[0].split()[1])
        headers = {tuple(h.split(": ", 1)) for h in head_lines[1:]}
        headers = {(name.lower(), value) for name, value in headers}
        while expected_lines and not expected_lines[0].startswith(("{", "[")):
            line = expected_lines.pop(0)
            if line != "...":
                name, value = line.split(": ", 1)
                assert (name.lower(), value) in headers, (line, head)
    else:
        body = stdout
    assert status == expected_status, (status, stdout)
    same_shape(json.loads("\n".join(expected_lines)), json.loads(body))


def test_readme_curl_session_works_verbatim(gateway, tmp_path):
    """The curl commands of the README's REST API subsection, run as written against
    the demo (its services, the security token the README starts it with); only the
    address and the reserved token change. Their answers are what the README shows."""
    require(have("curl"), "curl")
    section = rest_api_subsection()
    (security_token,) = re.findall(r"WEBSOCKETSERVER_SECURITY_TOKEN=(\S+) \S*python config/demo/run\.py",
                                   section)
    session = readme_curl_session()
    commands = [command for command, _ in session]
    assert len(session) >= 4, commands
    assert all(README_ADDRESS in c for c in commands)
    calls = [re.search(r"/v1/(\w+)", c).group(1) for c in commands]
    assert calls[:3] == ["reserve", "status", "release"], calls
    assert all(security_token in c for c in commands[:3])
    placeholder = json.loads("\n".join(session[0][1]))["token"]
    assert uuid.UUID(placeholder).version == 4

    gw = gateway(["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1",
                  "--state_file", str(tmp_path / "state.json")],
                 via=DEMO, env={"WEBSOCKETSERVER_SECURITY_TOKEN": security_token}, http=True)
    address = f"127.0.0.1:{gw.http_port}"
    # curl as installed, but reporting the status on stderr; no ~/.curlrc, no proxy.
    (tmp_path / ".curlrc").write_text('silent\nshow-error\nwrite-out = "%{stderr}%{http_code}"\n')
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["CURL_HOME"] = str(tmp_path)

    token = None
    for command, answer in session:
        if token is not None:
            command = command.replace(placeholder, token)
            answer = [line.replace(placeholder, token) for line in answer]
        argv = shlex.split(command.replace(README_ADDRESS, address))
        assert argv[0] == "curl"
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (command, done.stderr)
        status = int(done.stderr.strip()[-3:])
        if token is None:  # the reservation: its token replaces the README's from now on
            assert status == 200, (command, status, done.stdout)
            token = json.loads(done.stdout)["token"]
            assert uuid.UUID(token).version == 4
            answer = [line.replace(placeholder, token) for line in answer]
        stdout = done.stdout
        if "/v1/status" in command and status == 200:
            # Where Xvfb and x11vnc are installed the demo offers "Desktop" too, as the README says.
            listing = json.loads(stdout)
            assert {s["name"] for s in listing} - {"Demo Session"} <= {"Desktop"}, listing
            stdout = json.dumps([s for s in listing if s["name"] != "Desktop"])
        check_answer(answer, stdout, status)

    # The release was real: the instance is free again.
    request = urllib.request.Request(gw.http_url + "/v1/status",
                                     headers={"Authorization": f"Bearer {security_token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert all(s["instances"] == [] for s in json.loads(response.read()))
    assert gw.stop(signal.SIGTERM) == 0
    assert security_token not in gw.log and token not in gw.log
