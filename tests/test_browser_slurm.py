"""The viewer page over a Slurm session (issue 16), in headless Chromium: the shipped
"Cluster Desktop" (config/slurm_sessions.json: Xvfb + x11vnc in a job of the suite's
one-node Slurm, tests/slurm/up.sh) through a real gateway, our vnc_envision.html over
noVNC.

The job's x11vnc asks for a one-time password that only the token's holder gets
(vnc_password of /v1/session/{token}): the page is opened with the token and no
password and must sign in by itself. While the job waits in Slurm's queue, the
progress overlay says so, and why. Every test ends every job (the C{slurm} fixture
fails one that leaves any) and stops its gateway with SIGTERM (a SIGKILL leaves jobs).
Screenshots go to tests/.artifacts/ (docs/viewer-queued.png is a copy).
"""

import datetime
import os
import time
import urllib.parse
import zoneinfo

import pytest

from support.browser import (  # noqa: F401 (the fixtures chromium and novnc)
    chromium_fixture,
    novnc_fixture,
    screenshot,
    viewer_url,
    wait_for_desktop,
)
from support.sessions import gateway_args, get, reserve
from support.sessions import session_snapshot as session
from support.slurm import desktop_config, our_jobs
from support.sse import Reader, events_of
from support.waiting import wait_until

SERVICE = "Cluster Desktop"


@pytest.fixture
def cluster_gateway(slurm, gateway, tmp_path):
    """Start a gateway serving the shipped Cluster Desktop over noVNC tree C{novnc} with
    C{cluster_gateway(novnc, *options)}; at teardown it is stopped with SIGTERM (its jobs
    are cancelled) before the C{slurm} fixture looks for jobs left."""
    started = []

    def start(novnc, *options):
        gw = gateway(gateway_args(tmp_path, "--novnc_dir", novnc, *options, config=desktop_config(tmp_path)),
                     http=True)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def open_viewer(chromium, gw, token, zone=None):
    """The viewer for C{token} as Nexus opens it for a Slurm session: no password; in time
    zone C{zone} (an IANA name) if given."""
    page = chromium("about:blank")
    page.set_viewport_size({"width": 800, "height": 600})
    if zone is not None:
        chromium.context.new_cdp_session(page).send("Emulation.setTimezoneOverride", {"timezoneId": zone})
    page.goto(viewer_url(gw, "vnc_envision.html", path="websockify", token=token, session_name="Desktop",
                         autoconnect="true", host="127.0.0.1", port=gw.ws_url.rsplit(":", 1)[1]))
    return page


def job_programs(job):
    """The pids of the Xvfb and x11vnc of Slurm job C{job} (on this machine: the one node)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() not in ("Xvfb", "x11vnc"):
                        continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"SLURM_JOB_ID={job}".encode() in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                pass
    return found


def assert_clean(chromium, *secrets):
    """No uncaught error in the pages, none on their consoles, and no secret anywhere there."""
    assert chromium.errors == []
    assert [text for kind, text in chromium.console  # but the browser's own: the favicon.ico 404
            if kind == "error" and not text.startswith("Failed to load resource: the server responded")] == []
    assert not [text for _, text in chromium.console if any(s in text for s in secrets)]


@pytest.mark.parametrize("novnc", ["1.3", "1.7"], indirect=True)
def test_the_page_signs_in_with_the_jobs_one_time_password_and_a_closed_tab_ends_the_job_after_the_grace(
        slurm, cluster_gateway, chromium, novnc, tmp_path):
    gw = cluster_gateway(novnc, "--reconnect_grace", "3")
    token = reserve(gw, SERVICE)
    calls = []
    chromium.context.on("request", lambda r: calls.append(urllib.parse.urlsplit(r.url).path)
                        if "/v1/" in r.url else None)
    page = open_viewer(chromium, gw, token)
    wait_for_desktop(page)
    assert page.locator("#login").is_hidden(), "the page never asked for a password"
    assert page.locator("#progress").is_hidden()
    assert calls.count(f"/v1/session/{token}") == 1, calls
    snapshot = session(gw, token)
    assert snapshot["state"] == "active", snapshot
    password = snapshot["vnc_password"]
    (job,) = our_jobs(slurm, tmp_path)
    assert len(job_programs(job)) == 2, "the job's Xvfb and x11vnc run here (the one node)"

    page.reload()  # a new connection: the page asks for the password again
    wait_for_desktop(page)
    page.wait_for_function("() => document.documentElement.dataset.session === 'reattached'")
    assert calls.count(f"/v1/session/{token}") == 2, calls
    assert list(our_jobs(slurm, tmp_path)) == [job], "the same job"

    page.close()  # its WebSocket goes with it; the job waits out the grace
    wait_until(lambda: session(gw, token)["state"] == "detached", 5, "the session detached")
    detached = time.monotonic()
    assert job in our_jobs(slurm, tmp_path), "the job lives through the grace"
    wait_until(lambda: not our_jobs(slurm, tmp_path), 3 + 20, "the job to end")
    assert time.monotonic() - detached > 2, "not before the grace"
    assert [e["reason"] for e in events_of(gw, token) if e["event"] == "ending"] == ["grace_expired"]
    assert session(gw, token)["state"] == "released"
    assert "vnc_password" not in session(gw, token)
    wait_until(lambda: not job_programs(job), 10, "the job's Xvfb and x11vnc to end")
    assert gw.stop() == 0
    assert password not in gw.log and token not in gw.log.replace("***", "")
    assert_clean(chromium, token, password)


#: The browser's time zone in the queued test: not the gateway's (UTC here), to show that the
#: expected start is the browser's local time. UTC+5:30, without summer time.
ZONE = "Asia/Kolkata"

WAITING = "Waiting in the queue: Resources (waiting for free resources)"


def local_clock(iso, zone):
    """What the page shows of UTC time C{iso} in time zone C{zone}: "HH:MM", with its date if
    that is not today's there."""
    at = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zoneinfo.ZoneInfo(zone))
    today = datetime.datetime.now(zoneinfo.ZoneInfo(zone)).date()
    return at.strftime("%H:%M") if at.date() == today else at.strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize("novnc", ["1.7"], indirect=True)
def test_the_overlay_shows_the_wait_in_slurms_queue_in_place_then_the_desktop(
        slurm, cluster_gateway, chromium, novnc, tmp_path, artifacts):
    # The node taken whole; with a time limit, so that Slurm's backfill (every 30 s) says
    # when the next job may start: at the blocker's end.
    blocker = slurm.submit("--exclusive", "--time=10", "--output=/dev/null", "--wrap", "sleep 300")
    try:
        wait_until(lambda: slurm.jobs().get(blocker, ("", "", ""))[1] == "RUNNING", 20, "the exclusive job to run")
        gw = cluster_gateway(novnc, "--start_timeout", "5")
        token = reserve(gw, SERVICE)
        events = Reader(f"{gw.http_url}/v1/events/{urllib.parse.quote(token)}")
        page = open_viewer(chromium, gw, token, zone=ZONE)
        steps, queue = page.locator("#progress-steps li"), page.locator("#progress-steps li.queue")
        page.locator("#progress").wait_for(state="visible")
        queue.wait_for(state="visible")
        page.wait_for_function("(text) => document.querySelector('#progress-steps li.queue.current')"
                               "?.textContent.startsWith(text)", arg=WAITING)
        (job,) = our_jobs(slurm, tmp_path)
        assert steps.all_inner_texts()[:3] == ["Starting the session", "submitting the job to Slurm",
                                               f"Slurm job {job} submitted"]
        shown = steps.count()
        queue.evaluate("item => { item.dataset.seen = 'yes'; }")

        # Queued longer than --start_timeout: the page waits on. Slurm's estimate comes within
        # its backfill's 30 s, and the gateway's squeue (backing off to 30 s) sees it: in place.
        page.wait_for_function("() => document.querySelector('#progress-steps li.queue')"
                               ".textContent.includes('expected')", timeout=90_000)
        expected = [e["data"]["queue"]["expected_start"] for e in events.events
                    if e["data"].get("queue", {}).get("expected_start")][-1]
        text = f"{WAITING} \u2014 expected to start at {local_clock(expected, ZONE)}"
        page.wait_for_function("(text) => document.querySelector('#progress-steps li.queue').textContent === text",
                               arg=text, timeout=5000)
        assert steps.count() == shown and queue.count() == 1, "the same line, updated"
        assert queue.get_attribute("data-seen") == "yes", "the same element"
        assert page.locator("#progress-steps li.current").inner_text() == queue.inner_text()
        assert page.locator("#progress-title").inner_text() == "Starting Desktop\u2026"
        screenshot(page, artifacts, "viewer-queued")
        assert session(gw, token)["state"] == "starting"
        assert our_jobs(slurm, tmp_path)[job][1:] == ("PENDING", "Resources")

        slurm.run("scancel", blocker)
        wait_for_desktop(page)
        assert page.locator("#progress").is_hidden() and page.locator("#login").is_hidden()
        queued = [e["data"]["queue"] for e in events.events if e["data"].get("queue")]
        assert {"state": "PENDING", "reason": "Resources", "expected_start": expected} in queued
        assert get(f"{gw.http_url}/v1/release/{urllib.parse.quote(token)}")[0] == 200
        wait_until(lambda: not our_jobs(slurm, tmp_path), 20, "the session's job to end")
        events.close()
        assert gw.stop() == 0
        assert_clean(chromium, token)
    finally:
        slurm.cancel(blocker)
