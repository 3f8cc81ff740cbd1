"""The viewer page over a session's life, in headless Chromium: the shipped desktop script
(real Xvfb + x11vnc) through a real gateway, our vnc_envision.html over npm's noVNC 1.7
(and Debian's 1.3 for the reconnecting tests).

What the page does with the session's events (/v1/events/{token}): the start's progress
overlay, re-attaching after a reload or a dropped connection within the grace, the idle
and time warnings with their buttons, and why the session ended. Screenshots go to
tests/.artifacts/ (docs/viewer-progress.png and docs/viewer-idle-warning.png are copies).
"""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import ROOT, require
from support.browser import (  # noqa: F401 (the fixtures chromium and novnc)
    CORNERS,
    LOOPBACK,
    RECORD_CLOSES,
    CutProxy,
    chromium_fixture,
    novnc_fixture,
    screenshot,
    viewer_url,
    wait_for_desktop,
    www,
)
from support.desktop import COLOUR, free_display, processes_with, xvfb_of
from support.sessions import get, reserve
from support.sessions import session_snapshot as session
from support.sse import events_of
from support.waiting import wait_until

SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
SERVICE = "Local Software Session"
PASSWORD = "veronica"
#: The colour the idle test paints the desktop with, now and then, beside COLOUR.
OTHER = "#a5503a"


#: Most tests use one noVNC, npm's 1.7 (the page is the same over 1.3); the reconnecting ones use both.
NOVNC_17 = pytest.mark.parametrize("novnc", ["1.7"], indirect=True)


@pytest.fixture
def desktops(gateway, tmp_path):
    """Start a gateway serving one desktop (800x600, COLOUR) over noVNC tree C{novnc} with
    C{desktops(novnc, *options, xvfb=None)}; its C{display} is the desktop's X display number."""
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")

    def start(novnc, *options, xvfb=None):
        display = free_display(count=1)
        service = {"sizes": ["800x600"], "display_base": display, "background": COLOUR}
        if xvfb is not None:
            service["xvfb"] = str(xvfb)
        config = tmp_path / "desktops.json"
        config.write_text(json.dumps({SERVICE: {"script": str(SCRIPT), "count": 1, "options": service}}))
        gw = gateway(["--remote_session_config", str(config), "--state_file", str(tmp_path / "state.json"),
                      "--http_directory", www(tmp_path), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                      "--novnc_dir", novnc, *options], http=True)
        gw.display = display
        return gw

    return start


def open_viewer(chromium, gw, token, port=None, **query):
    """The viewer for C{token}, as Nexus opens it; its WebSockets' close codes are recorded."""
    chromium.context.add_init_script(RECORD_CLOSES)
    page = chromium(viewer_url(gw, "vnc_envision.html", path="websockify", token=token, session_name="Desktop",
                               autoconnect="true", host="127.0.0.1",
                               port=port or gw.ws_url.rsplit(":", 1)[1], password=PASSWORD, **query))
    page.set_viewport_size({"width": 800, "height": 600})
    return page


def state_of(page):
    return page.evaluate("[document.documentElement.dataset.state, document.documentElement.dataset.session]")


def seconds_in(text):
    m = re.search(r"ends in (\d+) s", text)
    assert m, text
    return int(m.group(1))


def wait_gone(display, timeout):
    wait_until(lambda: not processes_with(f":{display}"), timeout, f"the processes of display :{display} to end")


def assert_clean(chromium, token):
    """No uncaught error in the pages; on their consoles, no error but the browser's own about
    an answer's status (the gateway's favicon.ico 404, a refused call), and never the token."""
    assert chromium.errors == []
    assert [text for kind, text in chromium.console
            if kind == "error" and not text.startswith("Failed to load resource: the server responded")] == []
    assert not [text for _, text in chromium.console if token in text]


def counted(gw, pattern):
    return len(re.findall(pattern, gw.log))


def test_a_reload_reattaches_to_the_same_desktop_and_a_closed_tab_ends_after_the_grace(
        desktops, chromium, novnc):
    gw = desktops(novnc, "--reconnect_grace", "3")
    token = reserve(gw, SERVICE, password=PASSWORD)
    calls = []
    chromium.context.on("request", lambda r: calls.append((r.url, r.headers.get("referer")))
                        if "/v1/" in r.url else None)
    page = open_viewer(chromium, gw, token)
    wait_for_desktop(page)
    assert page.locator("#progress").is_hidden()
    (xvfb,) = xvfb_of(gw.display)

    page.reload()
    wait_for_desktop(page)
    page.wait_for_function("() => document.documentElement.dataset.session === 'reattached'")
    assert xvfb_of(gw.display) == [xvfb], "the same X server"
    assert counted(gw, r"#0: reserved -> starting") == 1, "launched once"
    assert counted(gw, r"\] Xvfb \(pid \d+\) started") == 1
    assert counted(gw, r"#0: detached -> active \(re-attached\)") == 1
    assert page.locator("#progress").is_hidden()

    page.close()  # its WebSocket goes with it; the desktop waits out the grace
    wait_until(lambda: session(gw, token)["state"] == "detached", 5, "the session detached")
    assert xvfb_of(gw.display) == [xvfb]
    wait_gone(gw.display, 3 + 10)
    ending = [e for e in events_of(gw, token) if e["event"] == "ending"]
    assert [e["reason"] for e in ending] == ["grace_expired"]
    assert session(gw, token)["state"] == "released"
    # The page's calls send no Referer (its query holds the token and the password).
    assert len(calls) >= 2 and all(not referer for _, referer in calls), calls  # before and after the reload
    assert token not in gw.log
    assert_clean(chromium, token)


def test_a_dropped_connection_reconnects_by_itself_to_the_same_desktop(desktops, chromium, novnc):
    gw = desktops(novnc, "--reconnect_grace", "20")
    token = reserve(gw, SERVICE, password=PASSWORD)
    with CutProxy("127.0.0.1", int(gw.ws_url.rsplit(":", 1)[1])) as proxy:
        page = open_viewer(chromium, gw, token, port=proxy.port)
        wait_for_desktop(page)
        (xvfb,) = xvfb_of(gw.display)
        proxy.cut()  # as a network change does: no close frame either way
        page.wait_for_function("() => document.documentElement.dataset.state === 'reconnecting'")
        assert re.fullmatch(r"The connection was lost\. Reconnecting in \d+ s\u2026",
                            page.locator("#status").inner_text())
        wait_for_desktop(page)
        page.wait_for_function("() => document.documentElement.dataset.session === 'reattached'")
        assert xvfb_of(gw.display) == [xvfb]
        assert counted(gw, r"#0: reserved -> starting") == 1
        assert page.evaluate("window.__closes") == [1006]
        assert proxy.accepted == 2
    assert_clean(chromium, token)


@NOVNC_17
def test_a_session_taken_over_elsewhere_is_not_taken_back(desktops, chromium, novnc):
    gw = desktops(novnc, "--reconnect_grace", "20")
    token = reserve(gw, SERVICE, password=PASSWORD)
    page = open_viewer(chromium, gw, token)
    wait_for_desktop(page)

    # Playwright's sync API runs an event loop in this thread: a sync WebSocket client.
    with ws_connect(f"{gw.ws_url}/websockify?token={token}&takeover=1", subprotocols=["binary"],
                    open_timeout=15) as ws:
        assert ws.recv(timeout=10).startswith(b"RFB 003.")
        page.wait_for_function("() => window.__closes.length === 1")
        page.wait_for_timeout(5000)  # the page does not take it back meanwhile
        assert state_of(page) == ["disconnected", "attached"]
        assert session(gw, token)["state"] == "active"
    page.wait_for_function("() => document.documentElement.dataset.session === 'detached'")
    assert state_of(page) == ["disconnected", "detached"]
    assert page.locator("#status").inner_text() == "Another window took this session over"
    assert page.evaluate("window.__closes") == [4001]
    assert counted(gw, r"taken over by a new WebSocket") == 1
    page.click("#connect")  # the user takes it back
    wait_for_desktop(page)
    assert counted(gw, r"taken over by a new WebSocket") == 1, "reattached: the other one had gone"
    assert_clean(chromium, token)


class Painter:
    """Paints the session's desktop OTHER and COLOUR in turn, with the session's own X cookie."""

    def __init__(self, display):
        (vnc,) = [pid for pid in processes_with(f":{display}") if pid not in xvfb_of(display)]
        with open(f"/proc/{vnc}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        self.display, self.auth, self.turn = display, argv[argv.index("-auth") + 1], 0

    def paint(self):
        self.turn += 1
        subprocess.run(["xsetroot", "-display", f":{self.display}", "-solid", (OTHER, COLOUR)[self.turn % 2]],
                       env={**os.environ, "XAUTHORITY": self.auth}, check=True, timeout=10)


@NOVNC_17
def test_an_idle_session_is_warned_then_ended_though_its_screen_changes(desktops, chromium, novnc, artifacts):
    gw = desktops(novnc, "--reconnect_grace", "30", "--idle_timeout", "8", "--idle_warning", "4")
    token = reserve(gw, SERVICE, password=PASSWORD)
    page = open_viewer(chromium, gw, token)
    wait_for_desktop(page)
    painter, colours, countdown = Painter(gw.display), set(), []
    warning = page.locator("#warning")
    while state_of(page)[0] == "connected":  # the screen changes; nobody touches anything
        painter.paint()
        page.wait_for_timeout(300)
        corners = page.evaluate(CORNERS)  # none once the session has ended
        colours.update(tuple(corner) for corner in corners or ())
        if warning.is_visible():
            text = page.locator("#warning-text").inner_text()
            assert text.startswith("No activity: this session ends in ")
            countdown.append(seconds_in(text))
            assert page.locator("#still-here").is_visible() and page.locator("#extend").is_hidden()
            if len(countdown) == 4:
                screenshot(page, artifacts, "viewer-idle-warning")
    assert colours >= {(0x3A, 0x6E, 0xA5), (0xA5, 0x50, 0x3A)}, "the canvas kept receiving updates"
    assert countdown and countdown[0] <= 4 and countdown[-1] < countdown[0], countdown
    page.wait_for_function("() => document.documentElement.dataset.state === 'ended'")
    assert page.locator("#status").inner_text() == "Session ended: idle"
    assert warning.is_hidden()
    page.wait_for_function("() => window.__closes.length === 1")
    assert page.evaluate("window.__closes") == [4002]
    assert [e["reason"] for e in events_of(gw, token) if e["event"] == "ending"] == ["idle"]
    assert session(gw, token)["state"] == "released"
    page.wait_for_timeout(1500)
    assert state_of(page) == ["ended", "ended"], "no reconnect"
    wait_gone(gw.display, 10)
    assert_clean(chromium, token)


@NOVNC_17
def test_mouse_moves_keep_a_session_alive_and_im_still_here_clears_the_warning(desktops, chromium, novnc):
    gw = desktops(novnc, "--reconnect_grace", "30", "--idle_timeout", "8", "--idle_warning", "4")
    token = reserve(gw, SERVICE, password=PASSWORD)
    page = open_viewer(chromium, gw, token)
    wait_for_desktop(page)
    box = page.locator("#screen canvas").bounding_box()
    for i in range(11):  # 11 s, past the idle timeout
        page.mouse.move(box["x"] + 100 + 20 * (i % 2), box["y"] + 300)
        page.wait_for_timeout(1000)
        assert page.locator("#warning").is_hidden(), f"warned after {i + 1} s of mouse moves"
    assert state_of(page)[0] == "connected"
    assert session(gw, token)["state"] == "active"

    page.locator("#warning").wait_for(state="visible", timeout=8000)  # the mouse rests
    warned = time.monotonic()
    page.click("#still-here")
    page.locator("#warning").wait_for(state="hidden", timeout=3000)
    assert state_of(page) == ["connected", "active"]
    page.wait_for_timeout(max(0, 4 + 1 - (time.monotonic() - warned)) * 1000)  # past the warned end
    assert state_of(page)[0] == "connected"
    assert session(gw, token)["state"] == "active"

    assert get(f"{gw.http_url}/v1/release/{urllib.parse.quote(token)}")[0] == 200
    page.wait_for_function("() => document.documentElement.dataset.state === 'ended'")
    assert page.locator("#status").inner_text() == "Session ended: released"
    events = events_of(gw, token)
    assert [e.get("by") for e in events if e["event"] == "active"] == ["touch"]
    assert [e["reason"] for e in events if e["event"] == "ending"] == ["released"]
    wait_gone(gw.display, 10)
    assert_clean(chromium, token)


@NOVNC_17
def test_a_time_limit_warns_is_extended_once_then_ends(desktops, chromium, novnc):
    gw = desktops(novnc, "--reconnect_grace", "30", "--max_duration", "12", "--time_warning", "6",
                  "--max_extend", "6")
    token = reserve(gw, SERVICE, password=PASSWORD)
    page = open_viewer(chromium, gw, token, extend="4")
    wait_for_desktop(page)
    active = time.monotonic()
    warning, text = page.locator("#warning"), page.locator("#warning-text")

    warning.wait_for(state="visible", timeout=12000)
    assert text.inner_text().startswith("This session's time ends in ")
    first = seconds_in(text.inner_text())
    assert first <= 6
    page.wait_for_timeout(1300)
    assert seconds_in(text.inner_text()) < first, "it counts down"
    assert page.locator("#extend").is_visible() and page.locator("#still-here").is_hidden()
    page.click("#extend")  # 4 s more: max_extend allows 6 in all
    warning.wait_for(state="hidden", timeout=3000)
    assert state_of(page) == ["connected", "extended"]

    warning.wait_for(state="visible", timeout=8000)  # 6 s before the new limit
    page.wait_for_timeout(max(0, 12.5 - (time.monotonic() - active)) * 1000)
    assert state_of(page)[0] == "connected", "it outlived its first limit"
    page.click("#extend")  # 4 more would be 8 in all
    error = page.locator("#warning-error")
    error.wait_for(state="visible", timeout=3000)
    assert error.inner_text() == "extending by 4 s is beyond max_extend (6 s in all; 2 s left to extend)"
    assert warning.is_visible()

    page.wait_for_function("() => document.documentElement.dataset.state === 'ended'", timeout=10000)
    assert page.locator("#status").inner_text() == "Session ended: time limit reached"
    assert warning.is_hidden()
    page.wait_for_function("() => window.__closes.length === 1")
    assert page.evaluate("window.__closes") == [4003]
    events = events_of(gw, token)
    assert [(e["event"], e.get("seconds")) for e in events if e["event"] in ("extended", "time_warning")][:2] == [
        ("time_warning", None), ("extended", 4)]
    assert [e["reason"] for e in events if e["event"] == "ending"] == ["max_duration"]
    wait_gone(gw.display, 10)
    assert_clean(chromium, token)


@NOVNC_17
def test_the_progress_overlay_shows_the_steps_of_a_slow_start(desktops, chromium, novnc, tmp_path, artifacts):
    slow = tmp_path / "slow-xvfb"
    slow.write_text(f"#!/bin/sh\nsleep 2.5\nexec {shutil.which('Xvfb')} \"$@\"\n")
    slow.chmod(0o755)
    gw = desktops(novnc, "--reconnect_grace", "0", xvfb=slow)
    token = reserve(gw, SERVICE, password=PASSWORD)
    page = open_viewer(chromium, gw, token)
    overlay, steps = page.locator("#progress"), page.locator("#progress-steps li")
    overlay.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#progress-steps').textContent.includes('X server')")
    assert steps.all_inner_texts() == ["Starting the session", f"starting the X server :{gw.display} (800x600)"]
    assert page.locator("#progress-title").inner_text() == "Starting Desktop\u2026"
    elapsed = page.locator("#progress-elapsed")
    first = elapsed.inner_text()
    page.wait_for_function(f"() => document.querySelector('#progress-elapsed').textContent !== '{first}'")
    assert re.fullmatch(r"\d+ s", elapsed.inner_text()) and int(elapsed.inner_text()[:-2]) > int(first[:-2])
    screenshot(page, artifacts, "viewer-progress")

    wait_for_desktop(page)
    assert overlay.is_hidden()
    assert get(f"{gw.http_url}/v1/release/{urllib.parse.quote(token)}")[0] == 200
    progress = [e["text"] for e in events_of(gw, token) if e["event"] == "progress"]
    assert progress == [f"starting the X server :{gw.display} (800x600)", "painting the desktop's background",
                        "starting the VNC server", "waiting for the VNC server to listen"]
    wait_gone(gw.display, 10)
    assert_clean(chromium, token)
