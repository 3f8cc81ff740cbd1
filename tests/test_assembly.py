"""makeService builds the whole gateway with the reactor it is given (issue 14, item 4).

Options only parse and check; nothing they do installs a reactor. The check
runs in a process of its own (tests/programs/memory_gateway.py): this one
has a global reactor already.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(__file__).resolve().parent / "programs" / "memory_gateway.py"


def test_make_service_builds_and_runs_the_whole_gateway_on_a_memory_reactor(tmp_path):
    done = subprocess.run([sys.executable, str(PROGRAM), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts == {
        "reactor_after_options": False,
        "reactor_after_build": False,
        "reactor_at_end": False,
        "tcp_listeners": 2,  # ws and http, listening on the memory reactor
        "children": ["SessionsService", "TunnelsService", "ListenerService", "ListenerService"],
        "script_reactor_is_memory": True,
        "services_on_memory": [True, True],
        "groups_clock_is_memory": True,
        "stopped": True,
    }


def test_options_build_nothing_a_script_init_error_comes_from_make_service(tmp_path):
    """A service script's __init__ runs in makeService: its error is still one line, an
    option error (the console script exits 2, as before)."""
    (tmp_path / "bad.py").write_text(
        "from nexusws.services import RemoteServiceScript\n\n\n"
        "class Bad(RemoteServiceScript):\n"
        "    def __init__(self, options):\n"
        "        raise KeyError('port_base')\n")
    (tmp_path / "services.json").write_text(json.dumps({"svc": {"script": "bad.py", "count": 1, "options": {}}}))
    done = subprocess.run(
        [sys.executable, "-m", "nexusws.cli", "--http_directory", str(tmp_path), "--http_port", "0",
         "--remote_session_config", str(tmp_path / "services.json"), "--state_file", str(tmp_path / "s.json"), "0"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"nexus-websocketserver: error: {tmp_path / 'services.json'}: service 'svc': "
                           "Bad(options) raised KeyError: 'port_base' (line 6)\n")


def test_the_looping_call_runs_on_the_clock_it_is_given_and_installs_no_reactor():
    from twisted.internet.task import Clock

    from nexusws.clock import LoopingCall

    clock, calls = Clock(), []
    loop = LoopingCall(clock, calls.append, "tick")
    assert loop.clock is clock
    loop.start(2.0, now=False)
    clock.pump([2.0, 2.0, 2.0, 1.0])
    assert calls == ["tick"] * 3 and loop.running
    loop.stop()
    clock.advance(10)
    assert calls == ["tick"] * 3 and not loop.running


def gateway_options(tmp_path, *extra):
    (tmp_path / "ok.py").write_text(
        "from nexusws.services import RemoteServiceScript\n\n\n"
        "class Ok(RemoteServiceScript):\n"
        "    def start(self, index, options):\n"
        "        return ('127.0.0.1', 1)\n")
    (tmp_path / "services.json").write_text(json.dumps({"ok": {"script": "ok.py", "count": 1, "options": {}}}))
    return ["--http_directory", str(tmp_path), "--http_port", "0",
            "--remote_session_config", str(tmp_path / "services.json"), *extra, "0"]


def test_the_default_state_directory_is_made_by_make_service_not_by_the_options(tmp_path, monkeypatch):
    from twisted.internet.testing import MemoryReactorClock

    from nexusws import tap

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    options = tap.Options()
    options.parseOptions(gateway_options(tmp_path, "--dumpable"))
    assert options["state_file"].startswith(str(tmp_path / "state" / "nexusws") + "/")
    assert not (tmp_path / "state").exists()  # options build nothing
    tap.makeService(options, MemoryReactorClock())
    made = tmp_path / "state" / "nexusws"
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700


def test_a_default_state_directory_that_cannot_be_made_is_one_line_and_exit_2(tmp_path):
    """A failed start leaves nothing behind: the directory is made after the scripts are."""
    env = {**os.environ, "XDG_STATE_HOME": "/proc/no-such-dir"}
    env.pop("STATE_DIRECTORY", None)
    done = subprocess.run([sys.executable, "-m", "nexusws.cli", *gateway_options(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("nexus-websocketserver: error: --state_file: cannot create the default "
                                  "directory for '/proc/no-such-dir/nexusws/")
    assert done.stderr.count("\n") == 1
