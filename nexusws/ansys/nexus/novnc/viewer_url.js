// The viewer's query parameters and the WebSocket URL they name: no DOM, no
// noVNC, so Node can test it (tests/test_viewer_js.py).

const TRUE = ['1', 'true', 'yes', 'on'];

// The query parameters, with those of the #fragment (never sent to a server,
// the place for a password) where the query lacks them.
export function readParams(location) {
    const params = new URLSearchParams(location.search);
    for (const [k, v] of new URLSearchParams(location.hash.slice(1))) {
        if (!params.has(k)) params.set(k, v);
    }
    return params;
}

export function flag(params, name, fallback) {
    const value = params.get(name);
    return value === null ? fallback : TRUE.includes(value.toLowerCase());
}

// ws(s)://host:port/path?token=TOKEN for these parameters, seen from a page at
// `location`. As in noVNC's vnc.html, path defaults to "websockify" (nexusws
// ignores it; a front proxy routes on it).
export function websocketUrl(params, location) {
    const secure = flag(params, 'encrypt', location.protocol === 'https:');
    let host = params.get('host') || location.hostname;
    if ((host.match(/:/g) || []).length > 1 && !host.startsWith('[')) host = `[${host}]`;  // IPv6
    const port = params.get('port') || location.port;
    let path = (params.get('path') ?? 'websockify').replace(/^\/+/, '');
    const token = params.get('token');
    if (token) path += (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    return `${secure ? 'wss' : 'ws'}://${host}${port ? ':' + port : ''}/${path}`;
}
