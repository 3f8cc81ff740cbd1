// The reference's test page (/ansys/nexus/test/viewer_test_vnc.html): the upper
// panel's proxy image launches a new session when clicked and becomes its live
// viewer; the lower panel launches one when the page loads and views it.
// ?service=NAME: the service (default envision, a built-in one).
import { call, el, root, text } from './client.js';
import { viewerUrl, websocketPlace } from './places.js';

const byId = (id) => document.getElementById(id);
const service = new URLSearchParams(window.location.search).get('service') || 'envision';
let place = null;

function problem(message) {
    const p = byId('problem');
    p.hidden = !message;
    text(p, message || '');
}

// Reserve an instance and put its viewer in `view` (an element); `state` says how it went.
async function launch(view, state) {
    text(state, 'reserving\u2026');
    if (place === null) {
        const info = await call('services');
        if (!info.ok) {
            text(state, `failed: ${info.error}`);
            return false;
        }
        place = info.body.websocket;
    }
    const answer = await call('reserve', service);
    if (!answer.ok) {
        text(state, `failed: ${answer.error}`);
        problem(`${service}: ${answer.error}`);
        return false;
    }
    const token = answer.body.token;
    const frame = el('iframe', {
        title: `${service} #${answer.body.index}`,
        src: viewerUrl(root, token, `${service} #${answer.body.index}`,
                       websocketPlace(place, window.location, root), { resize: 'scale' }),
    });
    frame.dataset.token = token;
    view.replaceChildren(frame);
    text(state, `${service} #${answer.body.index}`);
    return true;
}

text(byId('service-name'), `Service: ${service}`);
const proxy = byId('proxy');
proxy.addEventListener('click', async () => {
    proxy.disabled = true;
    if (!(await launch(proxy.parentElement, byId('upper-state')))) proxy.disabled = false;
});
launch(byId('lower-view'), byId('lower-state')).then(() => {
    document.documentElement.dataset.state = 'ready';
});
