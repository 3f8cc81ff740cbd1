"""The viewer page's URL logic (nexusws/ansys/nexus/novnc/viewer_url.js), run in Node."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import have, require
from nexusws.viewer import PAGES

DRIVER = r"""
import { readParams, websocketUrl } from './viewer_url.mjs';
const cases = JSON.parse(process.argv[2]);
const out = cases.map(([page]) => {
  const location = new URL(page);
  return websocketUrl(readParams(location), location);
});
const merged = readParams(new URL('http://h/p?password=query&x=1#password=fragment&token=t'));
console.log(JSON.stringify({ urls: out, merged: Object.fromEntries(merged) }));
"""

CASES = [
    # The reference's basic-mode URL: path defaults to websockify, as in noVNC's vnc.html.
    ("http://gw:9000/v.html?host=127.0.0.1&port=9090&password=x", "ws://127.0.0.1:9090/websockify"),
    # A launched service: the token goes in the WebSocket's query, encoded.
    ("http://gw:9000/v.html?path=websockify&token=a%20b%2Fc%26d&host=h&port=1",
     "ws://h:1/websockify?token=a%20b%2Fc%26d"),
    ("http://gw:9000/v.html?path=/ws/x%3Fy%3D1&token=t&host=h&port=1", "ws://h:1/ws/x?y=1&token=t"),
    ("http://gw:9000/v.html?path=&host=h&port=1", "ws://h:1/"),
    # Defaults: the page's own host and port; wss when the page came over https.
    ("http://gw:9000/v.html", "ws://gw:9000/websockify"),
    ("https://nexus.example.com/v.html?token=t", "wss://nexus.example.com/websockify?token=t"),
    ("https://nexus.example.com/v.html?encrypt=0&port=9090", "ws://nexus.example.com:9090/websockify"),
    ("http://gw/v.html?encrypt=true&host=h&port=443", "wss://h:443/websockify"),
    # IPv6 literals are bracketed; a name with one colon is left alone.
    ("http://gw/v.html?host=::1&port=9090", "ws://[::1]:9090/websockify"),
    ("http://gw/v.html?host=[::1]&port=9090", "ws://[::1]:9090/websockify"),
    ("http://[::1]:9000/v.html?port=9090", "ws://[::1]:9090/websockify"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    require(have("node"), "node")
    work = tmp_path_factory.mktemp("viewer_js")
    (work / "viewer_url.mjs").write_text((Path(PAGES) / "viewer_url.js").read_text())
    (work / "driver.mjs").write_text(DRIVER)
    run = subprocess.run(["node", str(work / "driver.mjs"), json.dumps([[page] for page, _ in CASES])],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[page.split("?", 1)[-1] for page, _ in CASES])
def test_websocket_url(results, index):
    assert results["urls"][index] == CASES[index][1]


def test_fragment_parameters_fill_in_what_the_query_lacks(results):
    assert results["merged"] == {"password": "query", "x": "1", "token": "t"}


# --- session_events.js: the viewer's logic over a session's events ---------------------

SESSION_DRIVER = r"""
import * as s from './session_events.mjs';
const T0 = Date.parse('2030-01-01T00:00:00Z');
const at = (seconds) => new Date(T0 + seconds * 1000).toISOString();
function play(events, now, connected = false, state = s.initialState()) {
  for (const e of events) state = s.reduce(state, e, now, connected);
  return state;
}
const out = {};
out.delays = [0, 1, 2, 3, 4, 5, 9].map((a) => s.retryDelay(a));
out.delaysInGrace = [[0, 3000], [2, 3000], [3, 600], [0, -5000], [1, null]].map(([a, g]) => s.retryDelay(a, g));
out.endings = ['idle', 'max_duration', 'released', 'grace_expired', 'stopped', 'closed', 'expired', 'weird']
  .map((reason) => s.endingText({ reason }));
out.failed = s.endingText({ reason: 'failed', failure: 'Xvfb exited' });
out.none = s.endingText(null);
out.urls = [s.apiUrl(null, 'events', 'a b/c'), s.apiUrl('/prefix/', 'extend', 't', { seconds: 900 }),
            s.apiUrl('https://gw.example.com', 'session', 't')];
out.takeover = [s.withTakeover('ws://h:1/websockify?token=t'), s.withTakeover('ws://h:1/websockify')];

// A start: its steps, in order; ready ends it.
const start = [{ id: 1, event: 'reserved', time: at(0) }, { id: 2, event: 'starting', time: at(1) },
  { id: 3, event: 'progress', text: 'starting the X server :5', time: at(1) },
  { id: 4, event: 'progress', text: 'starting the VNC server', time: at(2) }];
const starting = play(start, T0 + 2000);
out.starting = { steps: starting.steps, ready: starting.ready, last: starting.last, lastId: starting.lastId };
out.readyAfter = play([...start, { id: 5, event: 'ready', time: at(3) }], T0 + 3000).ready;

// Warnings count down from when they were sent; input, a touch or an extension clears them.
const warned = play([{ id: 6, event: 'idle_warning', seconds_left: 30, time: at(10) },
  { id: 7, event: 'time_warning', seconds_left: 60, time: at(10) }], T0 + 12000);
out.warned = s.warningTexts(warned, T0 + 12000);
out.warnedLater = s.warningTexts(warned, T0 + 39500);
out.warnedPast = s.warningTexts(warned, T0 + 99000);
out.activeAgain = s.warningTexts(play([{ id: 8, event: 'active', by: 'touch', time: at(13) }], T0 + 13000, true, warned), T0 + 13000);
out.extended = s.warningTexts(play([{ id: 8, event: 'extended', seconds: 900, time_left: 950, time: at(13) }], T0 + 13000, true, warned), T0 + 13000);
// A clock behind the server's: counted from receipt, never longer than it said.
out.skewed = s.warningTexts(play([{ id: 1, event: 'idle_warning', seconds_left: 30, time: at(100) }], T0), T0);
// An ending clears the warnings and names its reason.
const ending = play([{ id: 8, event: 'ending', reason: 'idle', time: at(40) }], T0 + 40000, true, warned);
out.ending = { texts: s.warningTexts(ending, T0 + 40000), ending: ending.ending };

// Takeovers: another window's, while connected; this page's own; one replayed before connecting.
const attach = { id: 9, event: 'attached', takeover: true, time: at(50) };
out.takenOver = play([attach], T0, true).takenOver;
out.ownTakeover = play([attach], T0, true, { ...s.initialState(), ownTakeovers: 1 }).takenOver;
out.replayedTakeover = play([attach], T0, false).takenOver;

// Reconnect decisions.
const fresh = s.initialState();
const snap = (state, attached = false) => ({ state, attached, grace_left: state === 'detached' ? 40 : null });
out.decisions = {
  detached: s.retryDecision(fresh, snap('detached'), true, 0),
  activeOurs: s.retryDecision(fresh, snap('active', true), true, 0),
  activeFirst: s.retryDecision(fresh, snap('active', true), false, 0),
  activeFirstLong: s.retryDecision(fresh, snap('active', true), false, 2),
  starting: s.retryDecision(fresh, snap('starting', true), true, 0),
  startingLong: s.retryDecision(fresh, snap('starting', true), true, s.MAX_ATTEMPTS - 1),
  released: s.retryDecision(fresh, snap('released'), true, 0),
  stopping: s.retryDecision(fresh, snap('stopping'), true, 0),
  reservedFirst: s.retryDecision(fresh, snap('reserved'), false, 0),
  notFound: s.retryDecision(fresh, null, true, 0),
  unreachable: s.retryDecision(fresh, undefined, true, 0),
  unreachableLong: s.retryDecision(fresh, undefined, true, s.MAX_ATTEMPTS - 1),
  ending: s.retryDecision(ending, snap('detached'), true, 0),
  takenOver: s.retryDecision(play([attach], T0, true), snap('active', true), true, 0),
};
out.elapsed = [0, 999, 7000, 59999, 60000, 125000].map(s.elapsedText);
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def session_logic(tmp_path_factory):
    require(have("node"), "node")
    work = tmp_path_factory.mktemp("session_events_js")
    (work / "session_events.mjs").write_text((Path(PAGES) / "session_events.js").read_text())
    (work / "driver.mjs").write_text(SESSION_DRIVER)
    run = subprocess.run(["node", str(work / "driver.mjs")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_reconnect_backoff_doubles_to_ten_seconds_and_stays_within_the_grace(session_logic):
    assert session_logic["delays"] == [1000, 2000, 4000, 8000, 10000, 10000, 10000]
    # grace 3 s left: the first try after 1 s, later ones before it runs out; never under 250 ms
    assert session_logic["delaysInGrace"] == [1000, 2500, 250, 250, 2000]


def test_ending_reasons_are_said_in_words(session_logic):
    assert session_logic["endings"] == [
        "Session ended: idle", "Session ended: time limit reached", "Session ended: released",
        "Session ended: not reconnected in time", "Session ended: stopped by the server",
        "Session ended: its connection closed", "Session ended: never used", "Session ended: weird"]
    assert session_logic["failed"] == "The session could not start: Xvfb exited"
    assert session_logic["none"] == "The session has ended"


def test_api_urls_encode_the_token_and_take_a_base(session_logic):
    assert session_logic["urls"] == ["/v1/events/a%20b%2Fc", "/prefix/v1/extend/t?seconds=900",
                                     "https://gw.example.com/v1/session/t"]
    assert session_logic["takeover"] == ["ws://h:1/websockify?token=t&takeover=1",
                                         "ws://h:1/websockify?takeover=1"]


def test_the_start_shows_its_steps_until_ready(session_logic):
    assert session_logic["starting"] == {
        "steps": ["Starting the session", "starting the X server :5", "starting the VNC server"],
        "ready": False, "last": "progress", "lastId": 4}
    assert session_logic["readyAfter"] is True


def test_warnings_count_down_from_their_event_and_clear(session_logic):
    # sent at 10 s, seen at 12 s: 28 s and 58 s left; at 39.5 s: 1 s (rounded up) and 31 s
    assert session_logic["warned"] == ["No activity: this session ends in 28 s",
                                       "This session's time ends in 58 s"]
    assert session_logic["warnedLater"] == ["No activity: this session ends in 1 s",
                                            "This session's time ends in 31 s"]
    assert session_logic["warnedPast"] == ["No activity: this session ends in 0 s",
                                           "This session's time ends in 0 s"]
    assert session_logic["activeAgain"] == ["This session's time ends in 57 s"]
    assert session_logic["extended"] == ["No activity: this session ends in 27 s"]
    assert session_logic["skewed"] == ["No activity: this session ends in 30 s"]
    assert session_logic["ending"] == {"texts": [], "ending": {"reason": "idle"}}


def test_only_another_windows_takeover_counts_as_taken_over(session_logic):
    assert session_logic["takenOver"] is True
    assert session_logic["ownTakeover"] is False
    assert session_logic["replayedTakeover"] is False


def test_reconnect_decisions(session_logic):
    assert session_logic["decisions"] == {
        "detached": "connect",  # within the grace
        "activeOurs": "takeover",  # the gateway still counts this page's lost connection as attached
        "activeFirst": "wait",  # a new page while another (a reloaded one?) is still attached
        "activeFirstLong": "elsewhere",
        "starting": "wait", "startingLong": "give-up",
        "released": "gone", "stopping": "gone", "reservedFirst": "give-up", "notFound": "gone",
        "unreachable": "connect",  # the WebSocket itself will tell
        "unreachableLong": "give-up",
        "ending": "ended",  # an idle or time limit, a release: never reconnect
        "takenOver": "taken-over",  # closed 4001: the other window keeps it
    }


def test_elapsed_time_text(session_logic):
    assert session_logic["elapsed"] == ["0 s", "0 s", "7 s", "59 s", "1 min 00 s", "2 min 05 s"]


# --- a batch job's wait in its scheduler's queue (issue 16) ------------------------------

QUEUE_DRIVER = r"""
import * as s from './session_events.mjs';
const T0 = Date.parse('2026-12-05T21:40:00Z');
const at = (seconds) => new Date(T0 + seconds * 1000).toISOString();
const pending = (id, seconds, reason, expected, words) => ({
  id, event: 'progress', time: at(seconds), queue: { state: 'PENDING', reason, expected_start: expected },
  text: `waiting in Slurm's queue: ${reason}` + (words ? ` (${words})` : '') + (expected ? ', expected to start at 21:50' : '')});
const running = (id, seconds) => ({ id, event: 'progress', time: at(seconds), text: 'Slurm job 12 is running on node7',
  queue: { state: 'RUNNING', node: 'node7' } });
const start = [{ id: 1, event: 'starting', time: at(0) },
  { id: 2, event: 'progress', text: 'submitting the job to Slurm', time: at(0) },
  { id: 3, event: 'progress', text: 'Slurm job 12 submitted', time: at(1) },
  pending(4, 2, 'None', null, 'being scheduled'),
  pending(5, 4, 'Resources', null, 'waiting for free resources'),
  pending(6, 30, 'Resources', '2026-12-05T21:50:00Z', 'waiting for free resources'),
  running(7, 65),
  { id: 8, event: 'progress', text: 'the job reported where it listens', time: at(66) },
  // Requeued (a node failed): a wait of its own; a reason without words, a day ahead.
  pending(9, 70, 'BeginTime', '2026-12-06T20:00:00Z', null),
  pending(10, 71, 'Weird', 'not a time', null)];
const now = T0 + 72000;
let state = s.initialState();
const texts = [];
for (const event of start) {
  state = s.reduce(state, event, now, false);
  texts.push(state.steps.map((step) => s.stepText(step, now)));
}
const out = { texts, steps: state.steps.length, ready: state.ready,
  queueSteps: state.steps.filter((step) => typeof step === 'object').map((step) => step.queue),
  words: [s.reasonWords("waiting in Slurm's queue: Priority (jobs of higher priority go first)", 'Priority'),
          s.reasonWords("waiting in Slurm's queue: Priority", 'Priority'), s.reasonWords(undefined, 'None')],
  clocks: [s.clockText('2026-12-05T21:50:00Z', T0), s.clockText('2026-12-06T20:00:00Z', T0),
           s.clockText('2026-12-05T18:00:00Z', T0), s.clockText('garbage', T0)],
  // A PENDING event without its fields; a queue that is not an object.
  bare: s.progressSteps([], { event: 'progress', text: 'x', queue: { state: 'PENDING' } }, T0).map((step) => s.stepText(step, T0)),
  odd: s.progressSteps([], { event: 'progress', text: 'y', queue: 'PENDING' }, T0) };
console.log(JSON.stringify(out));
"""


def queue_logic(tmp_path_factory, zone):
    """QUEUE_DRIVER's answers with Node's local time zone C{zone} (a browser's own)."""
    require(have("node"), "node")
    work = tmp_path_factory.mktemp("queue_js")
    (work / "session_events.mjs").write_text((Path(PAGES) / "session_events.js").read_text())
    (work / "driver.mjs").write_text(QUEUE_DRIVER)
    run = subprocess.run(["node", str(work / "driver.mjs")], capture_output=True, text=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "TZ": zone})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def queue_utc(tmp_path_factory):
    return queue_logic(tmp_path_factory, "UTC")


@pytest.fixture(scope="module")
def queue_kolkata(tmp_path_factory):
    return queue_logic(tmp_path_factory, "Asia/Kolkata")  # UTC+5:30, no summer time


def test_a_wait_in_the_queue_is_one_step_updated_in_place_until_the_job_runs(queue_utc):
    texts = queue_utc["texts"]
    head = ["Starting the session", "submitting the job to Slurm", "Slurm job 12 submitted"]
    assert texts[2] == head
    assert texts[3] == [*head, "Waiting in the queue: None (being scheduled)"]
    assert texts[4] == [*head, "Waiting in the queue: Resources (waiting for free resources)"]
    assert texts[5] == [*head, "Waiting in the queue: Resources (waiting for free resources)"
                               " \u2014 expected to start at 21:50"]
    # It runs: the wait (from its first pending event, at 2 s, to 65 s) is done; the run is a step.
    assert texts[6] == [*head, "Waited 1 min 03 s in the queue", "Slurm job 12 is running on node7"]
    assert texts[7] == texts[6] + ["the job reported where it listens"]
    # Pending again after it ran: a new wait, a step of its own.
    assert texts[8] == texts[7] + ["Waiting in the queue: BeginTime \u2014 expected to start at 2026-12-06 20:00"]
    assert texts[9] == texts[7] + ["Waiting in the queue: Weird"]  # an expected start that is no time: none
    assert queue_utc["steps"] == 7 and queue_utc["queueSteps"] == ["DONE", "PENDING"]
    assert queue_utc["ready"] is False


def test_the_expected_start_is_in_the_browsers_time_zone_with_its_date_when_not_today(queue_utc, queue_kolkata):
    # now: 2026-12-05 21:40 UTC, which is 2026-12-06 03:10 in Kolkata
    assert queue_utc["clocks"] == ["21:50", "2026-12-06 20:00", "18:00", None]
    # 18:00 UTC is still the 5th there: a day before that "now", so with its date
    assert queue_kolkata["clocks"] == ["03:20", "2026-12-07 01:30", "2026-12-05 23:30", None]
    assert queue_kolkata["texts"][5][-1] == ("Waiting in the queue: Resources (waiting for free resources)"
                                             " \u2014 expected to start at 03:20")
    assert queue_kolkata["texts"][8][-1] == "Waiting in the queue: BeginTime \u2014 expected to start at 2026-12-07 01:30"


def test_a_pending_reasons_words_come_from_the_progress_text_when_it_has_them(queue_utc):
    assert queue_utc["words"] == ["jobs of higher priority go first", None, None]
    assert queue_utc["bare"] == ["Waiting in the queue: None"]
    assert queue_utc["odd"] == ["y"], "a queue that is not an object: the text, as any progress"
