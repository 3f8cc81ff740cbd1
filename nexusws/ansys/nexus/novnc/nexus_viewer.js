// The nexusws VNC viewer: noVNC's RFB client (./core/rfb.js, from the noVNC
// package the gateway serves beside this file) on a page of its own.
//
// Query (or #fragment) parameters, as the Nexus vnc_envision.html takes them
// and as noVNC's vnc.html does:
//   host, port    the WebSocket listener (default: this page's host and port)
//   path          WebSocket path (default: none; nexusws ignores it, a front
//                 proxy may route on it)
//   token         session token from /v1/reserve, sent as ?token=...
//   password      VNC password (asked for when needed and not given)
//   encrypt       wss instead of ws (default: when this page came over https)
//   autoconnect   connect at once (default: true); otherwise a Connect button
//   resize        scale (default), remote (resize the desktop) or off
//   view_only, shared (default true), quality (0-9), compression (0-9)
//   session_name  shown in the title and the status bar
import RFB from './core/rfb.js';

const TRUE = ['1', 'true', 'yes', 'on'];

export function readParams(location) {
    const params = new URLSearchParams(location.search);
    for (const [k, v] of new URLSearchParams(location.hash.slice(1))) {
        if (!params.has(k)) params.set(k, v);
    }
    return params;
}

function flag(params, name, fallback) {
    const value = params.get(name);
    return value === null ? fallback : TRUE.includes(value.toLowerCase());
}

// The WebSocket URL for these parameters, seen from a page at `location`.
export function websocketUrl(params, location) {
    const secure = flag(params, 'encrypt', location.protocol === 'https:');
    let host = params.get('host') || location.hostname;
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;  // IPv6
    const port = params.get('port') || location.port;
    let path = (params.get('path') || '').replace(/^\/+/, '');
    const token = params.get('token');
    if (token) path += (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    return `${secure ? 'wss' : 'ws'}://${host}${port ? ':' + port : ''}/${path}`;
}

function main() {
    const params = readParams(window.location);
    const root = document.documentElement;
    const status = document.getElementById('status');
    const login = document.getElementById('login');
    const passwordInput = document.getElementById('password');
    const connectButton = document.getElementById('connect');
    const disconnectButton = document.getElementById('disconnect');
    const name = params.get('session_name');
    let rfb = null;
    let failure = null;

    function show(state, text) {
        root.dataset.state = state;
        status.textContent = text;
        connectButton.hidden = !['idle', 'disconnected', 'failed'].includes(state);
        disconnectButton.hidden = !['connecting', 'password', 'connected'].includes(state);
        login.hidden = state !== 'password';
    }

    if (name) document.title = name;

    function connect() {
        const url = websocketUrl(params, window.location);
        failure = null;
        show('connecting', `Connecting${name ? ' to ' + name : ''}\u2026`);
        const password = params.get('password');
        try {
            rfb = new RFB(document.getElementById('screen'), url, {
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
            show('connected', `Connected${name ? ' to ' + name : ''}`);
            rfb.focus();
        });
        rfb.addEventListener('desktopname', (e) => {
            if (!name) document.title = e.detail.name;
        });
        rfb.addEventListener('credentialsrequired', () => {
            show('password', 'The server asks for a password');
            passwordInput.focus();
        });
        rfb.addEventListener('securityfailure', (e) => {
            failure = `Authentication failed${e.detail.reason ? ': ' + e.detail.reason : ''}`;
        });
        rfb.addEventListener('disconnect', (e) => {
            const was = root.dataset.state;
            rfb = null;
            if (failure) show('failed', failure);
            else if (e.detail.clean) show('disconnected', 'Disconnected');
            else show('failed', was === 'connected' ? 'The connection was lost'
                                                    : 'Could not connect to the server');
        });
    }

    login.addEventListener('submit', (e) => {
        e.preventDefault();
        if (rfb) rfb.sendCredentials({ password: passwordInput.value });
        passwordInput.value = '';
        show('connecting', 'Checking the password\u2026');
    });
    connectButton.addEventListener('click', connect);
    disconnectButton.addEventListener('click', () => { if (rfb) rfb.disconnect(); });

    if (flag(params, 'autoconnect', true)) connect();
    else show('idle', 'Not connected');
}

main();
