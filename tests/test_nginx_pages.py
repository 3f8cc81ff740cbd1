"""nexusws's pages at a path prefix behind a real nginx: config/nginx/prefix-locations.conf.

The site (L{support.nginx_pages}) serves things of its own and includes the shipped file
verbatim, nexusws at /nexus/; users sign in to nginx with HTTP Basic, and nginx names them
to the gateway. In headless Chromium: the session portal launches the real desktop
(Xvfb + x11vnc) in the viewer, whose WebSocket goes through nginx at /nexus/ws/, and so
does the test page; the dashboard shows sessions live to an administrator and is refused
to anyone else; the landing page's WebSocket client connects through nginx; and
/nexus/v1/stop never reaches the gateway. Every request the pages make stays below /nexus/.
"""

import json
import re
import urllib.parse

import pytest
from websockets.sync.client import connect as ws_connect

from support.browser import novnc_fixture, wait_for_desktop  # noqa: F401 (the fixture novnc)
from support.nginx_pages import (  # noqa: F401 (the fixtures browser and prefix_front)
    GREETING,
    OTHER_PREFIX,
    PASSWORDS,
    PREFIX,
    SERVICE,
    basic,
    browser_fixture,
    prefix_front_fixture,
)
from support.waiting import wait_until

#: Every test: npm's noVNC 1.7 under the viewer.
pytestmark = pytest.mark.parametrize("novnc", ["1.7"], indirect=True)

#: A row of a page's table: its data-state (None: no such row).
ROW_STATE = """([table, attr, value]) => {
    const tr = document.querySelector(`#${table} tbody tr[data-${attr}='${value}']`);
    return tr ? tr.dataset.state : null;
}"""


def row_state(page, table, attr, value):
    return page.evaluate(ROW_STATE, [table, attr, value])


def outside_the_prefix(signed):
    """What the pages asked for outside nexusws's prefix (the rest of the site answers it)."""
    return [target for target in signed.requests if not target.startswith(PREFIX)]


def test_the_portal_and_the_test_page_launch_the_desktop_through_the_prefix(prefix_front, browser):
    front, alice = prefix_front, browser("alice")
    portal, answer = alice.open(front.url("ansys/nexus/sessions/"))
    assert answer.status == 200
    portal.wait_for_function("() => document.documentElement.dataset.state === 'ready'")
    assert portal.locator("#who").inner_text() == "Signed in as alice"
    assert portal.locator("#admin-link").is_visible(), "alice administers"
    card = portal.locator(".card", has_text=SERVICE)
    assert "1 of 1 free" in card.inner_text()

    with alice.context.expect_page() as opened:
        card.locator(f"button[data-service='{SERVICE}']").click()
    viewer = opened.value
    viewer.set_viewport_size({"width": 800, "height": 600})
    viewer.wait_for_url(re.compile(re.escape(front.url("ansys/nexus/novnc/vnc_envision.html?"))))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(viewer.url).query)
    token = query["token"][0]
    assert (query["path"], query["api"], query["host"], query["port"]) == (
        ["nexus/ws/"], ["/nexus"], ["127.0.0.1"], [str(front.port)]), query
    wait_for_desktop(viewer)
    # The viewer's WebSocket went through nginx, at the prefix (nexusws ignores the path).
    assert alice.sockets == [f"ws://127.0.0.1:{front.port}/nexus/ws/?token={token}"]
    front.gw.wait_for(r"tunnel open: \S+ /nexus/ws/\?token=\*\*\* -> ")
    # ... its calls too (the start's events, the session's snapshot): /nexus/v1/..., never /v1/...
    calls = [target for target in alice.requests if "/v1/" in target]
    assert {f"/nexus/v1/events/{token}", f"/nexus/v1/session/{token}"} <= set(calls)
    assert all(target.startswith("/nexus/v1/") for target in calls), calls

    assert len(front.desktop_processes()) == 2, "the gateway's Xvfb and x11vnc"

    # My sessions: the session, running; End ends it, and its desktop.
    wait_until(lambda: row_state(portal, "sessions", "token", token) == "active", 10, "the session under My sessions")
    assert alice.streams[0] == "/nexus/v1/sessions"  # the list is live (the viewer follows its events too)
    portal.bring_to_front()  # back to the portal's tab
    portal.locator(f"#sessions tr[data-token='{token}'] button.danger").click()
    wait_until(lambda: not front.desktop_processes(), 15, "the desktop to end")
    wait_until(lambda: row_state(portal, "sessions", "token", token) is None, 10, "the row gone")
    viewer.wait_for_function("() => document.documentElement.dataset.state === 'ended'")

    # The test page's lower panel launches a session at once and views it, through the prefix too.
    page, _ = alice.open(front.url(f"ansys/nexus/test/viewer_test_vnc.html?service={urllib.parse.quote(SERVICE)}"))
    page.wait_for_function("() => document.documentElement.dataset.state === 'ready'")
    frame = page.locator("#lower-view iframe").element_handle().content_frame()
    wait_for_desktop(frame)
    second = urllib.parse.parse_qs(urllib.parse.urlparse(frame.url).query)["token"][0]
    assert alice.sockets[1:] == [f"ws://127.0.0.1:{front.port}/nexus/ws/?token={second}"]
    assert outside_the_prefix(alice) == []
    assert alice.problems() == []


def test_the_dashboard_shows_every_session_live_to_an_administrator(prefix_front, browser):
    front, alice = prefix_front, browser("alice")
    dashboard, answer = alice.open(front.url("ansys/nexus/admin/"))
    assert answer.status == 200
    dashboard.wait_for_function("() => document.documentElement.dataset.state === 'live'")
    assert dashboard.locator("#sessions tbody").inner_text() == "No session."
    assert SERVICE in dashboard.locator("#services tbody").inner_text()

    token = front.reserve("alice")
    status, listing = front.api("admin", "alice")
    assert status == 200 and token not in json.dumps(listing)
    (row,) = listing["sessions"]
    # The page follows its stream (/nexus/v1/admin, through nginx): the row comes by itself.
    wait_until(lambda: row_state(dashboard, "sessions", "id", row["id"]) == "reserved", 10, "the row")
    cells = dashboard.locator(f"#sessions tr[data-id='{row['id']}'] td").all_inner_texts()
    assert cells[1:3] == [f"{SERVICE} #0", "alice"], cells
    dashboard.locator(f"#sessions tr[data-id='{row['id']}'] button.danger").click()  # End
    wait_until(lambda: row_state(dashboard, "sessions", "id", row["id"]) is None, 10, "the row gone")
    front.gw.wait_for(rf"/v1/admin_end: #{row['id']} {re.escape(SERVICE)}#0 by 'alice'")
    assert front.api(f"session/{token}", "alice")[1]["state"] == "released"
    assert f"/nexus/v1/admin_end/{row['id']}" in alice.requests
    # Live: the page's one stream, never polling instead.
    assert (alice.streams, alice.requests.count("/nexus/v1/admin")) == (["/nexus/v1/admin"], 1)
    assert dashboard.locator("#problem").is_hidden()
    assert outside_the_prefix(alice) == []
    assert alice.problems() == []


def test_anyone_else_is_refused_the_dashboard_and_alices_sessions(prefix_front, browser):
    front = prefix_front
    token = front.reserve("alice")
    status, _, body = front.get(f"{PREFIX}ansys/nexus/admin/", "bob")
    assert status == 403 and b"nginx" not in body, "nexusws's refusal, not nginx's"
    assert front.api("admin", "bob")[0] == 403
    status, _, _ = front.get(f"{PREFIX}v1/admin", "bob", headers=[("Accept", "text/event-stream")])
    assert status == 403
    (row,) = front.api("admin", "alice")[1]["sessions"]
    assert front.api(f"admin_end/{row['id']}", "bob")[0] == 403
    assert front.api(f"admin_extend/{row['id']}?seconds=60", "bob")[0] == 403
    status, listing = front.api("sessions", "bob")
    assert (status, listing) == (200, [])
    assert [row["token"] for row in front.api("sessions", "alice")[1]] == [token]
    assert front.api(f"session/{token}", "bob") == (403, {"error": "this token was reserved by another user"})
    assert front.api(f"session/{token}", "alice")[1]["state"] == "reserved", "still alice's, untouched"

    bob = browser("bob")
    portal, _ = bob.open(front.url("ansys/nexus/sessions/"))
    portal.wait_for_function("() => document.documentElement.dataset.state === 'ready'")
    assert portal.locator("#who").inner_text() == "Signed in as bob"
    assert portal.locator("#admin-link").is_hidden()
    portal.wait_for_function("() => document.querySelector('#sessions tbody tr.empty') !== null")
    assert token not in portal.content()
    dashboard, answer = bob.open(front.url("ansys/nexus/admin/"))
    assert answer.status == 403
    assert outside_the_prefix(bob) == []
    assert bob.problems() == []


def test_the_landing_pages_websocket_client_connects_through_nginx(prefix_front, browser):
    front, alice = prefix_front, browser("alice")
    page, _ = alice.open(front.url("ansys/nexus/"), awaited=lambda r: r.url.endswith("/nexus/v1/services"))
    page.wait_for_load_state()
    # Through a proxy: the same origin, at the prefix's ws/.
    assert front.api("services", "alice")[1]["websocket"] == {"url": None, "port": None, "secure": False,
                                                              "proxied": True}
    assert page.locator("#url").input_value() == f"ws://127.0.0.1:{front.port}/nexus/ws/"
    links = {link: page.eval_on_selector(f"#{link}", "a => a.href")
             for link in ("portal-link", "admin-link", "status-link", "test-link", "api-link")}
    assert links == {"portal-link": front.url("ansys/nexus/sessions/"), "admin-link": front.url("ansys/nexus/admin/"),
                     "status-link": front.url("v1/status_view"),
                     "test-link": front.url("ansys/nexus/test/viewer_test_vnc.html"), "api-link": front.url("v1/status")}
    for url in links.values():
        assert front.get(url.removeprefix(front.origin), "alice")[0] == 200, url

    page.click("#connect")  # no token: basic mode's backend, through nginx's /nexus/ws/
    page.wait_for_function("() => document.getElementById('state').textContent === 'open'")
    page.wait_for_function(f"() => document.getElementById('log').textContent.includes('text: {GREETING}.')")
    page.fill("#text", "through the prefix")
    page.click("#send")
    page.wait_for_function("() => document.getElementById('log').textContent.includes('text: through the prefix')")
    front.gw.wait_for(r"tunnel open: \S+ /nexus/ws/ -> 127\.0\.0\.1:\d+")
    assert alice.sockets == [f"ws://127.0.0.1:{front.port}/nexus/ws/"]
    page.click("#disconnect")
    page.wait_for_function("() => document.getElementById('state').textContent === 'closed'")

    # noVNC's default path, below the prefix (Playwright runs a loop here: a sync client).
    with ws_connect(f"ws://127.0.0.1:{front.port}/nexus/websockify", subprotocols=["binary"], open_timeout=10,
                    additional_headers=[("Authorization", basic("alice", PASSWORDS["alice"]))]) as ws:
        assert ws.recv(timeout=10).decode().strip() == GREETING
    assert outside_the_prefix(alice) == []
    assert alice.problems() == []


@pytest.mark.parametrize("prefix", [PREFIX, OTHER_PREFIX])
def test_stop_is_refused_by_nginx_and_the_rest_of_the_site_is_left_alone(prefix_front, prefix):
    front = prefix_front
    for target in ("v1/stop", "v1/stop/", "v1//stop", "v1/%73top", "v1/./stop", "v1/stop?security_token=x"):
        status, _, body = front.get(prefix + target, "alice")
        assert status == 403 and b"nginx" in body, target
    assert front.gw.proc.poll() is None
    assert front.get(prefix + "v1/services", "alice")[0] == 200
    assert not [line for line in front.http_lines() if "stop" in line], "nothing reached the gateway"

    # The prefix without its slash, and nexusws's own redirects, stay below the prefix.
    # (nginx puts its scheme, host and port in front of a redirect that has none.)
    status, headers, _ = front.get(prefix.rstrip("/"))
    assert (status, headers["location"]) == (301, front.origin + prefix)
    status, headers, _ = front.get(f"{prefix}ansys/nexus", "alice")
    assert (status, headers["location"]) == (302, f"{front.origin}{prefix}ansys/nexus/")
    # The site's own regular-expression location does not take nexusws's scripts.
    status, headers, body = front.get(f"{prefix}ansys/nexus/js/places.js", "alice")
    assert status == 200 and b"export function gatewayRoot" in body
    # ... nor nexusws the site's own things: its /, its files, a /v1/ of its own.
    assert front.get("/")[2] == b"the rest of the site\n"
    assert front.get("/v1/status")[2] == b"the rest of the site\n"
    assert front.get("/site.js")[2] == b"// the site's own\n"
    assert front.get(prefix + "v1/status")[0] == 401, "nexusws's places need a user"
