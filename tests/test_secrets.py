"""Secrets kept from session programs and from disk.

* The security token comes from one source: --security_token, --security_token_file
  (read once, stripped; a one-line error naming the file otherwise) or the
  environment, which loses the variable once it is read.
* No child of any kind (a built-in ensight, a script's spawn(), a script's own
  subprocess, a shell) finds the token in its environment, and none can read the
  gateway's /proc/PID/environ: the gateway is not dumpable (unless --dumpable).
  The gateway and its readers run as one unprivileged user (nobody, when the
  suite runs as root, which would bypass the check).
* The state file never holds a password: a reservation with one is not restored.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from websockets.sync.client import connect

from conftest import ROOT
from nexusws import credentials
from nexusws.logs import tag
from nexusws.sessions.registry import Registry
from nexusws.sessions.statefile import StateFile
from support.options import parse

ENV = credentials.SECURITY_TOKEN_ENV
TOKEN = "the-security-token-0123456789"
LOOPBACK = ["--ws_listen", "tcp:0:interface=127.0.0.1"]
NOBODY = 65534


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


# --- where the token comes from ------------------------------------------------------------


def test_the_token_file_is_read_once_and_stripped(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n\n")
    options = parse("--security_token_file", str(path), "0")
    path.write_text("changed")
    assert options["security_token"] == TOKEN


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read: No such file or directory"),
    (b" \n\t\n", "empty"),
    (b"one\ntwo\n", "more than one line"),
    (b"\xff\xfe", "not UTF-8 text"),
    (b"x" * 5000, "longer than 4096 bytes"),
])
def test_an_unusable_token_file_is_a_one_line_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(usage.UsageError) as caught:
        parse("--security_token_file", str(path), "0")
    assert str(caught.value) == f"--security_token_file {str(path)!r}: {problem}"


def test_the_token_file_with_another_source_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    with pytest.raises(usage.UsageError, match=r"give the token once, not also with --security_token$"):
        parse("--security_token_file", str(path), "--security_token", "x", "0")
    monkeypatch.setenv(ENV, "from-env")
    with pytest.raises(usage.UsageError, match=rf"give the token once, not also with {ENV}$"):
        parse("--security_token_file", str(path), "0")


def test_the_variable_leaves_the_environment_once_read(monkeypatch):
    """So that nothing started later, by any means, inherits it."""
    monkeypatch.setenv(ENV, TOKEN)
    assert parse("0")["security_token"] == TOKEN
    assert ENV not in os.environ
    assert subprocess.run(["sh", "-c", f"echo ${ENV}"], capture_output=True, text=True).stdout == "\n"


def test_a_child_process_can_make_itself_non_dumpable():
    code = ("from nexusws import credentials as c; a = c.is_dumpable(); "
            "w = c.set_dumpable(False); print(a, w, c.is_dumpable())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "None", "False"]


# --- real gateways: what session programs can see ------------------------------------------

PROBE = textwrap.dedent('''\
    """Records what a session program can learn of the security token, then maybe execs the rest."""
    import json, os, sys

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "gateway.pid")) as f:
        gateway = int(f.read())
    try:
        with open(f"/proc/{gateway}/environ", "rb") as f:
            seen = f.read().decode("latin-1")
    except OSError as e:
        seen = f"unreadable: {e.strerror}"
    result = {"env": dict(os.environ), "gateway_environ": seen, "uid": os.getuid()}
    with open(os.path.join(here, sys.argv[1]), "w") as f:
        json.dump(result, f)
    if sys.argv[2:3] == ["--"]:
        os.execv(sys.argv[3], sys.argv[3:])
''')

SCRIPT = textwrap.dedent('''\
    """Starts a probe by each means a script has; the session is the echo server it is given."""
    import os, subprocess, sys

    from nexusws.services import RemoteServiceScript

    HERE = os.path.dirname(os.path.abspath(__file__))
    PROBE = os.path.join(HERE, "probe.py")


    class Probes(RemoteServiceScript):
        def start(self, index, options):
            subprocess.run([sys.executable, PROBE, "subprocess.json"], check=True)
            os.system(f"{sys.executable} {PROBE} shell.json")
            child = self.spawn([sys.executable, PROBE, "spawn.json"])
            port = int(self._common_options["echo_port"])
            return child.ended.addCallback(lambda _: ("127.0.0.1", port))

        def stop(self, index):
            return None
''')


@pytest.fixture(scope="module")
def runner():
    """How a program runs as the gateway's user: (command prefix, Python, environment).

    Under root (which reads any /proc/PID/environ) that user is nobody, and the
    Python one the suite's packages import in that nobody can execute (a virtualenv
    under /root is out of its reach); otherwise the test's own user and Python."""
    if os.geteuid() != 0:
        return [], sys.executable, {}
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, the test needs setpriv (util-linux) to run as another user")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p.endswith("site-packages") or p == str(ROOT))}
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        check = [*prefix, "sh", "-c", 'exec "$0" -c "import nexusws.cli"', python]  # sh: no capabilities left
        if subprocess.run(check, env={**os.environ, **env}, capture_output=True, timeout=60).returncode == 0:
            return prefix, python, env
    pytest.fail(f"no Python {version} that user {NOBODY} can run with this suite's packages")


@pytest.fixture
def site():
    """A directory the gateway's user can read and write (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="nexusws-secrets-", dir="/tmp"))
    path.chmod(0o1777)  # sticky, as /tmp: the state file check refuses a directory open to all
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_as_gateway_user(runner, pid):
    """What another process of the gateway's user reads of /proc/PID/environ."""
    prefix, python, env = runner
    code = ("import sys\ntry:\n    sys.stdout.write(open(f'/proc/{sys.argv[1]}/environ','rb').read().decode('latin-1'))\n"
            "except OSError as e:\n    sys.stdout.write('unreadable: ' + e.strerror)")
    done = subprocess.run([*prefix, python, "-c", code, str(pid)], capture_output=True, text=True, timeout=30,
                          check=True, env={**os.environ, **env})
    return done.stdout


def start(gateway, runner, site, *extra, env=None):
    prefix, python, python_env = runner
    return gateway([*extra, *LOOPBACK, "--http_listen", "tcp:0:interface=127.0.0.1",
                    "--http_directory", str(site / "www"), "--state_file", str(site / "state.json")],
                   via=[*prefix, python, "-m", "nexusws.cli"], env={**python_env, **(env or {})},
                   http=True, cwd=str(site))


def test_no_session_program_of_any_kind_can_learn_the_security_token(gateway, runner, echo_port, site):
    """The token in the gateway's environment: a built-in ensight, a script's spawn(), its
    own subprocess and a shell neither inherit it nor read it from /proc/<gateway>/environ,
    nor does any other process of the gateway's user."""
    (site / "www").mkdir()
    (site / "probe.py").write_text(PROBE)
    (site / "probes.py").write_text(SCRIPT)
    ensight = site / "ensight"
    python = runner[1]
    ensight.write_text(f"#!/bin/sh\nexec {python} {site / 'probe.py'} builtin.json -- "
                       f"{python} {ROOT / 'tests' / 'services' / 'fake_ensight.py'} \"$@\"\n")
    ensight.chmod(0o755)
    (site / "sessions.json").write_text(json.dumps(
        {"probes": {"script": "probes.py", "count": 1, "options": {"echo_port": str(echo_port)}}}))
    gw = start(gateway, runner, site, "--remote_session_config", str(site / "sessions.json"),
               "--local_session", "ensight", "1", "--ensight_executable", str(ensight),
               "--vnc_port_base", str(free_port()), env={ENV: TOKEN})
    (site / "gateway.pid").write_text(str(gw.proc.pid))
    assert TOKEN.encode() in Path(f"/proc/{gw.proc.pid}/environ").read_bytes() or os.geteuid() != 0

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for service in ("probes", "ensight"):
        request = urllib.request.Request(f"{gw.http_url}/v1/reserve/{service}", headers=bearer)
        with urllib.request.urlopen(request, timeout=10) as answer:
            token = json.loads(answer.read())["token"]
        with connect(f"{gw.ws_url}/?token={token}", open_timeout=20) as ws:
            if service == "probes":
                ws.send(b"ping")
                assert ws.recv(timeout=10) == b"ping"
            else:
                assert ws.recv(timeout=10).startswith(b"RFB 003.008")

    results = {name: json.loads((site / f"{name}.json").read_text())
               for name in ("subprocess", "shell", "spawn", "builtin")}
    for name, result in results.items():
        assert ENV not in result["env"] and TOKEN not in json.dumps(result["env"]), name
        assert result["gateway_environ"] == "unreadable: Permission denied", name
        assert result["uid"] == (os.getuid() if os.geteuid() else NOBODY), name
    assert read_as_gateway_user(runner, gw.proc.pid) == "unreadable: Permission denied"
    gw.stop()


def test_with_dumpable_the_gateways_environment_is_readable_again(gateway, runner, site):
    """The control: what PR_SET_DUMPABLE closes is open with --dumpable (same user, another process)."""
    (site / "www").mkdir()
    gw = start(gateway, runner, site, "--dumpable", "--client_port", "9", env={ENV: TOKEN})
    assert f"{ENV}={TOKEN}" in read_as_gateway_user(runner, gw.proc.pid).split("\0")
    assert gw.stop() == 0
    gw = start(gateway, runner, site, "--client_port", "9", env={ENV: TOKEN})
    assert read_as_gateway_user(runner, gw.proc.pid) == "unreadable: Permission denied"
    assert gw.stop(signal.SIGTERM) == 0


def test_a_token_file_keeps_the_token_out_of_the_gateways_environment(gateway, runner, site):
    (site / "www").mkdir()
    token_file = site / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    gw = start(gateway, runner, site, "--dumpable", "--client_port", "9", "--security_token_file", str(token_file))
    assert TOKEN not in read_as_gateway_user(runner, gw.proc.pid)
    request = urllib.request.Request(f"{gw.http_url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    gw.stop()


# --- the state file holds no password -------------------------------------------------------


class Service:
    name, count, aliases, common_options, group, origin = "desktop", 2, (), {}, None, "test"

    def start(self, index, options):
        return ("127.0.0.1", 5900)

    def stop(self, index):
        return None

    def pids(self, index):
        return []


def registry(clock, **kw):
    return Registry([Service()], clock, wallclock=lambda: 1767225600.0 + clock.seconds(),
                    wait_for_port=lambda reactor, host, port, timeout: defer.succeed(None), **kw)


def test_the_state_file_never_holds_a_password_and_a_restart_drops_such_a_reservation(tmp_path, events):
    """A restart restores unused reservations to start them later with their options; a
    VNC password would be needed for that, so it is never written, and a reservation that
    has one is dropped at restart (its client reserves again) instead of starting a
    desktop without its password."""
    path = tmp_path / "state.json"
    state = StateFile(str(path))
    clock = Clock()
    records = []
    first = registry(clock, on_change=lambda: records.append(first.snapshot()))
    plain = first.reserve("desktop", {"size": "800x600"})
    secret = first.reserve("desktop", {"size": "800x600", "password": "VNCSECRET", "Vnc_Password": ["V2SECRET"]})
    for data in records:
        state.write(data)
    first.activate(secret.token)  # changes go to the journal as lines
    state.write(first.snapshot())
    state.close()
    text = path.read_text()
    assert "SECRET" not in text and secret.token in text and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.get(secret.token).options["password"] == "VNCSECRET"  # kept in memory

    saved = StateFile(str(path)).read()
    del saved["reservations"][[r["token"] for r in saved["reservations"]].index(secret.token)]["pids"][:]
    for r in saved["reservations"]:  # as if the gateway had stopped before the session started
        r["state"] = "reserved"
    later = registry(Clock())
    later.restore(saved, now=1767225600.0 + 10)
    assert later.get(plain.token).options == {"size": "800x600"}
    assert later.get(secret.token) is None
    lines = [e for e in events if "dropped" in str(e.get("log_format", ""))]
    assert len(lines) == 1 and lines[0]["names"] == "Vnc_Password, password"
    assert tag(secret.token) in lines[0]["label"]
