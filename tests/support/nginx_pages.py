"""nexusws's pages at a path prefix behind a real nginx, and headless Chromium signed in to
it: the helpers of test_nginx_pages.

The test's site serves other things too (its own C{/} and a regular-expression location
for C{.js} and C{.css} files, as sites have), and includes the shipped
config/nginx/prefix-locations.conf verbatim: nexusws at C{/nexus/}. Beside it, the same
file with its prefix changed as its comment says (C{sed 's|/nexus\\b|/remote|g'}) serves
the same gateway at C{/remote/}.

The gateway listens as shipped, on UNIX sockets, trusting nginx's user header from
them, with groups (alice administers: C{--admin_group admins}), the API open to the
users behind nginx (C{--allow_remote_api}), the shipped desktop service (Xvfb + x11vnc,
config/scripts/x11vnc_desktop_session.py) and, for a WebSocket without a token, a
greeting backend (basic mode, C{--client_port}).

The browser is Debian's Chromium through Playwright (never a downloaded one), a context
per user with their HTTP Basic credentials (Playwright's C{http_credentials}).

A test module imports the fixtures C{prefix_front} and C{browser} as C{prefix_front_fixture}
and C{browser_fixture}, and C{novnc} from L{support.browser} (C{prefix_front} asks for it).
"""

import json
import os
import random
import re
import shutil
import subprocess
import urllib.parse

import pytest

from conftest import ROOT, require
from support.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, playwright
from support.desktop import COLOUR, free_display
from support.nginx_front import Greeters, Nginx, basic, get_through, nginx_binary, short_tempdir, unix_listening
from support.sessions import descendants
from support.waiting import wait_until

PREFIX = "/nexus/"
OTHER_PREFIX = "/remote/"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
GROUPS = {"admins": ["alice"]}
SERVICE = "Local Software Session"
SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
#: What the greeting backend of basic mode says first.
GREETING = "basic mode backend"
#: nginx log lines that say something went wrong (an upstream refused, a bad config...).
NGINX_TROUBLE = re.compile(r"\[(?:error|crit|alert|emerg)\]")


def other_prefix_copy(conf_dir):
    """conf/remote-locations.conf: the shipped file with its prefix changed by the very
    command its comment gives."""
    out = subprocess.run(["sed", r"s|/nexus\b|/remote|g", str(conf_dir / "nexusws" / "prefix-locations.conf")],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    (conf_dir / "remote-locations.conf").write_text(out)
    return "remote-locations.conf"


def site(port, http_socket, ws_socket, own_files, other):
    """The test's http {} block: the upstreams, and a site with things of its own and nexusws
    at /nexus/ (the shipped file, verbatim) and at /remote/ (its copy, C{other})."""
    return (
        f"upstream nexusws_http {{ server unix:{http_socket}; }}\n"
        f"upstream nexusws_ws {{ server unix:{ws_socket}; }}\n"
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    server_name localhost;\n"
        "    location / {\n"
        "        return 200 \"the rest of the site\\n\";\n"
        "    }\n"
        "    location ~* \\.(?:js|css)$ {             # the site's own scripts and styles\n"
        f"        root {own_files};\n"
        "    }\n"
        "    include nexusws/prefix-locations.conf;  # the shipped file, verbatim\n"
        f"    include {other};\n"
        "}\n"
    )


class PrefixFront:
    """nginx on 127.0.0.1:{port} with nexusws (C{gw}) at /nexus/; C{display}: the desktop's X display."""

    def __init__(self, nginx, port, gw, display):
        self.nginx, self.port, self.gw, self.display = nginx, port, gw, display
        self.origin = f"http://127.0.0.1:{port}"

    def url(self, path):
        """The URL of C{path} below the prefix (C{"ansys/nexus/"}: /nexus/ansys/nexus/)."""
        return f"{self.origin}{PREFIX}{path}"

    def get(self, target, user=None, headers=()):
        """GET C{target} through nginx as C{user}: (status, headers with lower-case names, body)."""
        return get_through(self.port, target, None if user is None else basic(user, PASSWORDS[user]), headers)

    def api(self, call, user):
        """GET /nexus/v1/{call} as C{user}: (status, JSON)."""
        status, _, body = self.get(f"{PREFIX}v1/{call}", user)
        return status, json.loads(body)

    def reserve(self, user):
        status, body = self.api(f"reserve/{SERVICE.replace(' ', '%20')}", user)
        assert status == 200, body
        return body["token"]

    def http_lines(self):
        """The gateway's access log lines (each request that reached its HTTP listener)."""
        return [line for line in self.gw.log.splitlines() if "[nexusws.web#info] http " in line]

    def desktop_processes(self):
        """The pids of the gateway's desktops: the Xvfb and x11vnc below it (not another test's)."""
        return desktop_pids(descendants(self.gw.proc.pid))


def desktop_pids(pids):
    """Those of C{pids} that are live Xvfb or x11vnc processes."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                program = os.path.basename(f.read().split(b"\0")[0])
        except OSError:
            continue
        if program in (b"Xvfb", b"x11vnc"):
            found.append(pid)
    return found


@pytest.fixture(name="prefix_front")
def prefix_front_fixture(gateway, tmp_path, novnc):
    """nexusws (desktop service, noVNC tree C{novnc}) behind nginx at /nexus/; stopped after,
    and nginx's error log must be clean."""
    require(nginx_binary() is not None, "nginx (apt-get install nginx)")
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    greeters = Greeters()
    with short_tempdir() as sockets:
        # Not the first free display from 300, which other desktop tests running at the
        # same time take too (the script refuses a display in use).
        display = free_display(start=random.randrange(400, 900))
        options = {"sizes": ["800x600"], "display_base": display, "background": COLOUR}
        (tmp_path / "services.json").write_text(
            json.dumps({SERVICE: {"script": str(SCRIPT), "count": 1, "options": options}}))
        (tmp_path / "groups.json").write_text(json.dumps(GROUPS))
        (tmp_path / "www").mkdir()
        own = tmp_path / "own"
        own.mkdir()
        (own / "site.js").write_text("// the site's own\n")
        http_socket, ws_socket = sockets / "http.sock", sockets / "ws.sock"
        gw = gateway(["--http_directory", str(tmp_path / "www"), "--novnc_dir", str(novnc),
                      "--http_listen", f"unix:{http_socket}:mode=600", "--ws_listen", f"unix:{ws_socket}:mode=600",
                      "--state_file", str(tmp_path / "state.json"),
                      "--remote_session_config", str(tmp_path / "services.json"),
                      "--trusted_proxy", "unix", "--user_header", "X-Remote-User", "--allow_remote_api",
                      "--groups_file", str(tmp_path / "groups.json"), "--admin_group", "admins",
                      "--client_hostname", "127.0.0.1", "--client_port", str(greeters.add(GREETING))],
                     wait=False)
        unix_listening(gw, "--ws_listen", ws_socket)
        unix_listening(gw, "--http_listen", http_socket)
        nginx = Nginx(tmp_path / "nginx")
        try:
            port = nginx.listen()
            nginx.users(PASSWORDS)
            nginx.start(site(port, http_socket, ws_socket, own, other_prefix_copy(nginx.conf_dir)))
            front = PrefixFront(nginx, port, gw, display)
            yield front
            desktops = front.desktop_processes()
            assert gw.stop() == 0  # SIGTERM: the gateway ends its sessions, then exits
            wait_until(lambda: not desktop_pids(desktops), 15, f"the desktop processes {desktops} to end")
        finally:
            nginx.stop()
            greeters.close()
        trouble = [line for line in nginx.errors().splitlines() if NGINX_TROUBLE.search(line)]
        assert trouble == [], "\n".join(trouble)


def target_of(url):
    """The path and query of C{url}."""
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Signed:
    """A browser context signed in as one user; L{open} a page. C{errors}: the pages' uncaught
    errors; C{console}: their console messages (type, text); C{sockets}: their WebSocket URLs;
    C{requests}: the paths (with queries) of their HTTP requests; C{streams}: those of their
    EventSources."""

    def __init__(self, context):
        self.context = context
        self.errors, self.console, self.sockets, self.requests, self.streams = [], [], [], [], []
        context.on("page", self._watch)
        context.on("request", self._request)

    def _request(self, request):
        self.requests.append(target_of(request.url))
        if request.resource_type == "eventsource":
            self.streams.append(target_of(request.url))

    def _watch(self, page):
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.set_default_timeout(TIMEOUT_MS)

    def open(self, url, awaited=None):
        """A new page at C{url}; with C{awaited} (a predicate on a response), once it has that
        response too. Returns (page, the main document's response)."""
        page = self.context.new_page()
        if awaited is None:
            return page, page.goto(url)
        with page.expect_response(awaited):
            answer = page.goto(url)
        return page, answer

    def problems(self):
        """Uncaught errors and console errors (but the browser's own about a refused resource)."""
        return self.errors + [text for kind, text in self.console if kind == "error"
                              and not text.startswith("Failed to load resource: the server responded")]


@pytest.fixture(name="browser")
def browser_fixture():
    """C{browser(user)}: a fresh L{Signed} context of headless Chromium as C{user} (None: no credentials)."""
    with playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            def signed_in(user):
                credentials = None if user is None else {"username": user, "password": PASSWORDS[user]}
                return Signed(chromium.new_context(http_credentials=credentials,
                                                   viewport={"width": 1024, "height": 768}))
            yield signed_in
        finally:
            chromium.close()
