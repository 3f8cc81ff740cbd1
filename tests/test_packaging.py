"""Packaging: the wheel, installed into a fresh venv, gives twistd the nexusws
plugin and installs the nexus-websocketserver console script.

One wheel and one venv for the whole module. The wheel is built from a copy of
the source tree, so a stale C{build/} directory cannot leak into it and the
repository is not written to; dependencies come from the package index (pip's
cache makes repeats fast).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
    ".venv", ".venv-latest", ".bench", ".conformance", "node_modules", "tests",
)


def _run(*cmd, cwd, timeout=600):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _env():
    """The environment minus anything that would let the venv see this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Installed:
    def __init__(self, base, source, wheel, venv):
        self.base = base
        self.source = source
        self.wheel = wheel
        self.bin = venv / "bin"
        with zipfile.ZipFile(wheel) as zf:
            self.names = set(zf.namelist())

    def run(self, program, *args):
        return _run(self.bin / program, *args, cwd=self.base)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel (not editable), pip install it into a fresh venv, regenerate the dropin cache."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    # A checkout that has run twistd has a dropin cache: make sure there is one to (not) ship.
    (source / "twisted" / "plugins" / "dropin.cache").write_bytes(b"stale cache")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist", source, cwd=base)
    (wheel,) = (base / "dist").glob("nexusws-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=base)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel, cwd=base)
    (plugins,) = venv.glob("lib/python*/site-packages/twisted/plugins")
    cache = plugins / "dropin.cache"
    assert not cache.exists(), "nothing should have written the venv's plugin cache yet"
    _run(venv / "bin" / "python", "-c",
         "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))", cwd=base)
    installed = Installed(base, source, wheel, venv)
    installed.dropin_cache = cache
    return installed


PLUGINS = {"twisted/plugins/nexusws_plugin.py", "twisted/plugins/nexusws_balancer_plugin.py"}


def test_wheel_ships_the_plugins_without_twisted_init_or_dropin_cache(installed):
    """The wheel has the two plugin files (gateway, balancer) but no twisted/__init__.py,
    no twisted/plugins/__init__.py (they would shadow Twisted) and no dropin.cache."""
    assert PLUGINS <= installed.names
    assert "twisted/__init__.py" not in installed.names
    assert "twisted/plugins/__init__.py" not in installed.names
    assert not [n for n in installed.names if n.endswith("dropin.cache")]
    assert not [n for n in installed.names if n.startswith("twisted/") and n not in PLUGINS]
    assert any(n.startswith("nexusws/balancer/") for n in installed.names)


def test_wheel_ships_every_ansys_asset(installed):
    """Every file of the source's nexusws/ansys tree is in the wheel (and there is at least one)."""
    assets = {
        p.relative_to(installed.source).as_posix()
        for p in (installed.source / "nexusws" / "ansys").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert assets, "the source tree has no nexusws/ansys files to ship"
    assert assets <= installed.names, sorted(assets - installed.names)


def test_plugin_cache_is_regenerated_in_the_venv_and_names_nexusws(installed):
    """Scanning the plugins in the fresh venv wrote its twisted/plugins/dropin.cache, with nexusws in it."""
    assert installed.dropin_cache.is_file()
    assert b"nexusws_plugin" in installed.dropin_cache.read_bytes()


def test_twistd_help_lists_nexusws(installed):
    """In the fresh venv, `twistd --help` lists the nexusws plugin and the balancer's."""
    out = installed.run("twistd", "--help")
    assert re.search(r"^\s+nexusws\s+\S", out, re.MULTILINE)
    assert re.search(r"^\s+nexusws-balancer\s+\S", out, re.MULTILINE)


def test_twistd_nexusws_balancer_help_works(installed):
    out = installed.run("twistd", "nexusws-balancer", "--help")
    assert "--config=" in out and "--listen=" in out


def test_twistd_nexusws_help_shows_the_reference_options(installed):
    """`twistd nexusws --help` works and shows the options with the reference's spelling."""
    out = installed.run("twistd", "nexusws", "--help")
    assert "Usage: twistd [options] nexusws [options] ws_server_port" in out
    for name in ("--http_directory=", "--http_port=", "--client_port=", "--local_session=", "--log_file="):
        assert name in out


def test_console_script_is_installed_and_helps(installed):
    """The wheel installs `nexus-websocketserver`, whose --help shows the reference usage."""
    assert (installed.bin / "nexus-websocketserver").exists()
    out = installed.run("nexus-websocketserver", "--help")
    assert "Usage: nexus-websocketserver [options] ws_server_port" in out
    assert "--client_hostname=" in out


def test_installed_gateway_serves_ansys_and_stops_on_sigterm(installed, tmp_path):
    """The installed code (not this checkout) runs: it serves /ansys/ and exits 0 on SIGTERM."""
    code = "import nexusws, sys; sys.stdout.write(nexusws.__file__)"
    where = installed.run("python", "-c", code)
    assert "site-packages" in where and str(ROOT) not in where
    proc = subprocess.Popen(
        [installed.bin / "nexus-websocketserver", "--ws_listen", "tcp:0:interface=127.0.0.1",
         "--http_directory", tmp_path, "--http_listen", "tcp:0:interface=127.0.0.1"],
        cwd=installed.base, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in proc.stdout:
            found = re.search(r"--http_listen listening on http://127\.0\.0\.1:(\d+)/", line)
            if found:
                break
        else:
            pytest.fail("the installed gateway never reported its HTTP listener")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{found.group(1)}/ansys/", timeout=10) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait(5)


def test_readme_demo_runs_with_the_installed_package(installed, gateway, monkeypatch, tmp_path):
    """The Quick start's `.venv/bin/python config/demo/run.py`, from a copy of the checkout
    (with nexusws/ beside config/) but the venv's Python: every nexusws module the demo
    loads comes from the venv; it serves its page, tunnels in basic mode and in a session,
    and stops on SIGTERM. Free ports through run.py's options instead of 9000 and 9090."""
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    assert (installed.source / "nexusws" / "__init__.py").is_file()
    gw = gateway(
        ["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1",
         "--state_file", str(tmp_path / "state.json")],
        via=[str(installed.bin / "python"), "config/demo/run.py"], cwd=installed.source,
        env={"PYTHONVERBOSE": "1"},  # the interpreters say where each module comes from
        http=True,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(gw.http_url + "/", timeout=10) as response:
        assert response.status == 200 and "new WebSocket(url" in response.read().decode()
    with opener.open(gw.http_url + "/v1/reserve/Demo%20Session", timeout=10) as response:
        token = json.loads(response.read())["token"]

    async def talk(url, line):
        async with connect(url, subprotocols=["binary"]) as ws:
            assert (await ws.recv()).startswith(b"hello from the nexusws demo backend")
            await ws.send(line + b"\n")
            assert await ws.recv() == b"you said: " + line.upper() + b"\r\n"

    async def both():
        await talk(gw.ws_url + "/websockify", b"basic mode")
        await talk(f"{gw.ws_url}/websockify?token={token}", b"my session")

    asyncio.run(asyncio.wait_for(both(), 60))
    gw.wait_for(r"Demo Session.*released")
    assert gw.stop(signal.SIGTERM) == 0

    loaded = set(re.findall(r"^# code object from '?(\S*?)/nexusws/(?:__pycache__/)?\w+\.(?:py|cpython)",
                            gw.log, re.MULTILINE))
    site_packages = str(installed.dropin_cache.parent.parent.parent)
    assert loaded == {site_packages}, f"nexusws loaded from {loaded}, not only from {site_packages}"


# --- reproducible installs -------------------------------------------------------------


def _quick_start_commands():
    """The Quick start's two literal commands (demo, tests)."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    quick = text.split("Quick start", 1)[1].split("Basic operation", 1)[0]
    return [line.strip() for line in quick.splitlines() if line.strip().startswith("python3 -m venv")]


def _requirement_names():
    """Every distribution setup.cfg asks for, install_requires and the test extra."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    text = cfg["options"]["install_requires"] + "\n" + cfg["options.extras_require"]["test"]
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_quick_start_commands_and_ci_install_the_pinned_versions():
    """Both README commands install with constraints.txt, and .ci/run runs the README's
    test command exactly as written."""
    demo, tests = _quick_start_commands()
    assert "pip install -c constraints.txt . " in demo and demo.endswith("config/demo/run.py")
    assert "pip install -c constraints.txt '.[test]'" in tests and tests.endswith("-m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()


def test_constraints_pin_every_requirement_to_one_version():
    """Each direct requirement (runtime and test) has an exact pin in constraints.txt,
    and no pin is given twice."""
    pins = [line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(len(p) == 2 and p[1] for p in pins), pins
    names = [p[0].lower().replace("_", "-") for p in pins]
    assert len(names) == len(set(names))
    assert _requirement_names() - set(names) == set()
