"""The session portal, the admin dashboard and the reference's test page (issue 17), in headless
Chromium against real gateways: the shipped desktop script (Xvfb + x11vnc) behind the portal and
the dashboard, EnVision's stand-in (tests/services/fake_envision.py) behind the test page, and
npm's noVNC 1.7 in the viewer they open.

A user launches a desktop from the portal, finds it under "My sessions", leaves it, reconnects and
ends it; an administrator watches its traffic on the dashboard, extends it and ends it; a user
who is no administrator gets 403 for the dashboard and never sees another user's token; the test
page shows two desktops. Screenshots go to tests/.artifacts/ (and to docs/ with
NEXUSWS_DOCS_SCREENSHOTS=1: docs/portal.png, dashboard.png, viewer-test.png, desktop-session.png).
"""

import json
import urllib.parse

import pytest

from support.browser import (  # noqa: F401 (the fixture novnc)
    novnc_fixture,
    wait_for_desktop,
)
from support.desktop import xvfb_of
from support.envision import desktops_below
from support.portal import (  # noqa: F401 (the fixture browser)
    SERVICE,
    browser_fixture,
    desktop_gateway,
    envision_gateway,
    fetch,
    keep,
    page_url,
    slow_xvfb,
    wait_gone,
)
from support.sessions import get, instances
from support.sse import events_of
from support.waiting import wait_until

#: The viewer runs on npm's noVNC 1.7 (the viewer's own tests cover 1.3 too).
NOVNC_17 = pytest.mark.parametrize("novnc", ["1.7"], indirect=True)
ROWS = "#sessions tbody tr[data-token]"
ADMIN_ROWS = "#sessions tbody tr[data-id]"


def row_of(page, token):
    return page.locator(f'{ROWS}[data-token="{token}"]')


def wait_state(page, selector, state):
    page.locator(f'{selector}[data-state="{state}"]').wait_for()


def launch(context, portal, service=SERVICE):
    """Click the service's Launch on the portal: the viewer's new tab, once it shows the viewer."""
    with context.expect_page() as opened:
        portal.locator(f'button[data-service="{service}"]').click()
    viewer = opened.value
    viewer.wait_for_url("**/novnc/vnc_envision.html?**")
    return viewer


def viewer_state(page):
    return page.evaluate("[document.documentElement.dataset.state, document.documentElement.dataset.session]")


@NOVNC_17
def test_a_user_launches_a_desktop_finds_it_reconnects_and_ends_it_from_the_portal(
        gateway, browser, novnc, tmp_path, artifacts):
    gw = desktop_gateway(gateway, tmp_path, novnc=novnc, xvfb=slow_xvfb(tmp_path, 1.5))
    context = browser.context()
    portal = browser.open(context, page_url(gw, "sessions/"))
    card = portal.locator("#services .card")
    card.wait_for()
    assert card.locator("h3").inner_text() == SERVICE
    assert "1 of 1 free" in card.locator(".facts").inner_text()
    assert portal.locator("#who").inner_text() == "Anonymous"
    assert portal.locator("#admin-link").is_visible(), "the direct local user is the operator"

    viewer = launch(context, portal)
    # The start's progress, then the desktop.
    progress = viewer.locator("#progress")
    progress.wait_for(state="visible")
    viewer.wait_for_function("() => document.querySelector('#progress-steps').textContent.includes('X server')")
    assert viewer.locator("#progress-title").inner_text() == f"Starting {SERVICE}\u2026"
    wait_for_desktop(viewer)
    assert progress.is_hidden()
    assert viewer.locator("#status").inner_text() == f"Connected to {SERVICE}"
    keep(viewer, artifacts, "desktop-session")
    (xvfb,) = xvfb_of(gw.display)

    # My sessions: the one running, with the token the page keeps.
    wait_state(portal, ROWS, "active")
    rows = portal.locator(ROWS)
    assert rows.count() == 1
    token = rows.get_attribute("data-token")
    assert json.loads(portal.evaluate("localStorage.getItem('nexusws.portal.tokens')")) == {token: SERVICE}
    assert rows.locator("td").nth(1).inner_text() == "running"
    assert rows.locator("td").nth(2).inner_text() == "this gateway"
    assert portal.locator("#sessions tbody tr").count() == 1
    assert card.locator(".facts").inner_text().startswith("0 of 1 free")
    assert portal.locator(f'button[data-service="{SERVICE}"]').is_disabled()
    keep(portal, artifacts, "portal")

    viewer.close()  # its WebSocket goes with it: the desktop waits 60 s (the service's grace)
    wait_state(portal, ROWS, "detached")
    assert row_of(portal, token).locator("td").nth(1).inner_text().startswith("detached: ")
    assert xvfb_of(gw.display) == [xvfb]

    with context.expect_page() as opened:
        row_of(portal, token).get_by_role("button", name="Reconnect").click()
    again = opened.value
    wait_for_desktop(again)
    again.wait_for_function("() => document.documentElement.dataset.session === 'reattached'")
    assert xvfb_of(gw.display) == [xvfb], "the same desktop"
    wait_state(portal, ROWS, "active")

    row_of(portal, token).get_by_role("button", name="End", exact=True).click()
    portal.locator("#sessions tbody tr.empty").wait_for()
    assert portal.locator("#sessions tbody").inner_text() == "You have no session running."
    again.wait_for_function("() => document.documentElement.dataset.state === 'ended'")
    assert again.locator("#status").inner_text() == "Session ended: released"
    wait_until(lambda: instances(gw, SERVICE) == [], 10, "no instance in /v1/status")
    wait_gone(gw.display)
    assert json.loads(portal.evaluate("localStorage.getItem('nexusws.portal.tokens')")) == {}
    assert [e["reason"] for e in events_of(gw, token) if e["event"] == "ending"] == ["released"]
    assert token not in gw.log
    browser.assert_clean(token)


@NOVNC_17
def test_an_administrator_watches_a_sessions_traffic_extends_it_and_ends_it_from_the_dashboard(
        gateway, browser, novnc, tmp_path, artifacts):
    gw = desktop_gateway(gateway, tmp_path, novnc=novnc)
    context = browser.context()  # the direct local browser, no security token: an administrator
    portal = browser.open(context, page_url(gw, "sessions/"))
    viewer = launch(context, portal)
    wait_for_desktop(viewer)
    token = portal.locator(ROWS).get_attribute("data-token")

    dashboard = browser.open(context, page_url(gw, "admin/"))
    assert dashboard.status == 200
    wait_state(dashboard, ADMIN_ROWS, "active")
    row = dashboard.locator(ADMIN_ROWS)
    assert row.count() == 1
    session_id = row.get_attribute("data-id")
    cells = row.locator("td")
    assert [cells.nth(i).inner_text() for i in (0, 1, 2, 3, 4, 5, 13)] == [
        f"#{session_id}", f"{SERVICE} #0", "anonymous", "127.0.0.1", "this gateway", "running", "1"]
    assert token not in dashboard.content()

    # The mouse moves over the desktop: the pointer's events go up, the cursor's frames come
    # down, and the dashboard's next snapshots count them.
    box, first = viewer.locator("#screen canvas").bounding_box(), int(row.get_attribute("data-bytes-down"))
    assert first > 0, "the desktop's first frame"
    for i in range(2):
        seen = int(row.get_attribute("data-bytes-down"))
        viewer.mouse.move(box["x"] + 100 + 50 * i, box["y"] + 100 + 30 * i)
        dashboard.wait_for_function(f"(n) => +document.querySelector('{ADMIN_ROWS}').dataset.bytesDown > n",
                                    arg=seen, polling=100)
    assert int(row.get_attribute("data-bytes-down")) > first
    assert int(row.get_attribute("data-bytes-up")) > 0
    assert cells.nth(11).inner_text().endswith("B") and cells.nth(12).inner_text().endswith("B/s")
    keep(dashboard, artifacts, "dashboard")

    # Extend: 15 min more, beyond the service's max_extend of 10 min (an administrator's).
    left = get(f"{gw.http_url}/v1/admin")[1]["sessions"][0]["time_left"]
    assert 500 < left <= 600
    row.get_by_role("button", name="Extend").click()
    wait_until(lambda: get(f"{gw.http_url}/v1/admin")[1]["sessions"][0]["time_left"] > 1400, 10,
               "the time limit 15 min later")
    dashboard.wait_for_function(f"() => document.querySelectorAll('{ADMIN_ROWS} td')[9].textContent.startsWith('2')")
    assert dashboard.locator("#problem").is_hidden()

    row.get_by_role("button", name="End", exact=True).click()
    viewer.wait_for_function("() => document.documentElement.dataset.state === 'ended'")
    assert viewer.locator("#status").inner_text() == "Session ended: ended by an administrator"
    viewer.wait_for_function("() => window.__closes.length === 1")
    assert viewer.evaluate("window.__closes") == [4004]
    dashboard.locator("#sessions tbody tr.empty").wait_for()
    assert dashboard.locator(ADMIN_ROWS).count() == 0
    assert dashboard.locator("#problem").is_hidden()
    portal.locator("#sessions tbody tr.empty").wait_for()
    events = events_of(gw, token)
    assert [e["event"] for e in events].count("extended") == 1
    assert [e["reason"] for e in events if e["event"] == "ending"] == ["admin"]
    wait_gone(gw.display)
    viewer.wait_for_timeout(1500)
    assert viewer_state(viewer) == ["ended", "ended"], "no reconnect"
    browser.assert_clean(token)


def test_the_dashboard_is_for_administrators_and_a_user_sees_only_their_own_sessions(gateway, browser, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"admins": ["alice"]}))
    gw = desktop_gateway(gateway, tmp_path, "--groups_file", str(groups), "--admin_group", "admins",
                         "--allow_remote_api", count=2)  # users behind the (loopback) proxy reserve

    def as_user(user, call):
        status, body = get(f"{gw.http_url}/v1/{call}", {"X-Remote-User": user})
        assert status == 200, (status, body)
        return body

    bobs = as_user("bob", f"reserve/{urllib.parse.quote(SERVICE)}")["token"]
    alices = as_user("alice", f"reserve/{urllib.parse.quote(SERVICE)}")["token"]

    # Alice is an administrator: the dashboard shows both sessions, without their tokens.
    alice = browser.context("alice")
    dashboard = browser.open(alice, page_url(gw, "admin/"))
    assert dashboard.status == 200
    dashboard.wait_for_function(f"() => document.querySelectorAll('{ADMIN_ROWS}').length === 2")
    ids = {row.locator("td").nth(2).inner_text(): row.get_attribute("data-id")
           for row in dashboard.locator(ADMIN_ROWS).all()}
    assert sorted(ids) == ["alice", "bob"]
    assert bobs not in dashboard.content() and alices not in dashboard.content()

    # Bob is not: his portal lists his session only, and the dashboard and its calls are refused.
    bob = browser.context("bob")
    portal = browser.open(bob, page_url(gw, "sessions/"))
    row_of(portal, bobs).wait_for()
    assert portal.locator("#who").inner_text() == "Signed in as bob"
    assert portal.locator("#admin-link").is_hidden()
    assert portal.locator(ROWS).count() == 1
    assert alices not in portal.content()
    status, text = fetch(portal, "/v1/sessions")
    assert status == 200 and [row["token"] for row in json.loads(text)] == [bobs]
    status, text = fetch(portal, "/v1/sessions", "text/event-stream")
    assert status == 200 and "event: snapshot" in text and bobs in text and alices not in text
    status, text = fetch(portal, f"/v1/session/{alices}")
    assert status == 403 and alices not in text
    page = browser.open(bob, page_url(gw, "admin/"))
    assert page.status == 403 and "for administrators" in page.inner_text("body")
    assert browser.open(bob, page_url(gw, "admin/index.html")).status == 403
    status, text = fetch(portal, "/v1/admin")
    assert (status, json.loads(text)) == (403, {"error": "/v1/admin is for administrators (--admin_group)"})
    assert fetch(portal, "/v1/admin", "text/event-stream")[0] == 403
    assert fetch(portal, f"/v1/admin_end/{ids['alice']}")[0] == 403
    assert fetch(portal, f"/v1/admin_extend/{ids['alice']}?seconds=900")[0] == 403
    assert sorted(i["state"] for i in instances(gw, SERVICE)) == ["reserved", "reserved"], "nothing ended"

    # Alice's portal shows hers and the dashboard's link; her End on the dashboard ends bob's.
    hers = browser.open(alice, page_url(gw, "sessions/"))
    row_of(hers, alices).wait_for()
    assert hers.locator(ROWS).count() == 1 and bobs not in hers.content()
    assert hers.locator("#admin-link").is_visible() and hers.locator("#who").inner_text() == "Signed in as alice"
    dashboard.locator(f'{ADMIN_ROWS}[data-id="{ids["bob"]}"]').get_by_role("button", name="End", exact=True).click()
    portal.locator("#sessions tbody tr.empty").wait_for()
    dashboard.locator(f'{ADMIN_ROWS}[data-id="{ids["bob"]}"]').wait_for(state="detached")
    assert dashboard.locator(ADMIN_ROWS).count() == 1 and dashboard.locator("#problem").is_hidden()
    as_user("alice", f"release/{alices}")
    dashboard.locator("#sessions tbody tr.empty").wait_for()
    assert portal.locator(ROWS).count() == 0 and alices not in portal.content()
    browser.assert_clean(bobs, alices)


@NOVNC_17
def test_the_test_page_shows_a_desktop_below_and_another_once_the_proxy_image_is_clicked(
        gateway, browser, novnc, tmp_path, artifacts):
    gw = envision_gateway(gateway, tmp_path, 2, "--reconnect_grace", "30", novnc=novnc)
    context = browser.context()

    # The landing page's WebSocket client points at this gateway's listener.
    landing = browser.open(context, page_url(gw, ""))
    landing.wait_for_function("(url) => document.querySelector('#url').value === url", arg=f"{gw.ws_url}/websockify")
    for link in ("portal-link", "admin-link", "test-link"):
        assert landing.locator(f"#{link}").is_visible()

    page = browser.open(context, page_url(gw, "test/viewer_test_vnc.html"))
    lower = page.locator("#lower-view iframe")
    lower.wait_for()
    frame = lower.element_handle().content_frame()
    frame.wait_for_url("**/novnc/vnc_envision.html?**")
    wait_for_desktop(frame)
    assert page.locator("#lower-state").inner_text() == "envision #0"
    assert page.locator("#upper-state").inner_text() == "not started"

    page.click("#proxy")
    upper = page.locator("#upper iframe")
    upper.wait_for()
    assert page.locator("#proxy").count() == 0, "the image became the viewer"
    other = upper.element_handle().content_frame()
    other.wait_for_url("**/novnc/vnc_envision.html?**")
    wait_for_desktop(other)
    assert page.locator("#upper-state").inner_text() == "envision #1"
    keep(page, artifacts, "viewer-test")

    tokens = [lower.get_attribute("data-token"), upper.get_attribute("data-token")]
    assert sorted(i["state"] for i in instances(gw, "envision")) == ["active", "active"]
    assert len(set(tokens)) == 2
    below = sorted(desktops_below(gw.proc.pid).values())
    assert below == ["Xvfb", "Xvfb", "fake_envision.py", "fake_envision.py", "x11vnc", "x11vnc"]
    for token in tokens:
        assert get(f"{gw.http_url}/v1/release/{token}")[0] == 200
    for view in (frame, other):
        view.wait_for_function("() => document.documentElement.dataset.state === 'ended'")
    wait_until(lambda: not desktops_below(gw.proc.pid), 15,
               f"the stand-ins, their Xvfb and x11vnc to end: {desktops_below(gw.proc.pid)}")
    assert gw.stop() == 0
    browser.assert_clean(*tokens)


def test_the_operator_opens_the_dashboard_with_the_security_token_kept_out_of_every_url_but_its_own(
        gateway, browser, tmp_path):
    key = "Op3rator-K3y"
    gw = desktop_gateway(gateway, tmp_path, "--security_token", key)
    context = browser.context()
    refused = browser.open(context, page_url(gw, "admin/"))
    assert "for administrators" in refused.content(), "a local caller needs the token when there is one"
    status, body = get(f"{gw.http_url}/v1/reserve/{SERVICE}?security_token={key}")
    assert status == 200
    requested = []
    context.on("request", lambda request: requested.append(request.url))
    dashboard = browser.open(context, page_url(gw, f"admin/?security_token={key}"))
    dashboard.locator(f'{ADMIN_ROWS}[data-state="reserved"]').wait_for()
    dashboard.locator(ADMIN_ROWS).get_by_role("button", name="End", exact=True).click()
    dashboard.locator("#sessions tbody tr.empty").wait_for()
    assert instances(gw, SERVICE, security_token=key) == []
    calls = [url for url in requested if "/v1/" in url]
    assert any("/v1/admin_end/" in url for url in calls) and any(url.endswith("/v1/admin") for url in calls)
    assert not [url for url in calls if key in url], "the page sends the token in a header, never in a URL"
    browser.assert_clean(key, body["token"])
