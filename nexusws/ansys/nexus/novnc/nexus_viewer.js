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
//                 in the #fragment, which never reaches a server or a log
//   encrypt       wss instead of ws (default: when this page came over https)
//   autoconnect   connect at once (default: true); otherwise a Connect button
//   resize        scale (default), remote (resize the desktop) or off
//   view_only, shared (default true), quality (0-9), compression (0-9)
//   session_name  shown in the title and the status bar
import RFB from './core/rfb.js';
import { flag, readParams, websocketUrl } from './viewer_url.js';

function main() {
    const params = readParams(window.location);
    const root = document.documentElement;
    const status = document.getElementById('status');
    const login = document.getElementById('login');
    const passwordInput = document.getElementById('password');
    const usernameInput = document.getElementById('username');
    const verify = document.getElementById('verify');
    const connectButton = document.getElementById('connect');
    const disconnectButton = document.getElementById('disconnect');
    const name = params.get('session_name');
    let rfb = null;
    let failure = null;

    function show(state, text) {
        root.dataset.state = state;
        status.textContent = text;
        connectButton.hidden = !['idle', 'disconnected', 'failed'].includes(state);
        disconnectButton.hidden = !['connecting', 'password', 'verify', 'connected'].includes(state);
        login.hidden = state !== 'password';
        verify.hidden = state !== 'verify';
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
        rfb.addEventListener('credentialsrequired', (e) => {
            const types = e.detail.types || ['password'];
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
            if (failure) show('failed', failure);
            else if (e.detail.clean) show('disconnected', 'Disconnected');
            else show('failed', was === 'connected' ? 'The connection was lost'
                                                    : 'Could not connect to the server');
        });
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
    document.getElementById('approve').addEventListener('click', () => {
        if (rfb) { rfb.approveServer(); show('connecting', 'Connecting\u2026'); }
    });
    document.getElementById('reject').addEventListener('click', () => { if (rfb) rfb.disconnect(); });
    connectButton.addEventListener('click', connect);
    disconnectButton.addEventListener('click', () => { if (rfb) rfb.disconnect(); });

    if (flag(params, 'autoconnect', true)) connect();
    else show('idle', 'Not connected');
}

main();
