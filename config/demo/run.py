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
"""

import re
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULTS = ["--http_port", "9000", "--verbose", "1", "9090"]


def gateway_command():
    """nexus-websocketserver from the same environment as this Python."""
    script = Path(sys.executable).parent / "nexus-websocketserver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexusws.cli"]


def main(args):
    backend = subprocess.Popen(
        [sys.executable, str(HERE / "backend.py"), "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = backend.stdout.readline()
        match = re.search(r":(\d+)$", line.strip())
        if not match:
            sys.exit(f"demo: the backend did not start: {line!r}")
        port = match.group(1)
        print(f"demo: backend on 127.0.0.1:{port}; open http://127.0.0.1:9000/?port=9090 and "
              "http://127.0.0.1:9000/sessions.html?port=9090 (or the ports you chose)", flush=True)
        gateway = subprocess.Popen(
            gateway_command() + ["--http_directory", str(HERE / "www"), "--client_hostname",
                                 "127.0.0.1", "--client_port", port, "--remote_session_config",
                                 str(HERE / "services.json")] + (args or DEFAULTS)
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: gateway.send_signal(signal.SIGTERM))
        return gateway.wait()
    finally:
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
