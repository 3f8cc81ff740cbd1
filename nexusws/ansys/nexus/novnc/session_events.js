// A session's events (GET /v1/events/{token}, Server-Sent Events) as the viewer
// shows them, and when it reconnects: no DOM, no noVNC, no timers, so Node can
// test it (tests/test_viewer_js.py). Times are milliseconds (Date.now()).

// The events the gateway sends (README, REST API: /v1/events/{token}).
export const EVENTS = ['reserved', 'starting', 'progress', 'ready', 'attached', 'detached', 'reattached',
    'idle_warning', 'active', 'time_warning', 'extended', 'ending', 'ended'];

// Why a session ended (the `ending` event's reason), as the status bar says it.
export const ENDINGS = {
    released: 'released',
    closed: 'its connection closed',
    grace_expired: 'not reconnected in time',
    idle: 'idle',
    max_duration: 'time limit reached',
    stopped: 'stopped by the server',
    expired: 'never used',
    admin: 'ended by an administrator',
};

export function endingText(ending) {
    if (!ending) return 'The session has ended';
    if (ending.reason === 'failed') {
        return `The session could not start${ending.failure ? ': ' + ending.failure : ''}`;
    }
    return `Session ended: ${ENDINGS[ending.reason] || ending.reason || 'unknown reason'}`;
}

// The URL of API call `call` for `token`: /v1/CALL/TOKEN on this page's origin,
// or below `base` (the page's `api` parameter: another prefix, e.g. behind a proxy).
export function apiUrl(base, call, token, query) {
    const root = (base || '').replace(/\/+$/, '');
    const search = query ? '?' + new URLSearchParams(query) : '';
    return `${root}/v1/${call}/${encodeURIComponent(token)}${search}`;
}

// A session WebSocket URL (it holds ?token=...) that takes the session over.
export function withTakeover(url) {
    return url + (url.includes('?') ? '&' : '?') + 'takeover=1';
}

// Milliseconds before reconnect attempt `attempt` (0, 1, ...): 1, 2, 4, 8 s, then
// every 10 s; never past the grace (what is left of it, when known), never under 250 ms.
export const RETRY_MAX_MS = 10000;
export function retryDelay(attempt, graceLeftMs) {
    let delay = Math.min(1000 * 2 ** Math.max(0, attempt), RETRY_MAX_MS);
    if (graceLeftMs !== null && graceLeftMs !== undefined) delay = Math.min(delay, graceLeftMs - 500);
    return Math.max(250, delay);
}

// How many attempts in a row may find the session busy (still starting, attached
// elsewhere) or the gateway unreachable before the page gives up.
export const MAX_ATTEMPTS = 8;

// What to do after the connection was lost, given the events so far (`state`),
// the session's snapshot (GET /v1/session/{token}: an object; null when it
// answered 404: no such session any more; undefined when it could not be
// asked: the gateway unreachable, the call refused), whether this page was ever connected, and the attempt number:
//   'connect'     re-attach (the session is detached)
//   'takeover'    re-attach with takeover=1: it still counts our lost connection as attached
//   'wait'        ask again after the next delay
//   'ended', 'gone', 'taken-over', 'elsewhere', 'give-up'   stop (the status says why)
export function retryDecision(state, snapshot, everConnected, attempt) {
    if (state.ending || state.ended) return 'ended';
    if (state.takenOver) return 'taken-over';
    if (snapshot === null) return 'gone';
    const more = attempt + 1 < MAX_ATTEMPTS;
    if (snapshot === undefined) return more ? 'connect' : 'give-up';  // the WebSocket will tell
    const busy = more ? 'wait' : 'give-up';
    switch (snapshot.state) {
    case 'detached':
        return 'connect';
    case 'active':  // attached: our old connection (the gateway has not seen it go) or another window's
        if (!snapshot.attached) return 'connect';
        if (everConnected) return 'takeover';
        return attempt + 1 < 3 ? 'wait' : 'elsewhere';
    case 'starting':
        return busy;
    case 'reserved':  // never started: our first WebSocket was refused, and will be again
        return everConnected ? 'connect' : 'give-up';
    default:  // stopping, released, expired
        return 'gone';
    }
}

export function initialState() {
    return {
        last: null,        // the latest event's name
        lastId: 0,         // and its id
        steps: [],         // the start's steps: 'starting', then each progress's (progressSteps)
        ready: false,      // the session has started (ready, attached, reattached)
        idle: null,        // an idle warning: {ends} (ms)
        time: null,        // a time warning: {ends} (ms)
        graceEnds: null,   // detached: when its grace ends (ms)
        ending: null,      // {reason, failure}: the session is ending or ended
        ended: false,      // the stream's last event came
        takenOver: false,  // another window took the session over from this page
        ownTakeovers: 0,   // takeovers this page asked for whose event has not come yet
    };
}

// When something `seconds` after event `event` happens, seen at `now`: the
// event's own time, so that replayed events count from when they happened
// (never in the future, never further back than `seconds`: clocks differ).
export function deadline(event, seconds, now) {
    const span = Math.max(0, Number(seconds) || 0) * 1000;
    const at = Date.parse(event.time);
    const age = Number.isNaN(at) ? 0 : Math.min(Math.max(0, now - at), span);
    return now + span - age;
}

// The start's steps after progress event `event` (seen at `now`). A step is its text,
// or, for a batch job waiting in its scheduler's queue (the event's `queue`, issue 16),
// a queue step {queue: 'PENDING', reason, words, expectedStart, since}: one step for the
// whole wait, updated in place as its reason or expected start changes, which becomes
// {queue: 'DONE', since, until} when the job runs (its own text is then a step of its own).
export function progressSteps(steps, event, now) {
    const queue = event.queue && typeof event.queue === 'object' ? event.queue : null;
    const last = steps.length ? steps[steps.length - 1] : null;
    const waiting = last !== null && typeof last === 'object' && last.queue === 'PENDING';
    const at = eventTime(event, now);
    if (queue && queue.state === 'PENDING') {
        const reason = String(queue.reason || 'None');
        const step = { queue: 'PENDING', reason, words: reasonWords(event.text, reason),
            expectedStart: typeof queue.expected_start === 'string' ? queue.expected_start : null,
            since: waiting ? last.since : at };
        return waiting ? [...steps.slice(0, -1), step] : [...steps, step];
    }
    const text = String(event.text);
    if (waiting) return [...steps.slice(0, -1), { queue: 'DONE', since: last.since, until: at }, text];
    return [...steps, text];
}

// When event `event` happened (ms): its own time, or `now` if it has none.
function eventTime(event, now) {
    const at = Date.parse(event.time);
    return Number.isNaN(at) ? now : at;
}

// The words the gateway gives a pending reason in a progress text
// ("waiting in Slurm's queue: Resources (waiting for free resources), ..."), or null.
export function reasonWords(text, reason) {
    const head = `: ${reason} (`;
    const said = String(text || '');
    const from = said.indexOf(head);
    if (from < 0) return null;
    const to = said.indexOf(')', from + head.length);
    return to > from + head.length ? said.slice(from + head.length, to) : null;
}

// "21:50" in this browser's time zone for an ISO time (expected_start: UTC), with its
// date ("2026-12-06 21:50") when that is not `now`'s date there.
export function clockText(iso, now) {
    const at = new Date(Date.parse(iso));
    if (Number.isNaN(at.getTime())) return null;
    const two = (n) => String(n).padStart(2, '0');
    const day = (d) => `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
    const time = `${two(at.getHours())}:${two(at.getMinutes())}`;
    return day(at) === day(new Date(now)) ? time : `${day(at)} ${time}`;
}

// The text of step `step` (see progressSteps) at `now`.
export function stepText(step, now) {
    if (step === null || typeof step !== 'object') return String(step);
    if (step.queue === 'DONE') return `Waited ${elapsedText(step.until - step.since)} in the queue`;
    const expected = step.expectedStart ? clockText(step.expectedStart, now) : null;
    return `Waiting in the queue: ${step.reason}${step.words ? ` (${step.words})` : ''}`
        + (expected ? ` \u2014 expected to start at ${expected}` : '');
}

// The state after event `event` (the parsed `data` of an SSE message) arrives at
// `now`; `connected`: this page's RFB connection is up.
export function reduce(state, event, now, connected) {
    const s = { ...state, last: event.event, lastId: event.id || state.lastId };
    switch (event.event) {
    case 'starting':
        s.steps = ['Starting the session'];
        s.ready = false;
        break;
    case 'progress':
        s.steps = progressSteps(s.steps, event, now);
        break;
    case 'ready':
        s.ready = true;
        break;
    case 'reattached':  // also what a takeover this page asked for gets if the session was detached
        s.ready = true;
        s.graceEnds = null;
        if (s.ownTakeovers > 0) s.ownTakeovers -= 1;
        break;
    case 'attached':
        s.ready = true;
        s.graceEnds = null;
        if (event.takeover) {
            if (s.ownTakeovers > 0) s.ownTakeovers -= 1;
            else if (connected) s.takenOver = true;
        }
        break;
    case 'detached':
        s.graceEnds = deadline(event, event.grace_left, now);
        break;
    case 'idle_warning':
        s.idle = { ends: deadline(event, event.seconds_left, now) };
        break;
    case 'active':
        s.idle = null;
        break;
    case 'time_warning':
        s.time = { ends: deadline(event, event.seconds_left, now) };
        break;
    case 'extended':
        s.time = null;
        break;
    case 'ending':
        s.ending = { reason: event.reason, failure: event.failure };
        s.idle = s.time = null;
        break;
    case 'ended':
        s.ended = true;
        s.ending = s.ending || { reason: null };
        s.idle = s.time = null;
        break;
    default:
        break;
    }
    return s;
}

// Whole seconds until `ends`, counted down: never below 0.
export function secondsLeft(ends, now) {
    return Math.max(0, Math.ceil((ends - now) / 1000));
}

// The warning banner's texts, or [] when there is none.
export function warningTexts(state, now) {
    const texts = [];
    if (state.idle) texts.push(`No activity: this session ends in ${secondsLeft(state.idle.ends, now)} s`);
    if (state.time) texts.push(`This session's time ends in ${secondsLeft(state.time.ends, now)} s`);
    return texts;
}

// "7 s", "2 min 05 s".
export function elapsedText(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    if (total < 60) return `${total} s`;
    return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, '0')} s`;
}
