"""noVNC in headless Chromium: the fixtures and helpers of the browser tests
(test_browser, test_browser_sessions).

The browser is Debian's Chromium driven by Playwright for Python (never a
downloaded browser); the viewer is served by the gateway at
/ansys/nexus/novnc/ over noVNC 1.3 (Debian's novnc, the full application) or
noVNC 1.7 (npm's @novnc/novnc, the RFB library only). A test module imports the
fixtures C{chromium} and C{novnc} as C{chromium_fixture} and C{novnc_fixture}
(so that its tests' arguments of those names shadow no import).
"""

import os
import socket
import struct
import subprocess
import threading
import urllib.parse
from contextlib import contextmanager

import pytest

from conftest import require
from support.desktop import RGB

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEBIAN_NOVNC = "/usr/share/novnc"
LOOPBACK = "tcp:0:interface=127.0.0.1"
TIMEOUT_MS = 30_000

# Connected: noVNC's application marks <html class="noVNC_connected">, our page data-state.
CONNECTED = ("() => document.documentElement.classList.contains('noVNC_connected')"
             " || document.documentElement.dataset.state === 'connected'")
# The four corners of the remote screen, as the canvas holds them.
CORNERS = """() => {
    const canvas = document.querySelector('canvas');
    if (!canvas || !canvas.width) return null;
    const ctx = canvas.getContext('2d');
    const w = canvas.width, h = canvas.height;
    return [[5, 5], [w - 6, 5], [5, h - 6], [w - 6, h - 6]].map(
        ([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
}"""

# Every WebSocket the page opens records its close code (noVNC's disconnect event has none).
RECORD_CLOSES = """(() => {
    const Native = window.WebSocket;
    window.__closes = [];
    // A function that returns the native object: noVNC 1.7 checks its prototype's own methods.
    function Recording(...args) {
        const ws = new Native(...args);
        ws.addEventListener('close', (e) => window.__closes.push(e.code));
        return ws;
    }
    Recording.prototype = Native.prototype;
    for (const name of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Recording[name] = Native[name];
    window.WebSocket = Recording;
})();"""


@pytest.fixture(name="novnc", params=["1.3", "1.7"])
def novnc_fixture(request):
    """A noVNC tree of each version: Debian's package (1.3) and npm's (1.7)."""
    if request.param == "1.3":
        require(os.path.isfile(os.path.join(DEBIAN_NOVNC, "vnc.html")), "noVNC 1.3 (apt-get install novnc)")
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "novnc"],
                                 capture_output=True, text=True).stdout
        require(version.startswith("1:1.3."), f"Debian 12's novnc 1.3 (this is {version or 'not dpkg'})")
        return DEBIAN_NOVNC
    return str(request.getfixturevalue("node_modules") / "@novnc" / "novnc")


@contextmanager
def playwright():
    """Playwright for Python, once Debian's Chromium and Playwright are known to be there (a
    loud skip, or in CI a failure, when one is missing)."""
    require(os.access(CHROMIUM, os.X_OK), "Chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (pip install '.[test]')")
    with sync_playwright() as p:
        yield p


@pytest.fixture(name="chromium")
def chromium_fixture(tmp_path):
    """Open pages with C{chromium(url)} in headless Chromium with a fresh profile.

    C{chromium.errors} collects the pages' uncaught errors, C{chromium.console}
    their console messages as C{(type, text)}."""
    with playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1024, "height": 768},
        )
        errors, console = [], []

        def open_page(url):
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            return page

        open_page.errors = errors
        open_page.console = console
        open_page.context = context
        try:
            yield open_page
        finally:
            context.close()


def www(tmp_path):
    directory = tmp_path / "www"
    directory.mkdir(exist_ok=True)
    return str(directory)


def viewer_url(gw, page, **query):
    return f"{gw.http_url}/ansys/nexus/novnc/{page}?{urllib.parse.urlencode(query)}"


def wait_for_desktop(page, rgb=RGB):
    """Until the viewer is connected and the canvas shows colour C{rgb} (the test desktop's)
    in every corner."""
    page.wait_for_function(CONNECTED)
    page.wait_for_function(f"() => {{ const c = ({CORNERS})(); "
                           f"return c && c.every(p => p.join() === '{','.join(map(str, rgb))}'); }}")


def screenshot(page, artifacts, name):
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0
    return path


class CutProxy:
    """A TCP proxy on 127.0.0.1 to C{host:port} whose connections L{cut} drops at once (no
    close frame, as a network change does); C{port} is its own, C{accepted} counts connections."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted, self.sockets, self.lock = 0, [], threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.accepted += 1
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self):
        """Drop every connection so far: both ends see a reset, nothing more."""
        with self.lock:
            cut, self.sockets = self.sockets, []
        for s in cut:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
                s.shutdown(socket.SHUT_RD)  # wakes its pump, sends nothing
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()
        self.cut()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
