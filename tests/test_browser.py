"""noVNC in headless Chromium, through nexusws, to a real Xvfb + x11vnc desktop.

The browser is Debian's Chromium driven by Playwright for Python (never a
downloaded browser); the viewer is served by the gateway at
/ansys/nexus/novnc/ over noVNC 1.3 (Debian's novnc, the full application) or
noVNC 1.7 (npm's @novnc/novnc, the RFB library only). Screenshots are kept in
tests/.artifacts/.
"""

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, require
from support.desktop import COLOUR, RGB, free_display, processes_with

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEBIAN_NOVNC = "/usr/share/novnc"
LOOPBACK = "tcp:0:interface=127.0.0.1"
SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
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


@pytest.fixture(params=["1.3", "1.7"])
def novnc(request):
    """A noVNC tree of each version: Debian's package (1.3) and npm's (1.7)."""
    if request.param == "1.3":
        require(os.path.isfile(os.path.join(DEBIAN_NOVNC, "vnc.html")), "noVNC 1.3 (apt-get install novnc)")
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "novnc"],
                                 capture_output=True, text=True).stdout
        require(version.startswith("1:1.3."), f"Debian 12's novnc 1.3 (this is {version or 'not dpkg'})")
        return DEBIAN_NOVNC
    return str(request.getfixturevalue("node_modules") / "@novnc" / "novnc")


@pytest.fixture
def chromium(tmp_path):
    """Open pages with C{chromium(url)} in headless Chromium with a fresh profile."""
    require(os.access(CHROMIUM, os.X_OK), "Chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (pip install '.[test]')")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1024, "height": 768},
        )
        errors = []

        def open_page(url):
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            return page

        open_page.errors = errors
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


def wait_for_desktop(page):
    """Until the viewer is connected and the canvas shows the desktop's colour in every corner."""
    page.wait_for_function(CONNECTED)
    page.wait_for_function(f"() => {{ const c = ({CORNERS})(); "
                           f"return c && c.every(p => p.join() === '{','.join(map(str, RGB))}'); }}")


def screenshot(page, artifacts, name):
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0
    return path


@pytest.mark.parametrize("page_name", ["vnc.html", "vnc_envision.html"])
def test_viewer_shows_the_desktop_in_basic_mode(gateway, desktop, chromium, novnc, page_name, tmp_path,
                                                 artifacts, request):
    d = desktop(password="veronica")
    gw = gateway(["--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  "--client_hostname", "127.0.0.1", "--client_port", str(d.port), "--novnc_dir", novnc],
                 http=True)
    # The reference's URL: .../novnc/vnc_envision.html?password=...&autoconnect=true&host=...&port=...
    page = chromium(viewer_url(gw, page_name, password="veronica", autoconnect="true",
                               host="127.0.0.1", port=gw.ws_url.rsplit(":", 1)[1]))
    wait_for_desktop(page)
    screenshot(page, artifacts, f"viewer-{request.node.callspec.id}")
    assert chromium.errors == []
    gw.wait_for(r"tunnel .*open")


def test_a_wrong_password_shows_the_error_state(gateway, desktop, chromium, novnc, tmp_path, artifacts,
                                                request):
    novnc_version = request.node.callspec.params["novnc"]
    d = desktop(password="veronica")
    gw = gateway(["--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  "--client_hostname", "127.0.0.1", "--client_port", str(d.port), "--novnc_dir", novnc],
                 http=True)
    page = chromium(viewer_url(gw, "vnc.html", password="wrong", autoconnect="true",
                               host="127.0.0.1", port=gw.ws_url.rsplit(":", 1)[1]))
    if novnc_version == "1.3":  # noVNC's application: its status bar in the error style
        status = page.locator("#noVNC_status.noVNC_status_error")
        status.wait_for(state="visible")
        assert "password check failed" in status.inner_text()
        page.wait_for_timeout(1000)  # for the screenshot only: the bar slides in
    else:  # our page over the library
        page.wait_for_function("() => document.documentElement.dataset.state === 'failed'")
        assert page.locator("#status").inner_text() == "Authentication failed: password check failed!"
    screenshot(page, artifacts, f"viewer-wrong-password-{novnc_version}")


def test_the_viewer_asks_for_a_password_it_was_not_given(gateway, desktop, chromium, tmp_path, node_modules):
    d = desktop(password="veronica")
    gw = gateway(["--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  "--client_hostname", "127.0.0.1", "--client_port", str(d.port),
                  "--novnc_dir", str(node_modules / "@novnc" / "novnc")], http=True)
    page = chromium(viewer_url(gw, "vnc_envision.html", host="127.0.0.1", port=gw.ws_url.rsplit(":", 1)[1]))
    page.wait_for_function("() => document.documentElement.dataset.state === 'password'")
    page.fill("#password", "veronica")
    page.press("#password", "Enter")
    wait_for_desktop(page)


def reserve(gw, service, **options):
    url = f"{gw.http_url}/v1/reserve/{urllib.parse.quote(service)}?{urllib.parse.urlencode(options)}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def status(gw):
    with urllib.request.urlopen(f"{gw.http_url}/v1/status", timeout=10) as answer:
        return json.loads(answer.read())


def test_a_reserved_desktop_session_in_the_browser(gateway, chromium, novnc, tmp_path, artifacts, request):
    """The token flow: reserve over /v1, open the page with the token, close it: the desktop is
    gone (with --reconnect_grace 0, the reference's behaviour: no grace to wait out)."""
    base = free_display(count=1)
    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"Local Software Session": {
        "script": str(SCRIPT), "count": 1,
        "options": {"sizes": ["800x600"], "display_base": base, "background": COLOUR}}}))
    gw = gateway(["--remote_session_config", str(config), "--state_file", str(tmp_path / "state.json"),
                  "--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  "--novnc_dir", novnc, "--reconnect_grace", "0"], http=True)
    token = reserve(gw, "Local Software Session", password="veronica")["token"]
    # The reference's page URL for a launched service: path, token, session_name.
    page = chromium(viewer_url(gw, "vnc_envision.html", path="websockify", token=token,
                               session_name="Local Software Session", autoconnect="true",
                               host="127.0.0.1", port=gw.ws_url.rsplit(":", 1)[1], password="veronica"))
    wait_for_desktop(page)
    assert page.title() == "Local Software Session"
    assert page.evaluate("document.querySelector('canvas').width") == 800
    assert len(processes_with(f":{base}")) >= 2, "Xvfb and x11vnc run for the session"
    screenshot(page, artifacts, f"viewer-session-{request.node.callspec.id}")

    page.close()  # the WebSocket closes with the page
    deadline = time.monotonic() + 20
    while processes_with(f":{base}") or status(gw)[0]["instances"]:
        assert time.monotonic() < deadline, "the session outlived its page"
        time.sleep(0.1)
    assert chromium.errors == []
