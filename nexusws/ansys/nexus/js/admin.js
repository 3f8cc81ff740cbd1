// The admin dashboard (/ansys/nexus/admin/): every session of this gateway, live
// (the /v1/admin stream), with End and Extend; the services' use and the load.
// With ?balancer=PATH (a balancer in front, on this origin: "/" behind the cluster's
// nginx), also its nodes and their load (the balancer's /monitor?format=json, every 5 s).
import { call, el, showRows, text, watch } from './client.js';
import { bytes, duration, stateText, throughput } from './places.js';

const byId = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
// What Extend adds: ?extend=N seconds, 1 minute to 1 day (a link cannot make it more).
const EXTEND_SECONDS = Math.min(86400, Math.max(60, parseInt(params.get('extend') ?? '900', 10) || 900));
const samples = new Map();   // id -> its last byte counts {up, down, at} and the speed seen
const busy = new Set();      // ids with an action under way

// Two kinds of problem: the live view's (cleared by the next snapshot) and an action's (kept
// until the next action, so that a refusal stays readable while the table goes on moving).
let viewProblem = null;
let actionProblem = null;

function problem() {
    const p = byId('problem');
    const message = actionProblem || viewProblem;
    p.hidden = !message;
    text(p, message || '');
}

async function act(item, what, button) {
    const row = item.row;
    busy.add(row.id);
    button.disabled = true;
    const answer = what === 'end' ? await call('admin_end', row.id)
        : await call('admin_extend', row.id, { seconds: EXTEND_SECONDS });
    busy.delete(row.id);
    button.disabled = false;
    actionProblem = answer.ok ? null
        : `${what === 'end' ? 'End' : 'Extend'} ${row.service} #${row.index}: ${answer.error}`;
    problem();
}

function rate(row) {
    const now = { up: row.bytes_up, down: row.bytes_down, at: Date.now() };
    const before = samples.get(row.id);
    let speed = null;
    if (before && before.last.up === now.up && before.last.down === now.down) {
        speed = before.speed;  // no change since: the same figure, not a drop to 0 per repeat
        if (now.at - before.last.at > 3000) speed = { up: 0, down: 0 };
    } else {
        speed = throughput(before && before.last, now);
        samples.set(row.id, { last: now, speed });
    }
    return speed ? `${bytes(speed.up + speed.down)}/s` : '\u2013';
}

// The rows shown, by id, each updated in place: its buttons stay the same elements, so a
// click or the keyboard focus is never lost to the next snapshot.
const shown = new Map();
const NUMERIC = new Set([7, 8, 9, 10, 11, 12, 13]);

function rowOf(id) {
    let item = shown.get(id);
    if (item) return item;
    const cells = Array.from({ length: 14 }, (_, i) => el('td', { className: NUMERIC.has(i) ? 'num' : '' }));
    cells[0].title = 'the tag of its token in the log';
    const extendButton = el('button', { type: 'button', textContent: 'Extend' });
    const endButton = el('button', { type: 'button', className: 'danger', textContent: 'End' });
    item = { tr: el('tr', {}, ...cells, el('td', {}, extendButton, ' ', endButton)), cells, extendButton,
             endButton, row: null };
    extendButton.addEventListener('click', () => act(item, 'extend', extendButton));
    endButton.addEventListener('click', () => act(item, 'end', endButton));
    item.tr.dataset.id = id;
    shown.set(id, item);
    return item;
}

function update(item, row) {
    item.row = row;
    const state = stateText(row);
    const since = row.since ? new Date(row.since) : null;
    const values = [`#${row.id}`, `${row.service} #${row.index}`, row.user === null ? 'anonymous' : row.user,
        row.client || '\u2013', row.node || (row.backend ? '\u2013' : 'this gateway'), state,
        since ? since.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '\u2013',
        duration(row.duration), duration(row.idle), duration(row.time_left), bytes(row.bytes_up),
        bytes(row.bytes_down), rate(row), String(row.viewers)];
    values.forEach((value, i) => text(item.cells[i], value));
    item.cells[6].title = row.since || '';
    const kind = `state-${state.split(':')[0]}`;
    if (item.cells[5].className !== kind) item.cells[5].className = kind;
    const data = { state: row.state, bytesUp: String(row.bytes_up ?? ''), bytesDown: String(row.bytes_down ?? '') };
    for (const [key, value] of Object.entries(data)) {  // for scripts (and tests) that read the table
        if (item.tr.dataset[key] !== value) item.tr.dataset[key] = value;
    }
    const acting = busy.has(row.id);
    item.endButton.disabled = row.state === 'stopping' || acting;
    item.extendButton.disabled = row.time_left === null || row.time_left === undefined
        || row.state === 'stopping' || acting;
}

function show(snapshot) {
    viewProblem = null;
    problem();
    document.documentElement.dataset.state = 'live';
    const sessions = snapshot.sessions || [];
    const ids = new Set(sessions.map((row) => row.id));
    for (const id of samples.keys()) if (!ids.has(id)) samples.delete(id);
    for (const id of [...shown.keys()]) if (!ids.has(id)) shown.delete(id);
    showRows(byId('sessions').tBodies[0], sessions.map((row) => {
        const item = rowOf(row.id);
        update(item, row);
        return item.tr;
    }), 'No session.', 15);
    byId('services').tBodies[0].replaceChildren(...(snapshot.services || []).map((s) => el('tr', {},
        el('td', {}, s.name), el('td', {}, s.backend),
        el('td', { className: 'num' }, String(s.in_use)), el('td', { className: 'num' }, String(s.count)))));
    const running = sessions.filter((row) => ['active', 'detached'].includes(row.state)).length;
    const load = snapshot.load;
    byId('summary').replaceChildren(
        el('div', {}, el('strong', {}, String(sessions.length)), 'sessions'),
        el('div', {}, el('strong', {}, String(running)), 'running'),
        el('div', {}, el('strong', {}, load ? `${load.load}` : '\u2013'), 'load (0\u2013100)'));
    text(byId('updated'), `Live \u00b7 ${new Date().toLocaleTimeString()}`);
}

async function nodes(balancer) {
    try {
        const answer = await fetch(`${balancer.replace(/\/+$/, '')}/monitor?format=json`, { cache: 'no-store' });
        const body = await answer.json();
        if (!answer.ok || !Array.isArray(body.nodes)) throw new Error(body.error || `HTTP ${answer.status}`);
        byId('nodes-section').hidden = false;
        byId('nodes').tBodies[0].replaceChildren(...(body.nodes || []).map((n) => el('tr', {},
            el('td', {}, n.node), el('td', { className: 'num' }, n.load === null ? 'no answer' : String(n.load)),
            el('td', {}, n.available ? 'yes' : 'no'))));
    } catch (e) {
        byId('nodes-section').hidden = false;
        byId('nodes').tBodies[0].replaceChildren(el('tr', { className: 'empty' },
            el('td', { colSpan: 3 }, `The balancer at ${balancer} cannot be asked (${e.message})`)));
    }
    setTimeout(() => nodes(balancer), 5000);
}

text(byId('extend-minutes'), String(Math.round(EXTEND_SECONDS / 60)));
watch('admin', show, (why) => {
    document.documentElement.dataset.state = 'refused';
    viewProblem = `The sessions cannot be shown: ${why}`;
    problem();
});
// Only a path on this origin (the balancer behind the same front, e.g. "/"): a link must not
// make the dashboard ask another site.
function sameOriginPath(value) {
    if (!value || !value.startsWith('/')) return null;
    try {
        const url = new URL(value, window.location.href);  // as the browser will read it (tabs dropped...)
        return url.origin === window.location.origin ? url.pathname : null;
    } catch (e) {
        return null;
    }
}
const balancer = sameOriginPath(params.get('balancer'));
if (balancer) nodes(balancer);
