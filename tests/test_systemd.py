"""The systemd units in config/systemd, tested as shipped.

* ``systemd-analyze verify`` on the unmodified files, in a throw-away root
  (``--root``) that holds this machine's own system units and, where the
  service's ExecStart= expects it, the real ``twistd`` script: any output fails.
* ``systemd-analyze security``: the service's exposure score stays low.
* The listeners are UNIX sockets only root and nginx's group may open
  (SocketMode=0660, SocketGroup=www-data), and the user header is believed
  from them alone (--trusted_proxy unix): no local user reaches the gateway
  around nginx, nor poses as another user (tests/test_local_users.py tries).
* Socket activation for real (L{support.shipped_units}): ``systemd-socket-activate``
  listens as the two socket units would (their FileDescriptorName=s, their
  paths under a temporary root, their owner, group and mode) and, on the first
  connection, execs the service's ExecStart= command line, read from the file
  with only the install prefix and the site directories moved into a temporary
  tree. A WebSocket through the adopted ws socket reaches a backend (basic
  mode) and a session, HTTP through the adopted http socket answers, the
  gateway holds no listening socket but the two it was given, and SIGTERM
  closes the tunnels with 1001, ends the session's process and exits 0. The
  security token is a credential (LoadCredential=, read through
  --security_token_file): it is in no environment, the gateway's or a session's.
"""

import asyncio
import grp
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from websockets.asyncio.client import unix_connect

from conftest import BIN, ROOT, require
from nexusws.sessions import procs
from support.nginx_front import short_tempdir, unix_get
from support.shipped_units import (
    ACTIVATE,
    SERVICE,
    UNITS,
    activate,
    exec_start_words,
    expand,
    one,
    read_unit,
    stage,
)

SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # this machine's own units (Debian: usrmerge)
ANALYZE = shutil.which("systemd-analyze")
WITH_SYSTEMD = "systemd-analyze and systemd-socket-activate (Debian: apt-get install systemd)"

TOKEN_ENV = "WEBSOCKETSERVER_SECURITY_TOKEN"
TOKEN = "systemd-test-token"
#: A MAXIMUM for systemd-analyze security's exposure level (0 best, 10 worst).
MAX_EXPOSURE = 2.0
#: The group Debian's nginx workers run as: the only one, besides root, that may
#: open the gateway's sockets.
NGINX_GROUP = "www-data"


def shipped_units():
    found = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".socket"))
    assert (UNITS / SERVICE).is_file(), f"no {SERVICE} in {UNITS}"
    return found


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


def test_the_keep_sessions_drop_in_verifies_and_keeps_only_what_it_must(tmp_path):
    """config/systemd/nexusws.service.d/keep-sessions.conf: --keep_sessions, KillMode=process and a
    static user; systemd-analyze verify takes the service with it; without it the unit is as before."""
    drop_in = UNITS / "nexusws.service.d" / "keep-sessions.conf"
    unit = read_unit(drop_in)
    assert one(unit, "Service", "KillMode") == "process" and one(unit, "Service", "DynamicUser") == "no"
    assert one(unit, "Service", "User") == "nexusws" and one(unit, "Service", "RemoveIPC") == "no"
    (setting,) = unit[("Service", "Environment")]
    name, _, value = setting.partition("=")
    words = exec_start_words()
    assert expand(words, {name: value}).count("--keep_sessions") == 1
    assert "--keep_sessions" not in expand(words, {}), "without the drop-in: no word at all"
    assert one(read_unit(UNITS / SERVICE), "Service", "KillMode") == "mixed"
    require(ANALYZE is not None and SYSTEM_UNITS.is_dir(), WITH_SYSTEMD)
    root, copies = analyze_root(tmp_path)
    target = root / "etc" / "systemd" / "system" / "nexusws.service.d"
    target.mkdir()
    shutil.copyfile(drop_in, target / drop_in.name)
    code, out = run_analyze("verify", "--generators=no", f"--root={root}", *copies)
    assert out == "" and code == 0, f"systemd-analyze verify ({code}):\n{out}"


def test_service_exposure_is_low(tmp_path):
    require(ANALYZE is not None and SYSTEM_UNITS.is_dir(), WITH_SYSTEMD)
    root, copies = analyze_root(tmp_path)
    service = next(c for c in copies if c.endswith(SERVICE))
    code, out = run_analyze("security", "--offline=yes", f"--root={root}", service)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert code == 0 and m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out


# Who may connect ---------------------------------------------------------------


def test_the_listeners_are_unix_sockets_only_root_and_nginx_s_group_may_open():
    """Each socket unit: a path under /run/nexusws, owner root, group www-data, mode 0660
    (nobody else may connect: other local users get EACCES); the service picks them as
    UNIX sockets and believes the user header from UNIX-socket peers only."""
    service = read_unit(UNITS / SERVICE)
    names = one(service, "Service", "Sockets").split()
    assert sorted(names) == sorted(p.name for p in shipped_units() if p.suffix == ".socket")
    fdnames = []
    for name in names:
        unit = read_unit(UNITS / name)
        listen = one(unit, "Socket", "ListenStream")
        assert re.fullmatch(r"/run/nexusws/\w+\.sock", listen), \
            f"{name} listens on {listen}: every local user can connect to a TCP port"
        assert one(unit, "Socket", "SocketUser", "root") == "root"
        assert one(unit, "Socket", "SocketGroup", "root") == NGINX_GROUP
        mode = int(one(unit, "Socket", "SocketMode", "0666"), 8)
        assert mode & 0o007 == 0 and mode & 0o060 == 0o060, f"{name}: SocketMode={mode:04o}"
        fdnames.append(one(unit, "Socket", "FileDescriptorName"))
    words = exec_start_words()
    for label, fdname in zip(("--ws_listen", "--http_listen"), fdnames, strict=True):
        assert words[words.index(label) + 1] == f"systemd:domain=UNIX:name={fdname}", label
    trusted = [words[i + 1] for i, w in enumerate(words) if w == "--trusted_proxy"]
    assert trusted == ["unix"], f"--trusted_proxy {trusted}: the gateway would believe others"


# Socket activation -----------------------------------------------------------


def unix_listeners():
    """{inode: path} of every listening UNIX stream socket in this network namespace."""
    found = {}
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000 and len(fields) > 7:  # __SO_ACCEPTCON: listening
                found[int(fields[6])] = fields[7]
    return found


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


def test_socket_activation_with_the_units_command_line(gateway, echo_port, tmp_path):
    require(ACTIVATE is not None, WITH_SYSTEMD)
    service = read_unit(UNITS / SERVICE)
    # The site: /etc/nexusws (a service, the environment file), /srv/nexusws (pages).
    etc = tmp_path / "etc" / "nexusws"
    etc.mkdir(parents=True)
    for script in ("demo_session.py", "backend.py"):
        shutil.copy(ROOT / "config" / "demo" / script, etc)
    (etc / "sessions.json").write_text(json.dumps(
        {"Demo Session": {"script": "demo_session.py", "count": 1, "options": {}}}))
    options = (f"--client_hostname 127.0.0.1 --client_port {echo_port} "
               f"--remote_session_config {etc / 'sessions.json'}")
    with short_tempdir() as socket_root:
        run_activation(gateway, stage(tmp_path, socket_root, options, token=TOKEN), service)


def run_activation(gateway, staged, service):
    token = TOKEN
    (staged.www / "index.html").write_text("<p>served through the adopted http socket</p>\n")
    argv, names = staged.argv, [entry.fdname for entry in staged.listeners]
    assert names == ["ws", "http"], names
    endpoints = {"ws": argv[argv.index("--ws_listen") + 1], "http": argv[argv.index("--http_listen") + 1]}
    assert endpoints == {name: f"systemd:domain=UNIX:name={name}" for name in names}, endpoints

    gw = activate(gateway, staged)
    path = {entry.fdname: entry.path for entry in staged.listeners}
    for entry in staged.listeners:  # as the unit says: root, nginx's group, 0660
        info = entry.path.stat()
        assert stat.S_IMODE(info.st_mode) == entry.mode == 0o660
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (0, grp.getgrnam(NGINX_GROUP).gr_gid)
    pid = gw.proc.pid
    # Before any connection systemd-socket-activate holds the sockets (fd 3, 4, as
    # systemd would pass them); on the first one it execs the gateway, same pid.
    given = {socket_inode(pid, 3 + i): str(entry.path) for i, entry in enumerate(staged.listeners)}
    assert {ino: unix_listeners().get(ino) for ino in given} == given

    async def scenario():
        async with unix_connect(str(path["ws"]), "ws://localhost/websockify", subprotocols=["binary"],
                                open_timeout=15) as basic:
            await basic.send(b"through the adopted ws socket")
            assert await asyncio.wait_for(basic.recv(), 10) == b"through the adopted ws socket"

            for name in names:
                gw.wait_for(rf"--{name}_listen listening on .*{re.escape(str(path[name]))}.* "
                            + re.escape(f"({endpoints[name]})"))
            assert "nexusws" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")

            status, page = await asyncio.to_thread(unix_get, path["http"], "/")
            assert status == 200 and b"adopted http socket" in page

            bearer = {"Authorization": f"Bearer {token}"}
            status, body = await asyncio.to_thread(unix_get, path["http"], "/v1/reserve/Demo%20Session", bearer)
            assert status == 200, body
            reserved = json.loads(body)["token"]
            async with unix_connect(str(path["ws"]), f"ws://localhost/?token={reserved}",
                                    subprotocols=["binary"], open_timeout=15) as session:
                assert (await asyncio.wait_for(session.recv(), 10)).startswith(b"hello from the nexusws demo")
                children = {(p, procs.start_time(p)) for p in procs.descendants(pid)}
                assert children, "the session runs no process"

                # The token is in no environment: the gateway's, or a session process's.
                for process in [pid, *(p for p, _ in children)]:
                    assert token.encode() not in Path(f"/proc/{process}/environ").read_bytes(), process

                # The gateway listens on the two sockets it was given and on nothing else.
                listening = set(tcp_listeners()) | set(unix_listeners())
                assert held_sockets(pid) & listening == set(given)

                # The state file is where StateDirectory= puts it, private.
                state_file = staged.state_dir / "nexusws-state.json"
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
    # Trusting UNIX-socket peers, on sockets only nginx's group may open: no warning about it.
    assert "every local user" not in gw.log, gw.log
