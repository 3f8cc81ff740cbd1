"""Real-process tests of both front ends, C{nexus-websocketserver} and
C{twistd -n nexusws}: start-up errors, the reference's Basic Operation, systemd
sockets, --verbose, --log_file and SIGTERM. Loopback only, port 0 only."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

BIN = Path(sys.executable).parent
COMMANDS = {
    "cli": [str(BIN / "nexus-websocketserver")],
    "twistd": [str(BIN / "twistd"), "-n", "--pidfile=", "nexusws"],
}
LOOPBACK = "tcp:0:interface=127.0.0.1"
VIAS = pytest.mark.parametrize("via", sorted(COMMANDS))


def clean_env(**extra):
    """The environment for a gateway: no token, no systemd sockets, unbuffered."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEBSOCKETSERVER_SECURITY_TOKEN", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(via, *args, timeout=30):
    """Run a gateway expected to stop by itself; return (exit code, merged output lines)."""
    done = subprocess.run(
        [*COMMANDS[via], *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=clean_env(), timeout=timeout,
    )
    return done.returncode, [line for line in done.stdout.splitlines() if line.strip()]


def round_trip(url, payload=b"hello, tunnel", **kwargs):
    """Open a tunnel at C{url}, echo C{payload} through it, close it cleanly."""
    with connect(url, proxy=None, open_timeout=10, **kwargs) as ws:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload


def wait_for_file_line(path, text, proc, timeout=15.0):
    """Wait until the file at C{path} has a line containing C{text}; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if text in line:
                    return line
        assert proc.poll() is None, f"gateway exited with {proc.returncode}"
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} in {path} within {timeout}s")


# --- start-up errors: one line, non-zero exit, both front ends ------------------------

USAGE_ERRORS = {
    "bad port": (["--http_port", "99999", "0"], "--http_port: '99999' is not a port number (0-65535)"),
    "bad ws port": (["ws"], "ws_server_port: 'ws' is not a port number (0-65535)"),
    "bad endpoint": (["--ws_listen", "bogus:1"], "--ws_listen 'bogus:1': not a usable endpoint: "),
    "missing dir": (["--http_directory", "/nonexistent/dir", "0"], "--http_directory '/nonexistent/dir': not a directory"),
    "key without cert": (["--key", "server.key", "0"], "--key needs --cert"),
    "missing cert": (["--cert", "/nonexistent.pem", "0"], "--cert '/nonexistent.pem': cannot read: No such file"),
    "timeout": (["--timeout", "soon", "0"], "--timeout: 'soon' is not a number of seconds"),
    "local_session": (["--local_session", "envision", "many", "0"], "--local_session: 'envision many' is not"),
    "remote_session_config": (["--remote_session_config", "/nonexistent.json", "0"],
                              "/nonexistent.json: cannot read the service config: No such file or directory"),
    "systemd without LISTEN_FDS": (["--ws_listen", "systemd:domain=INET:name=ws"], "systemd passed no such socket (LISTEN_FDS=unset"),
}


@VIAS
@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_bad_option_prints_exactly_one_line_and_exits_2(via, case):
    """Each bad value stops start-up with exactly one 'error:' line and exit code 2."""
    args, expected = USAGE_ERRORS[case]
    code, lines = run(via, *args)
    prog = "nexus-websocketserver" if via == "cli" else "twistd nexusws"
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0]


def assert_one_startup_error(via, code, lines, expected):
    """Exit 1, no traceback, the error line last; the console script prints nothing else."""
    assert code == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    prog = "nexus-websocketserver" if via == "cli" else "twistd nexusws"
    assert lines[-1].startswith(f"{prog}: error: ") and expected in lines[-1], lines
    if via == "cli":
        assert len(lines) == 1, lines
    else:
        # twistd logs its own start-up lines before the listeners bind; the
        # error is also logged, for twistd's "look at the log file".
        assert sum("error:" in line for line in lines) == 1, lines
        assert any(f"[nexusws#error] nexusws cannot start: {expected}" in line for line in lines), lines


@VIAS
def test_port_in_use_stops_start_up_with_one_line(via):
    """A --ws_listen port already taken stops start-up: exit 1, one error line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        code, lines = run(via, "--ws_listen", description)
    assert_one_startup_error(
        via, code, lines, f"--ws_listen {description!r}: cannot listen: Address already in use"
    )


@VIAS
def test_http_port_in_use_stops_start_up_too(via, tmp_path):
    """The HTTP listener's bind failure is as fatal as the WebSocket one's."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        code, lines = run(via, "--ws_listen", LOOPBACK, "--http_directory", str(tmp_path),
                          "--http_listen", description)
    assert_one_startup_error(via, code, lines, f"--http_listen {description!r}: cannot listen")


def test_daemonizing_twistd_reports_port_in_use_and_logs_it(tmp_path):
    """twistd without -n: exit 1, the parent shows the error, the log file has it in full."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        done = subprocess.run(
            [str(BIN / "twistd"), f"--pidfile={tmp_path / 'gw.pid'}", f"--logfile={tmp_path / 'gw.log'}",
             "nexusws", "--ws_listen", description],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=clean_env(), timeout=30,
        )
    assert done.returncode == 1
    assert "An error has occurred" in done.stderr and "StartupError: --ws_listen" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert (f"nexusws cannot start: --ws_listen {description!r}: cannot listen: Address already in use"
            in (tmp_path / "gw.log").read_text())
    assert not (tmp_path / "gw.pid").exists()


def test_console_script_logs_a_failed_start_to_its_log_file(tmp_path):
    """With --log_file, a port in use is one line on stderr and also recorded in the log file."""
    path = tmp_path / "gw.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        code, lines = run("cli", "--log_file", str(path), "--ws_listen", description)
    assert_one_startup_error("cli", code, lines, f"--ws_listen {description!r}: cannot listen")
    assert f"nexusws cannot start: --ws_listen {description!r}: cannot listen" in path.read_text()


@VIAS
def test_unopenable_log_file_stops_start_up_with_one_line(via, tmp_path):
    """A --log_file that cannot be opened stops start-up: exit 1, one line naming the file."""
    path = tmp_path / "missing" / "gw.log"
    code, lines = run(via, "--log_file", str(path), "--ws_listen", LOOPBACK)
    assert_one_startup_error(via, code, lines, f"--log_file {str(path)!r}: cannot open: No such file")


# --- running ------------------------------------------------------------------------------


@VIAS
def test_basic_operation_command_serves_files_and_tunnels(via, gateway, echo_port, tmp_path):
    """The reference's Basic Operation command (ports 0, our echo backend) serves HTTP and tunnels."""
    (tmp_path / "hello.html").write_text("<p>hello</p>")
    gw = gateway(
        ["--http_directory", str(tmp_path), "--http_port", "0", "--client_hostname", "localhost",
         "--client_port", str(echo_port), "--verbose", "1", "0"],
        via=via, env=clean_env(), http=True,
    )
    assert (gw.ws_scheme, gw.http_scheme) == ("ws", "http")
    round_trip(gw.ws_url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{gw.http_url}/hello.html", timeout=10) as response:
        assert response.read() == b"<p>hello</p>"
    gw.wait_for(rf"connecting to localhost:{echo_port}")


def test_systemd_socket_is_adopted_under_twistd(echo_port, tmp_path):
    """twistd -n adopts a systemd:domain=INET:name=ws socket passed as fd 3 with LISTEN_* set."""
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        port = inherited.getsockname()[1]
        # Stand in for systemd: put the socket on fd 3 and set LISTEN_PID to the
        # pid that execs twistd, as systemd does for its service's main process.
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
        )
        env = clean_env(LISTEN_FDS="1", LISTEN_FDNAMES="ws")
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(inherited.fileno()), *COMMANDS["twistd"],
             "--ws_listen", "systemd:domain=INET:name=ws", "--client_port", str(echo_port),
             "--log_file", str(tmp_path / "gw.log")],
            pass_fds=(inherited.fileno(),), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    try:
        line = wait_for_file_line(tmp_path / "gw.log", "--ws_listen listening on", proc)
        assert f"ws://127.0.0.1:{port}/ (systemd:domain=INET:name=ws)" in line
        round_trip(f"ws://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(20)


def test_verbose_levels_add_nexusws_then_autobahn_debug(gateway, echo_port):
    """--verbose 0 has no debug lines; 1 adds nexusws's ('connecting to'); 2 adds Autobahn's."""
    gateways = {
        level: gateway(["--verbose", str(level), "--ws_listen", LOOPBACK, "--client_port", str(echo_port)],
                       env=clean_env())
        for level in (0, 1, 2)
    }
    for gw in gateways.values():
        round_trip(gw.ws_url)
        gw.wait_for("tunnel closed")
    logs = {level: gw.log for level, gw in gateways.items()}
    assert "connecting to" not in logs[0] and "#debug]" not in logs[0]
    assert "connecting to" in logs[1] and "[autobahn." not in logs[1]
    assert "connecting to" in logs[2] and "[autobahn.twisted.websocket.WebSocketServerProtocol#debug]" in logs[2]
    for log in logs.values():
        assert "tunnel open:" in log


def test_log_file_replaces_stdout_for_the_console_script(gateway, echo_port, tmp_path):
    """nexus-websocketserver --log_file F writes the log to F and nothing to stdout/stderr."""
    path = tmp_path / "gw.log"
    gw = gateway(["--log_file", str(path), "--ws_listen", LOOPBACK, "--client_port", str(echo_port)],
                 env=clean_env(), wait=False)
    line = wait_for_file_line(path, "--ws_listen listening on", gw.proc)
    round_trip("ws://127.0.0.1:" + line.split("127.0.0.1:")[1].split("/")[0])
    wait_for_file_line(path, "tunnel closed:", gw.proc)
    assert gw.stop() == 0
    assert "nexusws stopping" in path.read_text()
    assert gw.lines == []


def test_log_file_under_twistd_gets_a_copy_of_the_gateway_log(gateway, echo_port, tmp_path):
    """twistd nexusws --log_file F copies the gateway's log (start to stop) to F; twistd's log keeps it too."""
    path = tmp_path / "gw.log"
    gw = gateway(["--log_file", str(path), "--ws_listen", LOOPBACK, "--client_port", str(echo_port)],
                 via="twistd", env=clean_env())
    round_trip(gw.ws_url)
    gw.wait_for("tunnel closed:")
    gw.stop()
    copied = path.read_text()
    for text in ("nexusws 0.1.0 starting", f"--ws_listen listening on ws://127.0.0.1:{gw.ws_port}/",
                 "tunnel open:", "tunnel closed:", "nexusws stopping"):
        assert text in copied
        assert text in gw.log
    # twistd's own lines come before the gateway starts and stay in twistd's log only.
    assert "twistd" in gw.log and "starting up" in gw.log and "starting up" not in copied


@VIAS
def test_sigterm_closes_tunnels_with_1001_and_exits_cleanly(via, gateway, echo_port, tmp_path):
    """SIGTERM: listeners close, an open tunnel gets close code 1001, the process exits 0.

    twistd would by default end itself with the signal it received (status
    -15); nexusws makes SIGTERM an orderly stop with status 0 under both.
    """
    gw = gateway(["--ws_listen", LOOPBACK, "--client_port", str(echo_port)], via=via, env=clean_env())
    with connect(gw.ws_url, proxy=None, open_timeout=10) as ws:
        ws.send(b"ping")
        assert ws.recv(timeout=10) == b"ping"
        gw.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    code = gw.stop()
    assert code == 0
    assert "closing 1 open tunnel(s)" in gw.log
    assert f"(TCP Port {gw.ws_port} Closed)" in gw.log
    assert "Traceback" not in gw.log
