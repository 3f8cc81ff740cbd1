"""Run the nexusws demo: a small TCP backend, the gateway tunnelling to it, and sessions.

    python config/demo/run.py [gateway options...]

Without options the gateway runs as in the reference's Basic Operation example:
HTTP on port 9000 (serving config/demo/www), WebSocket on port 9090. Open
http://127.0.0.1:9000/?port=9090 for basic mode (one shared backend), and
http://127.0.0.1:9000/sessions.html?port=9090 for sessions: each page reserves
a "Demo Session" through /v1 and gets its own backend process, started when
its WebSocket opens and stopped when it closes (services.json, demo_session.py).
Any options given replace the defaults (for example --http_listen tcp:0
--ws_listen tcp:0 for free ports).

Where Xvfb, x11vnc and xsetroot are installed, the demo also offers
"Desktop" (desktop.json: config/scripts/x11vnc_desktop_session.py, an X
desktop per session with those of its programs that are installed), which the
session portal, http://127.0.0.1:9000/ansys/nexus/sessions/, shows in the
browser (its viewer needs noVNC: Debian's novnc). The gateway takes one
service config, so the demo writes services.json and desktop.json as one
file, with absolute script paths, to a temporary directory. Where they are
missing, one line says what to install and the demo runs without "Desktop".
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULTS = ["--http_port", "9000", "--verbose", "1", "9090"]
#: What the desktop needs on PATH, and the Debian packages that bring it (and the viewer, noVNC).
DESKTOP_PROGRAMS = ("Xvfb", "x11vnc", "xsetroot")
DESKTOP_PACKAGES = "apt-get install xvfb x11vnc x11-xserver-utils x11-utils novnc"


def gateway_command():
    """nexus-websocketserver from the same environment as this Python."""
    script = Path(sys.executable).parent / "nexus-websocketserver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexusws.cli"]


def display_in_use(display):
    return os.path.exists(f"/tmp/.X11-unix/X{display}") or os.path.exists(f"/tmp/.X{display}-lock")


def free_display_base(start, count):
    """The first display number from C{start} from which C{count} displays are unused."""
    base = start
    while any(display_in_use(d) for d in range(base, base + count)):
        base += count
    return base


def load_services(name):
    """The services of HERE/C{name}, their script paths made absolute (relative to that file)."""
    with open(HERE / name, encoding="utf-8") as f:
        services = json.load(f)
    for spec in services.values():
        spec["script"] = str((HERE / spec["script"]).resolve())
    return services


def desktop_services():
    """desktop.json's "Desktop" made to fit this machine: free displays, installed programs only."""
    services = load_services("desktop.json")
    for spec in services.values():
        options = spec["options"]
        options["display_base"] = free_display_base(options["display_base"], spec["count"])
        options["programs"] = [argv for argv in options.get("programs", []) if shutil.which(argv[0])]
    return services


def novnc_found():
    try:
        from nexusws.viewer import find_novnc
    except ImportError:
        return True  # cannot tell: say nothing
    return find_novnc() is not None


def services_config(directory):
    """The service config file to give the gateway: services.json, or it and desktop.json in one."""
    missing = [program for program in DESKTOP_PROGRAMS if shutil.which(program) is None]
    if missing:
        print(f"demo: no \"Desktop\" sessions ({', '.join(missing)} not found); for them: "
              f"{DESKTOP_PACKAGES}", flush=True)
        return HERE / "services.json"
    config = Path(directory) / "services.json"
    config.write_text(json.dumps({**load_services("services.json"), **desktop_services()}, indent=2))
    print("demo: \"Desktop\" sessions too: open the session portal, "
          "http://127.0.0.1:9000/ansys/nexus/sessions/ (or the port you chose)", flush=True)
    if not novnc_found():
        print(f"demo: the portal's viewer needs noVNC, not found: {DESKTOP_PACKAGES}", flush=True)
    return config


#: The signals that stop the demo (Ctrl-C, kill, a closed terminal): the gateway is told to stop
#: gracefully, so that every session it runs is stopped with it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(args):
    # The children run in sessions of their own: Ctrl-C or a closed terminal reaches this
    # script alone, which stops them in order (the gateway gracefully, its sessions with it).
    children, stopping = {}, []

    def stop(signum, frame):
        stopping.append(signum)
        if "gateway" in children:
            children["gateway"].send_signal(signal.SIGTERM)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    directory = tempfile.TemporaryDirectory(prefix="nexusws-demo-")
    backend = subprocess.Popen([sys.executable, str(HERE / "backend.py"), "0"], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        line = backend.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if stopping:
            return 0
        if not match:
            sys.exit(f"demo: the backend did not start: {line!r}")
        port = match.group(1)
        print(f"demo: backend on 127.0.0.1:{port}; open http://127.0.0.1:9000/?port=9090 and "
              "http://127.0.0.1:9000/sessions.html?port=9090 (or the ports you chose)", flush=True)
        config = services_config(directory.name)
        if stopping:
            return 0
        children["gateway"] = gateway = subprocess.Popen(
            gateway_command() + ["--http_directory", str(HERE / "www"), "--client_hostname",
                                 "127.0.0.1", "--client_port", port, "--remote_session_config",
                                 str(config)] + (args or DEFAULTS), start_new_session=True)
        if stopping:  # a signal came while it was being started
            gateway.send_signal(signal.SIGTERM)
        status = gateway.wait()
        # Stopped by a signal it got before it could handle one: that stop was asked for.
        return 0 if stopping and status == -signal.SIGTERM else status
    finally:
        backend.terminate()
        backend.wait()
        directory.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
