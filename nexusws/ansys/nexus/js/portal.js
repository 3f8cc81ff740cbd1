// The session portal (/ansys/nexus/sessions/): the services the caller may use, a
// Launch that reserves one and opens it in the viewer, and "My sessions", live.
//
// My sessions: /v1/sessions (those reserved as the caller's user), and the
// sessions this browser reserved (their tokens kept in its localStorage), which
// is how an anonymous caller finds theirs; a kept token the gateway no longer
// knows (404), or that is not the caller's (403), is forgotten.
import { call, el, root, showRows, text, watch } from './client.js';
import { duration, stateText, viewerUrl, websocketPlace } from './places.js';

const KEPT = 'nexusws.portal.tokens';
const byId = (id) => document.getElementById(id);
let place = null;             // where the WebSocket is (from /v1/services)
let mayReserve = true;        // whether the gateway takes this caller's reservations
let listed = [];              // /v1/sessions
let keptRows = new Map();     // token -> its /v1/session snapshot, for kept tokens not listed

function kept() {
    try {
        const value = JSON.parse(localStorage.getItem(KEPT) || '{}');
        return value && typeof value === 'object' ? value : {};
    } catch (e) {
        return {};
    }
}

function keep(token, service) {
    const value = kept();
    value[token] = service;
    localStorage.setItem(KEPT, JSON.stringify(value));
}

function forget(token) {
    const value = kept();
    delete value[token];
    localStorage.setItem(KEPT, JSON.stringify(value));
    keptRows.delete(token);
}

// Two kinds of problem: the live view's (cleared by the next snapshot) and an action's (kept
// until the next action, so that a refusal stays readable while the list goes on moving).
let viewProblem = null;
let actionProblem = null;

function problem(message, kind = 'action') {
    if (kind === 'view') viewProblem = message;
    else actionProblem = message;
    const p = byId('problem');
    const shown = actionProblem || viewProblem;
    p.hidden = !shown;
    text(p, shown || '');
}

function open(token, service, target) {
    const url = viewerUrl(root, token, service, websocketPlace(place, window.location, root));
    if (target) {
        target.location.href = url;
    } else {
        window.open(url, '_blank');  // unnamed: a window's name outlives its page, a token must not
    }
}

async function launch(service, button) {
    // Opened now, while the click counts as the user's (a window opened after an awaited
    // call is a pop-up the browser may block), and sent to the viewer once reserved.
    const target = window.open('', '_blank');
    button.disabled = true;
    button.dataset.busy = '1';
    const answer = await call('reserve', service.name);
    delete button.dataset.busy;
    button.disabled = service.free < 1 || !mayReserve;
    if (!answer.ok) {
        if (target) target.close();
        problem(`Could not start ${service.name}: ${answer.error}`);
        return;
    }
    problem(null);
    keep(answer.body.token, service.name);
    open(answer.body.token, service.name, target);
    refreshKept();
    loadServices();  // one fewer free now, not at the next look
}

// The cards shown, by service name: each updated in place (its Launch button stays the same
// element when a free count changes, so a focused button keeps its focus).
const cards = new Map();

function cardOf(service) {
    let card = cards.get(service.name);
    if (card) return card;
    const button = el('button', { className: 'primary', type: 'button', textContent: 'Launch' });
    button.dataset.service = service.name;
    card = { facts: el('div', { className: 'facts' }), chips: el('div', {}), button, service };
    button.addEventListener('click', () => launch(card.service, button));
    card.element = el('div', { className: 'card' }, el('h3', {}, service.name), card.facts, card.chips,
                      el('div', { className: 'actions' }, button));
    cards.set(service.name, card);
    return card;
}

function updateCard(card, service) {
    card.service = service;
    const limits = [];
    if (service.limits.idle_timeout > 0) limits.push(`ends after ${duration(service.limits.idle_timeout)} idle`);
    if (service.limits.max_duration > 0) limits.push(`at most ${duration(service.limits.max_duration)}`);
    text(card.facts, `${service.free} of ${service.count} free`
        + (service.backend === 'slurm' ? ' \u00b7 on a cluster node (Slurm)' : '')
        + (limits.length ? ' \u00b7 ' + limits.join(', ') : ''));
    const chips = service.file_ext.map((ext) => `.${ext.replace(/^\./, '')}`);
    if (Array.from(card.chips.children, (chip) => chip.textContent).join() !== chips.join()) {
        card.chips.replaceChildren(...chips.map((chip) => el('span', { className: 'chip' }, chip)));
    }
    card.chips.hidden = !chips.length;
    // A service that is no VNC desktop (its "viewer": false) is started by its own page or program.
    card.button.hidden = service.viewer === false;
    if (service.viewer === false) text(card.facts, `${card.facts.textContent} \u00b7 no browser viewer: `
        + 'started from its own page or program');
    if (!card.button.dataset.busy) card.button.disabled = service.free < 1 || !mayReserve;
}

function showServices(box, services) {
    const names = new Set(services.map((service) => service.name));
    for (const name of [...cards.keys()]) if (!names.has(name)) cards.delete(name);
    const elements = services.map((service) => {
        const card = cardOf(service);
        updateCard(card, service);
        return card.element;
    });
    if (!elements.length) {
        if (!box.querySelector('p.muted[data-none]')) {
            const none = el('p', { className: 'muted' }, 'There is no service you may use here.');
            none.dataset.none = '';
            box.replaceChildren(none);
        }
        return;
    }
    const current = Array.from(box.children);
    if (current.length !== elements.length || current.some((e, i) => e !== elements[i])) box.replaceChildren(...elements);
}

async function loadServices() {
    const answer = await call('services');
    const box = byId('services');
    if (!answer.ok) {
        box.replaceChildren(el('p', { className: 'problem' }, `The services cannot be listed: ${answer.error}`));
        document.documentElement.dataset.state = 'refused';
        return;
    }
    const info = answer.body;
    place = info.websocket;
    text(byId('who'), info.user ? `Signed in as ${info.user}` : 'Anonymous');
    byId('admin-link').hidden = !info.admin;
    mayReserve = info.may_reserve !== false;
    const note = byId('reserve-note');
    note.hidden = mayReserve;
    text(note, mayReserve ? '' : 'This gateway takes reservations from its own host only: you can see '
        + 'the services and your sessions here, but not start one (its operator may allow it: --allow_remote_api).');
    showServices(box, info.services);
    document.documentElement.dataset.state = 'ready';
    render();
}

async function end(row, button) {
    button.disabled = true;
    button.dataset.busy = '1';
    const answer = await call('release', row.token);
    delete button.dataset.busy;
    if (!answer.ok && answer.status !== 404) {
        button.disabled = false;
        problem(`Could not end ${row.service}: ${answer.error}`);
        return;
    }
    problem(null);
    forget(row.token);
}

// The rows shown, by token: each updated in place (its buttons stay the same elements, so a
// click or the keyboard focus is never lost to a new snapshot).
const shown = new Map();

function rowOf(token) {
    let item = shown.get(token);
    if (item) return item;
    const cells = Array.from({ length: 6 }, (_, i) => el('td', { className: i >= 3 ? 'num' : '' }));
    const reconnect = el('button', { type: 'button', textContent: 'Reconnect' });
    const ending = el('button', { type: 'button', className: 'danger', textContent: 'End' });
    item = { tr: el('tr', {}, ...cells, el('td', {}, reconnect, ' ', ending)), cells, reconnect, ending, row: null };
    reconnect.addEventListener('click', () => open(item.row.token, item.row.service));
    ending.addEventListener('click', () => end(item.row, ending));
    item.tr.dataset.token = token;
    shown.set(token, item);
    return item;
}

function update(item, row) {
    item.row = row;
    const state = stateText(row);
    const values = [`${row.service} #${row.index}`, state, row.node || (row.backend ? '\u2013' : 'this gateway'),
        duration(row.duration), duration(row.time_left), duration(row.idle)];
    values.forEach((value, i) => text(item.cells[i], value));
    const kind = `state-${state.split(':')[0]}`;
    if (item.cells[1].className !== kind) item.cells[1].className = kind;
    if (item.tr.dataset.state !== row.state) item.tr.dataset.state = row.state;
    item.reconnect.disabled = !['active', 'detached', 'reserved', 'starting'].includes(row.state) || !place;
    if (!item.ending.dataset.busy) item.ending.disabled = row.state === 'stopping';
}

function render() {
    const rows = [...listed];
    const seen = new Set(rows.map((row) => row.token));
    for (const [token, row] of keptRows) if (!seen.has(token)) rows.push(row);
    rows.sort((a, b) => (a.service + a.index).localeCompare(b.service + b.index));
    const wanted = new Set(rows.map((row) => row.token));
    for (const token of [...shown.keys()]) if (!wanted.has(token)) shown.delete(token);
    showRows(byId('sessions').tBodies[0], rows.map((row) => {
        const item = rowOf(row.token);
        update(item, row);
        return item.tr;
    }), 'You have no session running.', 7);
}

async function refreshKept() {
    const listedTokens = new Set(listed.map((row) => row.token));
    for (const [token, service] of Object.entries(kept())) {
        if (listedTokens.has(token)) {
            keptRows.delete(token);
            continue;
        }
        const answer = await call('session', token);
        if (answer.ok && !['released', 'expired'].includes(answer.body.state)) {
            keptRows.set(token, { ...answer.body, token, service: answer.body.service || service });
        } else if (answer.ok || answer.status === 404 || answer.status === 403) {
            forget(token);  // ended, or not this caller's
        }
    }
    render();
}

loadServices();
watch('sessions', (rows) => {
    listed = Array.isArray(rows) ? rows : [];
    problem(null, 'view');
    render();
}, (why) => problem(`My sessions cannot be shown: ${why}`, 'view'));
refreshKept();
setInterval(refreshKept, 3000);
setInterval(loadServices, 10000);  // free instances change
