"""The systemd units in config/systemd, tested as shipped.

* ``systemd-analyze verify`` on the unmodified files, in a throw-away root
  (``--root``) that holds this machine's own system units and, where the
  service's ExecStart= expects it, the real ``twistd`` script: any output fails.
* ``systemd-analyze security``: the service's exposure score stays low.
* Socket activation for real: ``systemd-socket-activate`` listens as the two
  socket units would (their FileDescriptorName=s, free loopback ports) and,
  on the first connection, execs the service's ExecStart= command line, read
  from the file with only the install prefix and the site directories moved
  into a temporary tree. A WebSocket through the adopted ws socket reaches a
  backend (basic mode) and a session, HTTP through the adopted http socket
  answers, the gateway holds no listening socket but the two it was given,
  and SIGTERM closes the tunnels with 1001, ends the session's process and
  exits 0. The security token is a credential (LoadCredential=, read through
  --security_token_file): it is in no environment, the gateway's or a session's.
"""

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

from conftest import BIN, ROOT, require
from nexusws import procs

UNITS = ROOT / "config" / "systemd"
SERVICE = "nexusws.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # this machine's own units (Debian: usrmerge)
ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")
WITH_SYSTEMD = "systemd-analyze and systemd-socket-activate (Debian: apt-get install systemd)"

#: Where the service's ExecStart= expects things (see L{moved}): the install
#: prefix is this virtualenv; the site's directories are made under the test's
#: temporary directory.
PREFIX = "/opt/nexusws/"
SITE_DIRS = ("/etc/nexusws/", "/srv/nexusws/")
TOKEN_ENV = "WEBSOCKETSERVER_SECURITY_TOKEN"
#: A MAXIMUM for systemd-analyze security's exposure level (0 best, 10 worst).
MAX_EXPOSURE = 2.0


def read_unit(path):
    """{(section, key): [values]} as systemd reads a unit file (systemd.syntax(5)):
    comment lines are skipped, even inside a line continued with a backslash."""
    entries, section, pending = {}, None, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")) or (not line and pending is None):
            continue
        if pending is not None:
            line = f"{pending} {line}"
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = None
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def one(unit, section, key):
    values = unit.get((section, key), [])
    assert len(values) == 1, f"expected one {key}= in [{section}], got {values}"
    return values[0]


def shipped_units():
    found = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".socket"))
    assert (UNITS / SERVICE).is_file(), f"no {SERVICE} in {UNITS}"
    return found


def exec_start_words():
    """ExecStart= of the service, split into words (no systemd specifiers or prefixes used)."""
    line = one(read_unit(UNITS / SERVICE), "Service", "ExecStart")
    assert "%" not in line, f"ExecStart= uses a specifier this test does not resolve: {line}"
    words = shlex.split(line)
    assert words[0].startswith(PREFIX), f"ExecStart= does not run from {PREFIX}: {words[0]}"
    return words


def run_analyze(*args):
    done = subprocess.run([ANALYZE, *args], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat"})
    return done.returncode, (done.stdout + done.stderr).strip()


def analyze_root(tmp_path):
    """A root for systemd-analyze --root: this machine's system units, the shipped
    units copied unmodified into /etc/systemd/system, and ExecStart='s program
    where it expects it (the real twistd script of this virtualenv)."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    copies = []
    for unit in shipped_units():
        shutil.copyfile(unit, etc / unit.name)
        assert (etc / unit.name).read_bytes() == unit.read_bytes()
        copies.append(str(etc / unit.name))
    program = exec_start_words()[0]
    installed = root / program.lstrip("/")
    installed.parent.mkdir(parents=True)
    shutil.copy2(BIN / Path(program).name, installed)
    return root, copies


def test_the_security_token_is_a_credential_never_an_environment_variable():
    """LoadCredential= reads it (as root) and --security_token_file ${CREDENTIALS_DIRECTORY}/...
    gives it to the gateway; no Environment= or ExecStart= word carries a token."""
    service = read_unit(UNITS / SERVICE)
    name, _, source = one(service, "Service", "LoadCredential").partition(":")
    assert source.startswith("/etc/nexusws/"), source
    words = exec_start_words()
    assert words[words.index("--security_token_file") + 1] == f"${{CREDENTIALS_DIRECTORY}}/{name}"
    assert "--security_token" not in words
    assert not [v for v in service.get(("Service", "Environment"), []) if TOKEN_ENV in v]
    text = (UNITS / SERVICE).read_text()
    assert f"{TOKEN_ENV}=" not in text


def test_shipped_units_pass_systemd_analyze_verify(tmp_path):
    require(ANALYZE is not None and SYSTEM_UNITS.is_dir(), WITH_SYSTEMD)
    root, copies = analyze_root(tmp_path)
    verify = ["verify", "--generators=no", f"--root={root}"]

    # The invocation is not vacuous: it reports a broken unit in the same place.
    canary = root / "etc" / "systemd" / "system" / "canary.service"
    canary.write_text("[Service]\nExecStart=/opt/nexusws/bin/no-such-program\nNoSuchKey=1\n")
    code, out = run_analyze(*verify, str(canary))
    assert "NoSuchKey" in out and "no-such-program" in out, out
    canary.unlink()

    code, out = run_analyze(*verify, *copies)
    assert out == "" and code == 0, f"systemd-analyze verify ({code}):\n{out}"


def test_service_exposure_is_low(tmp_path):
    require(ANALYZE is not None and SYSTEM_UNITS.is_dir(), WITH_SYSTEMD)
    root, copies = analyze_root(tmp_path)
    service = next(c for c in copies if c.endswith(SERVICE))
    code, out = run_analyze("security", "--offline=yes", f"--root={root}", service)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert code == 0 and m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out


# Socket activation -----------------------------------------------------------


def free_ports(count):
    """Ports nothing listens on right now on 127.0.0.1 (the caller retries on a race)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def read_env_file(path):
    """KEY=VALUE lines, as systemd's EnvironmentFile= (unquoted values only)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def expand(words, env):
    """systemd's expansion in ExecStart=: a word C{$NAME} becomes the value's
    words (none if unset), split as a command line; C{${NAME}} is replaced in place."""
    out = []
    for word in words:
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            out += shlex.split(env.get(m.group(1), ""))
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def moved(word, tmp):
    """Paths of the unit, as they are in this test: the prefix is this
    virtualenv, the site directories are under C{tmp}."""
    if word.startswith(PREFIX):
        return str(BIN.parent) + "/" + word[len(PREFIX):]
    for site in SITE_DIRS:
        if word.startswith(site):
            return str(tmp) + site.rstrip("/") + "/" + word[len(site):]
    assert not word.startswith("/"), f"a path this test does not know how to stage: {word}"
    return word


def socket_inode(pid, fd):
    target = os.readlink(f"/proc/{pid}/fd/{fd}")
    m = re.fullmatch(r"socket:\[(\d+)\]", target)
    assert m, f"fd {fd} of {pid} is {target}, not a socket"
    return int(m.group(1))


def tcp_listeners():
    """{inode: port} of every listening TCP socket in this network namespace."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def held_sockets(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def http_get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.read()


def test_socket_activation_with_the_units_command_line(gateway, echo_port, tmp_path):
    require(ACTIVATE is not None, WITH_SYSTEMD)
    service = read_unit(UNITS / SERVICE)

    # The sockets, as the socket units describe them, in the service's Sockets= order.
    sockets = []
    for name in one(service, "Service", "Sockets").split():
        unit = read_unit(UNITS / name)
        host, _, _ = one(unit, "Socket", "ListenStream").rpartition(":")
        assert host == "127.0.0.1", f"{name} does not listen on loopback only"
        sockets.append((name, one(unit, "Socket", "FileDescriptorName")))
    names = [fdname for _, fdname in sockets]
    assert names == ["ws", "http"], names

    # The site: /etc/nexusws (the environment file, a service), /srv/nexusws (pages).
    etc = tmp_path / "etc" / "nexusws"
    etc.mkdir(parents=True)
    for script in ("demo_session.py", "backend.py"):
        shutil.copy(ROOT / "config" / "demo" / script, etc)
    (etc / "sessions.json").write_text(json.dumps(
        {"Demo Session": {"script": "demo_session.py", "count": 1, "options": {}}}))
    token = "systemd-test-token"
    env_file = Path(moved(one(service, "Service", "EnvironmentFile").lstrip("-"), tmp_path))
    assert env_file.parent == etc, env_file
    env_file.write_text(
        f"NEXUSWS_OPTIONS=--client_hostname 127.0.0.1 --client_port {echo_port} "
        f"--remote_session_config {etc / 'sessions.json'}\n")
    env_file.chmod(0o600)
    # LoadCredential=ID:PATH: systemd copies PATH to $CREDENTIALS_DIRECTORY/ID.
    credential, _, source = one(service, "Service", "LoadCredential").partition(":")
    Path(moved(source, tmp_path)).write_text(token + "\n")
    credentials = tmp_path / "run" / "credentials" / SERVICE
    credentials.mkdir(parents=True)
    shutil.copyfile(moved(source, tmp_path), credentials / credential)
    (credentials / credential).chmod(0o400)

    # The environment systemd gives the service: Environment=, the file,
    # $STATE_DIRECTORY (StateDirectory=, mode StateDirectoryMode=).
    env = {}
    for assignments in service.get(("Service", "Environment"), []):
        env.update(word.partition("=")[::2] for word in shlex.split(assignments))
    env.update(read_env_file(env_file))
    state_dir = tmp_path / "var" / "lib" / one(service, "Service", "StateDirectory")
    state_dir.mkdir(parents=True, mode=int(one(service, "Service", "StateDirectoryMode"), 8))
    env["STATE_DIRECTORY"] = str(state_dir)
    env["CREDENTIALS_DIRECTORY"] = str(credentials)

    argv = expand([moved(word, tmp_path) for word in exec_start_words()], env)
    www = Path(argv[argv.index("--http_directory") + 1])
    www.mkdir(parents=True)
    (www / "index.html").write_text("<p>served through the adopted http socket</p>\n")
    endpoints = {"ws": argv[argv.index("--ws_listen") + 1], "http": argv[argv.index("--http_listen") + 1]}
    assert endpoints == {name: f"systemd:domain=INET:name={name}" for name in names}, endpoints

    for attempt in range(5):
        ports = free_ports(len(sockets))
        activate = [ACTIVATE, *(f"--listen=127.0.0.1:{port}" for port in ports),
                    "--fdname=" + ":".join(names), *(f"--setenv={k}={v}" for k, v in env.items())]
        gw = gateway(argv, via=activate, wait=False, cwd="/")
        try:
            gw.wait_for(rf"Listening on 127\.0\.0\.1:{ports[-1]} as {2 + len(ports)}\.", timeout=10)
            break
        except AssertionError:
            gw.kill()
            if "Address already in use" not in gw.log or attempt == 4:
                raise
    port = dict(zip(names, ports, strict=True))
    pid = gw.proc.pid
    # Before any connection systemd-socket-activate holds the sockets (fd 3, 4, as
    # systemd would pass them); on the first one it execs the gateway, same pid.
    given = {socket_inode(pid, 3 + i): p for i, p in enumerate(ports)}
    assert {ino: tcp_listeners().get(ino) for ino in given} == given

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port['ws']}/websockify", subprotocols=["binary"],
                           open_timeout=15) as basic:
            await basic.send(b"through the adopted ws socket")
            assert await asyncio.wait_for(basic.recv(), 10) == b"through the adopted ws socket"

            for name in names:
                gw.wait_for(rf"--{name}_listen listening on {name}://127\.0\.0\.1:{port[name]}/ "
                            + re.escape(f"({endpoints[name]})"))
            assert "nexusws" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")

            status, page = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port['http']}/")
            assert status == 200 and b"adopted http socket" in page

            bearer = {"Authorization": f"Bearer {token}"}
            status, body = await asyncio.to_thread(
                http_get, f"http://127.0.0.1:{port['http']}/v1/reserve/Demo%20Session", bearer)
            reserved = json.loads(body)["token"]
            async with connect(f"ws://127.0.0.1:{port['ws']}/?token={reserved}",
                               subprotocols=["binary"], open_timeout=15) as session:
                assert (await asyncio.wait_for(session.recv(), 10)).startswith(b"hello from the nexusws demo")
                children = {(p, procs.start_time(p)) for p in procs.descendants(pid)}
                assert children, "the session runs no process"

                # The token is in no environment: the gateway's, or a session process's.
                for process in [pid, *(p for p, _ in children)]:
                    assert token.encode() not in Path(f"/proc/{process}/environ").read_bytes(), process

                # The gateway listens on the two sockets it was given and on nothing else.
                assert held_sockets(pid) & set(tcp_listeners()) == set(given)

                # The state file is where StateDirectory= puts it, private.
                state_file = state_dir / "nexusws-state.json"
                assert reserved in state_file.read_text()
                assert stat.S_IMODE(state_file.stat().st_mode) == 0o600

                # systemd stops the service (KillMode=mixed: the gateway alone gets SIGTERM).
                assert one(service, "Service", "KillMode") == "mixed"
                stopping.append(time.monotonic())
                os.kill(pid, signal.SIGTERM)
                for ws in (basic, session):
                    await asyncio.wait_for(ws.wait_closed(), 15)
                    assert ws.close_code == 1001, (ws.close_code, gw.log)
        return children

    stopping = []
    children = asyncio.run(asyncio.wait_for(scenario(), 45))
    try:
        gw.proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway did not exit within 15 s of SIGTERM:\n{gw.log}") from None
    took = time.monotonic() - stopping[0]
    assert gw.stop() == 0, gw.log
    timeout_stop = re.fullmatch(r"(\d+)s?", one(service, "Service", "TimeoutStopSec"))
    assert timeout_stop and took < int(timeout_stop.group(1)), (took, timeout_stop)
    left = [p for p, started in children if procs.same_process(p, started)]
    assert not left, f"session processes outlived the gateway: {left}\n{gw.log}"
    assert "SIGTERM received: stopping" in gw.log
    assert "Traceback" not in gw.log, gw.log
