// What the portal, the dashboard and the test page work out without the DOM (so
// Node can test it, tests/test_pages_js.py): where the gateway's API, viewer and
// WebSocket are seen from a page of its /ansys/nexus/ tree, and how numbers read.

// The gateway's root path, "/" or "/prefix/" behind a proxy that serves it at a
// prefix: the part of a page's path before /ansys/nexus/.
export function gatewayRoot(pathname) {
    const at = pathname.indexOf('/ansys/nexus/');
    return at < 0 ? '/' : pathname.slice(0, at + 1);
}

// The URL of /v1/CALL[/ARG] under `root`, with `query` (an object) if given.
export function apiPath(root, call, arg, query) {
    const tail = arg === undefined || arg === null ? '' : '/' + encodeURIComponent(arg);
    const search = query && Object.keys(query).length ? '?' + new URLSearchParams(query) : '';
    return `${root}v1/${call}${tail}${search}`;
}

// Where a page at `location` reaches the gateway's WebSocket listener, from the
// "websocket" of /v1/services ({url, port, secure, proxied}): {secure, host, port, path}.
//   url      --advertise_url: that, whatever else
//   proxied  the page came through a proxy: the same origin, at <root>ws/ (the
//            shipped nginx files route /ws/ to the listener, and /<node>/ws/ in a cluster)
//   port     directly: this host, the listener's own port, path websockify
export function websocketPlace(place, location, root) {
    const pageSecure = location.protocol === 'https:';
    if (place && place.url) {
        const url = new URL(place.url);
        return { secure: url.protocol === 'wss:', host: url.hostname, port: url.port,
                 path: url.pathname.replace(/^\/+/, '') + url.search };
    }
    if (place && !place.proxied && place.port) {
        return { secure: Boolean(place.secure), host: location.hostname, port: String(place.port),
                 path: 'websockify' };
    }
    return { secure: pageSecure, host: location.hostname, port: location.port, path: root.slice(1) + 'ws/' };
}

// ws(s)://host[:port]/path for a websocketPlace.
export function websocketUrl(ws) {
    let host = ws.host;
    if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
    return `${ws.secure ? 'wss' : 'ws'}://${host}${ws.port ? ':' + ws.port : ''}/${ws.path}`;
}

// The viewer page (vnc_envision.html) for session `token` of service `name`.
export function viewerUrl(root, token, name, ws, extra) {
    const query = new URLSearchParams({
        host: ws.host, port: ws.port, path: ws.path, encrypt: ws.secure ? '1' : '0',
        token, session_name: name, api: root.replace(/\/+$/, ''), ...(extra || {}),
    });
    return `${root}ansys/nexus/novnc/vnc_envision.html?${query}`;
}

// Seconds as people read them: "45 s", "12 min 5 s", "3 h 04 min", "2 d 3 h".
export function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '\u2013';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// Bytes as people read them: "512 B", "1.5 KB", "20 MB" (powers of 1000).
export function bytes(n) {
    if (n === null || n === undefined || !Number.isFinite(n)) return '\u2013';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let value = Math.max(0, Math.round(n));  // a rate's fraction of a byte is no news
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
        value /= 1000;
        unit += 1;
    }
    return unit === 0 ? `${value} B` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

// Bytes per second between two samples {up, down, at (ms)} of one session: {up, down}, or
// null when there is no earlier sample (or the counters went back: another WebSocket).
export function throughput(before, after) {
    if (!before || !after || after.at <= before.at) return null;
    const seconds = (after.at - before.at) / 1000;
    const up = after.up - before.up;
    const down = after.down - before.down;
    if (up < 0 || down < 0) return null;
    return { up: up / seconds, down: down / seconds };
}

// A session's state in words: "reserved", "starting", "queued: Resources", "running",
// "detached: 42 s left to reconnect", "ending" (its row from /v1/sessions or /v1/admin).
export function stateText(row) {
    if (row.state === 'starting' && row.backend && row.backend.slurm_state === 'PENDING') {
        return `queued${row.queue ? ': ' + row.queue : ''}`;
    }
    if (row.state === 'active') return 'running';
    if (row.state === 'detached') {
        return row.grace_left === null || row.grace_left === undefined ? 'detached'
            : `detached: ${duration(row.grace_left)} left to reconnect`;
    }
    if (row.state === 'stopping') return 'ending';
    return row.state || 'unknown';
}
