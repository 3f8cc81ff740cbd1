// The nexusws VNC viewer: noVNC's RFB client (./core/rfb.js, from the noVNC
// package the gateway serves beside this file) on a page of its own.
//
// Query (or #fragment) parameters, as the Nexus vnc_envision.html takes them
// and as noVNC's vnc.html does:
//   host, port    the WebSocket listener (default: this page's host and port)
//   path          WebSocket path (default: websockify; nexusws ignores it, a
//                 front proxy routes on it)
//   token         session token from /v1/reserve, sent as ?token=...
//   password      VNC password (asked for when needed and not given); best
//                 in the #fragment, which never reaches a server or a log; with
//                 a token, a session's one-time password (vnc_password of
//                 /v1/session/{token}) is tried first
//   encrypt       wss instead of ws (default: when this page came over https)
//   autoconnect   connect at once (default: true); otherwise a Connect button
//   resize        scale (default), remote (resize the desktop) or off
//   view_only, shared (default true), quality (0-9), compression (0-9)
//   session_name  shown in the title and the status bar
// With a token, the page follows the session's events (/v1/events/{token},
// session_events.js): it shows the start's steps, reconnects when the
// connection drops while the session waits for it (its grace), warns before
// an idle or time limit ends it, and says why it ended:
//   api           where /v1/ is (default: this page's origin), e.g. /prefix
//   extend        seconds the Extend button asks for (default 900; 0: no button)
import RFB from './core/rfb.js';
import { flag, readParams, websocketUrl } from './viewer_url.js';
import * as session from './session_events.js';

function main() {
    const params = readParams(window.location);
    const root = document.documentElement;
    const byId = (id) => document.getElementById(id);
    const status = byId('status');
    const login = byId('login');
    const passwordInput = byId('password');
    const usernameInput = byId('username');
    const verify = byId('verify');
    const connectButton = byId('connect');
    const disconnectButton = byId('disconnect');
    const progress = byId('progress');
    const progressTitle = byId('progress-title');
    const progressSteps = byId('progress-steps');
    const progressElapsed = byId('progress-elapsed');
    const warning = byId('warning');
    const warningText = byId('warning-text');
    const warningError = byId('warning-error');
    const stillHereButton = byId('still-here');
    const extendButton = byId('extend');
    const name = params.get('session_name');
    const token = params.get('token');
    const api = params.get('api');
    const extendSeconds = parseInt(params.get('extend') ?? '900', 10);

    let rfb = null;
    let failure = null;
    let connected = false;        // the RFB connection is up
    let everConnected = false;    // it was once, on this page
    let byUser = false;           // the user disconnected
    let takeoverNext = false;     // the next WebSocket asks takeover=1
    let lostText = null;          // what to say if reconnecting gives up
    let note = null;              // why the last button's call was refused
    let startedAt = null;         // when the first connect began
    let state = session.initialState();
    const retry = { attempt: 0, timer: null, at: null, graceEnds: null };

    function show(what, text) {
        root.dataset.state = what;
        status.textContent = text;
        connectButton.hidden = !['idle', 'disconnected', 'failed'].includes(what);
        disconnectButton.hidden = !['connecting', 'password', 'verify', 'connected', 'reconnecting'].includes(what);
        login.hidden = what !== 'password';
        verify.hidden = what !== 'verify';
        render();
    }

    if (name) document.title = name;

    async function sessionPassword() {
        try {
            const answer = await fetch(session.apiUrl(api, 'session', token), { cache: 'no-store' });
            if (!answer.ok) return null;
            const snapshot = await answer.json();
            return typeof snapshot.vnc_password === 'string' ? snapshot.vnc_password : null;
        } catch (e) {
            return null;
        }
    }

    function connect() {
        cancelRetry();
        byUser = false;
        let url = websocketUrl(params, window.location);
        if (token && takeoverNext) {
            url = session.withTakeover(url);
            state = { ...state, takenOver: false, ownTakeovers: state.ownTakeovers + 1 };
        }
        takeoverNext = false;
        failure = null;
        if (startedAt === null) startedAt = Date.now();
        show('connecting', everConnected ? 'Reconnecting\u2026' : `Connecting${name ? ' to ' + name : ''}\u2026`);
        const password = params.get('password');
        try {
            rfb = new RFB(byId('screen'), url, {
                shared: flag(params, 'shared', true),
                credentials: password === null ? undefined : { password },
            });
        } catch (e) {
            show('failed', `Cannot connect: ${e.message}`);
            return;
        }
        const resize = params.get('resize') || 'scale';
        rfb.scaleViewport = resize === 'scale';
        rfb.resizeSession = resize === 'remote';
        rfb.viewOnly = flag(params, 'view_only', false);
        for (const [param, property] of [['quality', 'qualityLevel'], ['compression', 'compressionLevel']]) {
            const level = parseInt(params.get(param), 10);
            if (level >= 0 && level <= 9) rfb[property] = level;
        }
        rfb.addEventListener('connect', () => {
            connected = everConnected = true;
            retry.attempt = 0;
            retry.graceEnds = null;
            if (state.ending) show('ended', session.endingText(state.ending));
            else show('connected', `Connected${name ? ' to ' + name : ''}`);
            rfb.focus();
        });
        rfb.addEventListener('desktopname', (e) => {
            if (!name) document.title = e.detail.name;
        });
        rfb.addEventListener('credentialsrequired', async (e) => {
            const types = e.detail.types || ['password'];
            // A session whose server has a one-time password (a Slurm job's x11vnc): the
            // session's own snapshot gives it to the holder of its token, once a connection.
            const asking = rfb;
            if (token && password === null && !types.includes('username') && asking.nexusAsked !== true) {
                asking.nexusAsked = true;
                const given = await sessionPassword();
                if (given !== null && rfb === asking) {
                    show('connecting', 'Signing in\u2026');
                    asking.sendCredentials({ password: given });
                    return;
                }
                if (rfb !== asking) return;
            }
            usernameInput.hidden = !types.includes('username');
            usernameInput.previousElementSibling.hidden = usernameInput.hidden;
            show('password', `The server asks for ${types.includes('username') ? 'a user name and ' : ''}a password`);
            (usernameInput.hidden ? passwordInput : usernameInput).focus();
        });
        // noVNC 1.4 and later: a server with an RSA key (RA2 security) must be approved.
        rfb.addEventListener('serververification', (e) => {
            const key = e.detail.publickey || new Uint8Array();
            const shown = Array.from(key.slice(0, 16), (b) => b.toString(16).padStart(2, '0')).join(':');
            show('verify', `Trust the server's ${e.detail.type} key ${shown}\u2026?`);
        });
        rfb.addEventListener('securityfailure', (e) => {
            failure = `Authentication failed${e.detail.reason ? ': ' + e.detail.reason : ''}`;
        });
        rfb.addEventListener('disconnect', (e) => {
            const was = root.dataset.state;
            rfb = null;
            connected = false;
            // noVNC calls a close by the server "clean" too (an idle end, a takeover, a
            // lost network): with a token, the session's events and state decide.
            if (failure) show('failed', failure);
            else if (state.ending) show('ended', session.endingText(state.ending));
            else if (byUser) show('disconnected', 'Disconnected');
            else if (token && state.takenOver) takenOver();
            else if (token) lost(was === 'connected' ? 'The connection was lost' : 'Could not connect to the server');
            else if (e.detail.clean) show('disconnected', 'Disconnected');
            else show('failed', was === 'connected' ? 'The connection was lost'
                                                    : 'Could not connect to the server');
        });
    }

    function disconnect() {
        byUser = true;
        cancelRetry();
        if (rfb) rfb.disconnect();
        else show('disconnected', 'Disconnected');
    }

    // --- reconnecting ------------------------------------------------------------

    function lost(text) {
        lostText = text;
        if (everConnected) scheduleRetry();
        else check();  // a first connect that failed: ask at once whether to wait
    }

    function scheduleRetry() {
        const graceLeft = retry.graceEnds !== null ? retry.graceEnds - Date.now()
            : state.graceEnds !== null ? state.graceEnds - Date.now() : null;
        const delay = session.retryDelay(retry.attempt, graceLeft);
        retry.at = Date.now() + delay;
        retry.timer = setTimeout(check, delay);
        show('reconnecting', reconnectText());
    }

    function reconnectText() {
        const left = session.secondsLeft(retry.at, Date.now());
        return `${lostText || 'The connection was lost'}. Reconnecting in ${left} s\u2026`;
    }

    function cancelRetry() {
        if (retry.timer !== null) clearTimeout(retry.timer);
        retry.timer = retry.at = null;
    }

    async function check() {
        retry.timer = retry.at = null;
        const snapshot = await fetchSnapshot();
        if (rfb || byUser || retry.timer !== null || root.dataset.state === 'ended') return;  // overtaken
        if (snapshot && snapshot.state === 'detached' && typeof snapshot.grace_left === 'number') {
            retry.graceEnds = Date.now() + snapshot.grace_left * 1000;
        }
        const decision = session.retryDecision(state, snapshot, everConnected, retry.attempt);
        retry.attempt += 1;
        if (decision === 'connect' || decision === 'takeover') {
            takeoverNext = decision === 'takeover';
            connect();
        } else if (decision === 'wait') {
            scheduleRetry();
        } else if (decision === 'taken-over') {
            takenOver();
        } else if (decision === 'elsewhere') {
            takeoverNext = true;  // Connect takes it over
            show('disconnected', 'This session is open in another window');
        } else if (decision === 'ended' || (decision === 'gone' && everConnected)) {
            show('ended', session.endingText(state.ending));
        } else {
            show('failed', lostText || 'Could not connect to the server');
        }
    }

    function takenOver() {
        cancelRetry();
        takeoverNext = true;  // Connect takes it back
        show('disconnected', 'Another window took this session over');
    }

    // The session's snapshot; null if there is no such session (404), undefined
    // if it could not be asked (the gateway unreachable, the call refused).
    async function fetchSnapshot() {
        try {
            const answer = await fetch(session.apiUrl(api, 'session', token), { cache: 'no-store' });
            if (answer.ok) return await answer.json();
            return answer.status === 404 ? null : undefined;
        } catch (e) {
            return undefined;
        }
    }

    // --- the session's events ----------------------------------------------------

    function subscribe() {
        if (typeof EventSource === 'undefined') return;
        const events = new EventSource(session.apiUrl(api, 'events', token));
        for (const kind of session.EVENTS) {
            events.addEventListener(kind, (message) => {
                let event;
                try {
                    event = JSON.parse(message.data);
                } catch (e) {
                    return;
                }
                if (event.event === 'ended') events.close();  // else EventSource would come back
                received(event);
            });
        }
        // On errors EventSource reconnects by itself (with Last-Event-ID), or, for a
        // refusal (no such session, not ours), gives up: the page works on without.
    }

    function received(event) {
        // No check of ids: EventSource resumes after the last one itself, and a restarted
        // gateway that kept the session counts its events from 1 again.
        const before = state;
        state = session.reduce(state, event, Date.now(), connected);
        root.dataset.session = event.event;
        if (state.time !== before.time || state.idle !== before.idle) note = null;
        if (state.ending && !before.ending) {
            cancelRetry();
            show('ended', session.endingText(state.ending));
        } else {
            render();
        }
    }

    async function call(name, query) {
        try {
            const answer = await fetch(session.apiUrl(api, name, token, query), { cache: 'no-store' });
            let body = null;
            try {
                body = await answer.json();
            } catch (e) {
                body = null;
            }
            return { ok: answer.ok, error: body && body.error ? String(body.error) : `HTTP ${answer.status}` };
        } catch (e) {
            return { ok: false, error: 'the server cannot be reached' };
        }
    }

    // --- what the page shows -----------------------------------------------------

    let shownSteps = null;        // the steps shown, and their texts
    let shownTexts = null;

    function render() {
        const now = Date.now();
        const starting = Boolean(token) && !everConnected && !state.ready && !state.ending
            && root.dataset.state === 'connecting';
        progress.hidden = !starting;
        if (starting) {
            progressTitle.textContent = `Starting ${name || 'the session'}\u2026`;
            // One item a step, changed in place: a batch job's wait in the queue is one
            // step whose text changes with its reason and expected start.
            const texts = state.steps.map((step) => session.stepText(step, now));
            if (shownSteps !== state.steps || texts.join('\n') !== shownTexts) {
                shownSteps = state.steps;
                shownTexts = texts.join('\n');
                const items = progressSteps.children;
                while (items.length > texts.length) items[items.length - 1].remove();
                texts.forEach((text, i) => {
                    const item = items[i] || progressSteps.appendChild(document.createElement('li'));
                    if (item.textContent !== text) item.textContent = text;
                    const kind = (i === texts.length - 1 ? 'current' : 'done')
                        + (state.steps[i] && state.steps[i].queue ? ' queue' : '');
                    if (item.className !== kind) item.className = kind;
                });
            }
            progressElapsed.textContent = session.elapsedText(now - startedAt);
        }
        const texts = session.warningTexts(state, now);
        warning.hidden = texts.length === 0;
        warningText.textContent = texts.join(' \u00b7 ');
        stillHereButton.hidden = !state.idle;
        extendButton.hidden = !state.time || !(extendSeconds > 0);
        warningError.hidden = texts.length === 0 || !note;
        warningError.textContent = note || '';
        if (root.dataset.state === 'reconnecting' && retry.at !== null) status.textContent = reconnectText();
    }

    login.addEventListener('submit', (e) => {
        e.preventDefault();
        if (!rfb) return;
        const credentials = { password: passwordInput.value };
        if (!usernameInput.hidden) credentials.username = usernameInput.value;
        rfb.sendCredentials(credentials);
        passwordInput.value = '';
        show('connecting', 'Checking the password\u2026');
    });
    byId('approve').addEventListener('click', () => {
        if (rfb) { rfb.approveServer(); show('connecting', 'Connecting\u2026'); }
    });
    byId('reject').addEventListener('click', disconnect);
    connectButton.addEventListener('click', () => {
        retry.attempt = 0;
        connect();
    });
    disconnectButton.addEventListener('click', disconnect);
    stillHereButton.addEventListener('click', async () => {
        stillHereButton.disabled = true;
        const answer = await call('touch');  // the `active` event clears the warning
        stillHereButton.disabled = false;
        note = answer.ok ? null : answer.error;
        render();
        if (rfb) rfb.focus();
    });
    extendButton.addEventListener('click', async () => {
        extendButton.disabled = true;
        const answer = await call('extend', { seconds: extendSeconds });  // then `extended`
        extendButton.disabled = false;
        note = answer.ok ? null : answer.error;
        render();
        if (rfb) rfb.focus();
    });

    if (token) {
        subscribe();
        setInterval(render, 250);
    }
    if (flag(params, 'autoconnect', true)) connect();
    else show('idle', 'Not connected');
}

main();
