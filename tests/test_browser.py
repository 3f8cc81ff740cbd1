"""noVNC in headless Chromium, through nexusws, to a real Xvfb + x11vnc desktop.

The browser is Debian's Chromium driven by Playwright for Python (never a
downloaded browser); the viewer is served by the gateway at
/ansys/nexus/novnc/ over noVNC 1.3 (Debian's novnc, the full application) or
noVNC 1.7 (npm's @novnc/novnc, the RFB library only). Screenshots are kept in
tests/.artifacts/.
"""

import json
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT
from support.browser import (  # noqa: F401 (the fixtures chromium and novnc)
    LOOPBACK,
    chromium_fixture,
    novnc_fixture,
    screenshot,
    viewer_url,
    wait_for_desktop,
    www,
)
from support.desktop import COLOUR, free_display, processes_with

SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"


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
