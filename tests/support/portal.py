"""The session portal, the admin dashboard and the test page in headless Chromium
(test_browser_portal): a browser whose contexts are users, gateways serving real desktops
(the shipped x11vnc desktop script, or EnVision's stand-in tests/services/fake_envision.py),
and the checks those tests share.

The browser is Debian's Chromium driven by Playwright (as L{support.browser}: never a
downloaded one). Each context is one user: none (the direct local browser, an
administrator when there is no security token), or a user a trusted proxy names
(C{X-Remote-User}, believed from loopback). Every page of every context, pop-ups
included, has its uncaught errors and console messages collected, and records the close
codes of its WebSockets (C{window.__closes}).
"""

import json
import os
import random
import shutil

import pytest

from conftest import ROOT, require
from support.browser import CHROMIUM, CHROMIUM_ARGS, LOOPBACK, RECORD_CLOSES, TIMEOUT_MS, playwright, screenshot, www
from support.desktop import COLOUR, free_display, processes_with
from support.envision import envision_executable, envision_ports
from support.sessions import gateway_args
from support.waiting import wait_until

SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
DOCS = ROOT / "docs"
#: The service of the desktop gateway: a desktop that waits 60 s for its viewer to come
#: back, and runs at most 10 min, which an administrator may extend by 10 min.
SERVICE = "Desktop"
SERVICE_OPTIONS = {"reconnect_grace": 60, "max_duration": 600, "max_extend": 600}
VIEWPORT = {"width": 1100, "height": 700}

# Every WebSocket a page opens records its close code (noVNC's disconnect event has none).


class Browser:
    """Headless Chromium; L{context} makes a user's browser, L{open} a page in it."""

    def __init__(self, p):
        self.browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.errors, self.console = [], []

    def context(self, user=None):
        """A fresh browser (no storage): anonymous and direct, or C{user} as a trusted proxy names them."""
        context = self.browser.new_context(
            viewport=VIEWPORT, extra_http_headers={"X-Remote-User": user} if user is not None else None)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(RECORD_CLOSES)
        context.on("page", self._watch)
        return context

    def _watch(self, page):
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        page.on("console", lambda m: self.console.append((m.type, m.text)))

    def open(self, context, url):
        """A new page of C{context} at C{url}; C{page.status}: the HTTP status of its document."""
        page = context.new_page()
        page.status = page.goto(url).status
        return page

    def assert_clean(self, *secrets):
        """No uncaught error in any page; on their consoles, no error but the browser's own
        about an answer's status (a refused call, the favicon's 404), and none of C{secrets}."""
        assert self.errors == []
        assert [text for kind, text in self.console
                if kind == "error" and not text.startswith("Failed to load resource: the server responded")] == []
        assert not [text for _, text in self.console if any(secret in text for secret in secrets)]

    def close(self):
        self.browser.close()


@pytest.fixture(name="browser")
def browser_fixture():
    with playwright() as p:
        browser = Browser(p)
        try:
            yield browser
        finally:
            browser.close()


def x_programs():
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot", "xmessage", "xclock")),
            "Xvfb, x11vnc, xsetroot, xmessage and xclock "
            "(apt-get install xvfb x11vnc x11-xserver-utils x11-utils x11-apps)")


def desktop_gateway(gateway, tmp_path, *options, count=1, novnc=None, xvfb=None):
    """A gateway serving service L{SERVICE}, C{count} desktops (800x600, COLOUR) of the shipped
    script; C{gw.display} is the X display number of the first."""
    x_programs()
    # Far from where the other tests look (from :300 up), which may run meanwhile and take a
    # display between this look and the session's start.
    display = free_display(start=random.randrange(2000, 30000), count=count)
    service = {"sizes": ["800x600"], "display_base": display, "background": COLOUR, **SERVICE_OPTIONS,
               # Small X programs, as the demo's desktop has, away from the corners the tests look at.
               "programs": [["xmessage", "-center", "Hello from nexusws"], ["xclock", "-geometry", "-40+40"]]}
    if xvfb is not None:
        service["xvfb"] = str(xvfb)
    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({SERVICE: {"script": str(SCRIPT), "count": count, "options": service}}))
    viewer = ["--novnc_dir", novnc] if novnc is not None else []
    gw = gateway(["--remote_session_config", str(config), "--state_file", str(tmp_path / "state.json"),
                  "--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  *viewer, *options], http=True)
    gw.display = display
    return gw


def slow_xvfb(tmp_path, seconds):
    """An Xvfb that waits C{seconds} first: a start slow enough to watch."""
    slow = tmp_path / "slow-xvfb"
    slow.write_text(f"#!/bin/sh\nsleep {seconds}\nexec {shutil.which('Xvfb')} \"$@\"\n")
    slow.chmod(0o755)
    return slow


def envision_gateway(gateway, tmp_path, count, *options, novnc=None):
    """A gateway with C{--local_session envision COUNT} running EnVision's stand-in."""
    x_programs()
    viewer = ["--novnc_dir", novnc] if novnc is not None else []
    return gateway(gateway_args(tmp_path, "--local_session", "envision", str(count),
                                "--vnc_port_base", str(envision_ports(count)), "--envision_executable",
                                str(envision_executable(tmp_path)), *viewer, *options, config=None), http=True)


# --- what a test looks at ------------------------------------------------------------------


def page_url(gw, page):
    return f"{gw.http_url}/ansys/nexus/{page}"


def wait_gone(display, timeout=10):
    wait_until(lambda: not processes_with(f":{display}"), timeout, f"the processes of display :{display} to end")


def fetch(page, path, accept=None):
    """GET C{path} from C{page}, as its own scripts would (its user's headers): C{(status, text)}."""
    return page.evaluate("""async ([path, accept]) => {
        const answer = await fetch(path, { cache: 'no-store', headers: accept ? { Accept: accept } : {} });
        if (!accept) return [answer.status, await answer.text()];
        const reader = answer.body.getReader();
        const first = await reader.read();  // a stream's first chunk (or a refusal's whole answer)
        reader.cancel();
        return [answer.status, new TextDecoder().decode(first.value || new Uint8Array())];
    }""", [path, accept])


def keep(page, artifacts, name):
    """A screenshot in tests/.artifacts/, and in docs/ when NEXUSWS_DOCS_SCREENSHOTS=1."""
    path = screenshot(page, artifacts, name)
    if os.environ.get("NEXUSWS_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / f"{name}.png")
    return path
