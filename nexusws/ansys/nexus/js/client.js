// The pages' side of the /v1 API: calls, live views, the security token.
//
// A page opened with ?security_token=KEY (the operator's, on a gateway reached
// directly) sends it with each call as Authorization: Bearer, never in a URL;
// behind a proxy that names the user (nginx), none is needed, and this would
// replace the user's own credentials: there, administrators are --admin_group's.
import { apiPath, gatewayRoot } from './places.js';

export const root = gatewayRoot(window.location.pathname);
const securityToken = new URLSearchParams(window.location.search).get('security_token');

function headers() {
    return securityToken ? { Authorization: `Bearer ${securityToken}` } : {};
}

// GET /v1/NAME[/ARG]?QUERY: {ok, status, body, error} (error: the gateway's words, or why it
// could not be asked).
export async function call(name, arg, query) {
    let answer;
    try {
        answer = await fetch(apiPath(root, name, arg, query), { cache: 'no-store', headers: headers() });
    } catch (e) {
        return { ok: false, status: 0, body: null, error: 'the gateway cannot be reached' };
    }
    let body = null;
    try {
        body = await answer.json();
    } catch (e) {
        body = null;
    }
    const error = answer.ok ? null : (body && body.error ? String(body.error) : `HTTP ${answer.status}`);
    return { ok: answer.ok, status: answer.status, body, error };
}

// A live view of /v1/NAME (sessions, admin): onSnapshot(value) at once and at each change.
// If the stream is refused or cannot be kept, onProblem(text) says why, and the view
// falls back to asking every `every` ms. Returns {close()}.
export function watch(name, onSnapshot, onProblem, every = securityToken ? 1000 : 3000) {
    let source = null;
    let timer = null;
    let closed = false;

    async function poll() {
        const answer = await call(name);
        if (closed) return;
        if (answer.ok) onSnapshot(answer.body);
        else onProblem(answer.error);
        timer = setTimeout(poll, every);
    }

    // With the security token, asked every `every` ms with it in a header: an EventSource
    // cannot send one, and in its URL the token would reach logs (a proxy's error log).
    if (typeof EventSource === 'undefined' || securityToken) {
        poll();
    } else {
        source = new EventSource(apiPath(root, name));
        source.addEventListener('snapshot', (message) => {
            try {
                onSnapshot(JSON.parse(message.data));
            } catch (e) {
                onProblem('an unreadable answer');
            }
        });
        source.addEventListener('error', async () => {
            if (source.readyState !== EventSource.CLOSED || closed) return;  // it reconnects by itself
            const answer = await call(name);  // why: a refusal's words
            if (closed) return;
            if (answer.ok) {
                onSnapshot(answer.body);
                timer = setTimeout(poll, every);
            } else {
                onProblem(answer.error);
            }
        });
    }
    return {
        close() {
            closed = true;
            if (source) source.close();
            if (timer !== null) clearTimeout(timer);
        },
    };
}

// Text for an element, never markup.
export function text(element, value) {
    if (element.textContent !== value) element.textContent = value;
}

// A new element: el('td', {className: 'x'}, 'text', child...).
export function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
        if (child === null || child === undefined) continue;
        node.append(child instanceof Node ? child : String(child));
    }
    return node;
}

// Fill a table's `body` with `trs` (the rows, kept elements updated in place by the caller), or
// with one row saying `none` across `span` columns; the DOM is touched only when that changes.
export function showRows(body, trs, none, span) {
    if (!trs.length) {
        if (!body.querySelector('tr[data-none]')) {  // not yet: the page's Loading row, or rows
            const tr = el('tr', { className: 'empty' }, el('td', { colSpan: span }, none));
            tr.dataset.none = '';
            body.replaceChildren(tr);
        }
        return;
    }
    const current = Array.from(body.children);
    if (current.length !== trs.length || current.some((tr, i) => tr !== trs[i])) body.replaceChildren(...trs);
}
