"""Local users against the shipped single-host deployment, for real.

The host that runs the desktop sessions has users with shells. One of them,
the intruder (the system's C{nobody}, in no other group), tries what a hostile
review found possible: connect to the gateway directly and name another user
in X-Remote-User (taking over their sessions), or come through nginx and pass
for a local caller, who sees every token and may stop the gateway.

The deployment is the shipped one: nexusws.service's command line under socket
activation with its two socket units' paths, owner, group and mode
(L{support.shipped_units}), and config/nginx/nexusws.conf in a real nginx whose
workers run as www-data, the sockets' group, exactly as Debian's nginx does.
Only the paths move (under a temporary root), and the site's ports and
certificate. Every client of the intruder runs as the intruder
(C{setpriv --reuid --regid --clear-groups}): a stdlib-only Python for raw
connections, curl for HTTP through nginx. Users' passwords: alice, and bob
(the intruder's own web account).

Needs root (to run clients as other users) and, like the rest of the suite,
nginx and systemd-socket-activate.
"""

import asyncio
import grp
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect

from conftest import require
from nexusws.sessions import procs
from support.nginx_front import (
    CONFIG_DIR,
    FIXED_SCRIPT,
    Greeters,
    Nginx,
    adapt_site,
    basic,
    nginx_binary,
    short_tempdir,
    unix_get,
)
from support.shipped_units import ACTIVATE, activate, stage

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
GROUPS = {"ClusterRendering": ["alice"]}
TOKEN = "local-users-test-security-token"
INTRUDER = "nobody"
USER_HEADER = "X-Remote-User"
#: The intruder's forgeries: another user, and a local client's address.
FORGED = [f"{USER_HEADER}: alice", "X-Forwarded-For: 127.0.0.1"]
#: A location the shipped site does not have (test only): everything, /v1/stop
#: included, to the HTTP listener with the shipped proxy settings, to show what
#: nexusws decides itself where nginx would let a call through.
UNGUARDED = ("    location /unguarded/ {\n"
             "        proxy_pass http://nexusws_http/;\n"
             "        include nexusws/proxy-http.conf;\n"
             "    }\n")
#: A raw connection attempt: "connected", or the errno's name. Standard library only
#: (the intruder cannot run this suite's virtualenv).
PROBE = """\
import errno, socket, sys
target = sys.argv[1]
if target.startswith("/"):
    s, address = socket.socket(socket.AF_UNIX), target
else:
    host, _, port = target.rpartition(":")
    s, address = socket.socket(), (host, int(port))
s.settimeout(10)
try:
    s.connect(address)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
else:
    print("connected")
"""


@dataclass
class Account:
    """Who a client runs as: uid, gid, supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: list = field(default_factory=list)

    def prefix(self):
        groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
        return [shutil.which("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}", groups, "--"]

    def run(self, argv, timeout=30):
        done = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=False)
        return done


def account(name, groups=()):
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid, list(groups))


@pytest.fixture(scope="session")
def local_users():
    """The intruder (nobody), nginx's user (www-data) and a Python both can run."""
    require(os.geteuid() == 0, "root, to run clients as other local users (setpriv)")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    require(shutil.which("curl") is not None, "curl")
    intruder = account(INTRUDER)
    assert intruder.uid != 0 and not [g.gr_name for g in grp.getgrall() if INTRUDER in g.gr_mem], \
        f"{INTRUDER} must be in no supplementary group"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for python in (sys.executable, "/usr/bin/python3", f"/usr/bin/python{version}"):
        if intruder.run([python, "-I", "-c", "import socket"]).returncode == 0:
            return intruder, python
    pytest.fail(f"no Python that user {INTRUDER} can run")


def owner(pid):
    """The real uid of process C{pid}."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def probe(who, python, target):
    done = who.run([python, "-I", "-c", PROBE, str(target)])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Deployment:
    """The shipped service (socket-activated) and, once L{front} has started it, the
    shipped nginx site in front."""

    def __init__(self, gw, staged, front):
        self.gw, self.staged, self._front = gw, staged, front
        self.socket = {entry.fdname: entry.path for entry in staged.listeners}
        self.nginx = self.port = self.ca = None

    def front(self, locations=""):
        """Start nginx with the shipped site (and C{locations}, test only, in its TLS server)."""
        self.nginx, self.port, self.ca = self._front(self, locations)
        return self

    def curl(self, who, target, user, headers=(), websocket=False):
        """C{who} (an L{Account}) runs curl through nginx as web user C{user}: (status, body);
        for a WebSocket handshake the body is the response head (nexusws's reason is in
        its status line)."""
        argv = ["curl", "-sS", "--http1.1", "--max-time", "5", "--cacert", str(self.ca),
                "-u", f"{user}:{PASSWORDS[user]}", "-w", "\n%{http_code}"]
        if websocket:
            argv += ["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
                     "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "-i"]
        for header in headers:
            argv += ["-H", header]
        done = who.run([*argv, f"https://127.0.0.1:{self.port}{target}"])
        body, _, status = done.stdout.rpartition("\n")
        assert status.isdigit() and status != "000", (done.returncode, done.stderr)
        return int(status), body

    def direct(self, target):
        """GET on the gateway's HTTP socket as root, with the security token if there is one."""
        headers = {"Authorization": f"Bearer {TOKEN}"} if "--security_token_file" in self.staged.argv else {}
        status, body = unix_get(self.socket["http"], target, headers)
        return status, json.loads(body)

    def session(self, token, user):
        """Open C{token}'s WebSocket through nginx as C{user} (root's client): its greeting."""
        context = ssl.create_default_context(cafile=str(self.ca))

        async def greeting():
            async with connect(f"wss://127.0.0.1:{self.port}/websockify?token={token}", ssl=context,
                               subprotocols=["binary"], open_timeout=10,
                               additional_headers=[("Authorization", basic(user, PASSWORDS[user]))]) as ws:
                return (await asyncio.wait_for(ws.recv(), 10)).decode().strip()

        return asyncio.run(asyncio.wait_for(greeting(), 20))


@pytest.fixture
def deploy(gateway, tmp_path, local_users):
    """C{deploy(options, security_token=True)}: the deployment (L{Deployment}), with the site's
    sessions "open" (2) and "render" (1, group ClusterRendering) and C{options} in
    NEXUSWS_OPTIONS; without C{security_token}, the service's --security_token_file is
    left out (the README's other way: browsers reserve through nginx, --allow_remote_api)."""
    require(ACTIVATE is not None, "systemd-socket-activate (apt-get install systemd)")
    require(nginx_binary() is not None, "nginx (apt-get install nginx)")
    from support.tls import make_cert

    greeters, nginxes = Greeters(), []
    with short_tempdir() as root:  # 0755, like /run: the socket's own mode decides

        def start(options="", security_token=True):
            etc = tmp_path / "etc" / "nexusws"
            etc.mkdir(parents=True)
            (etc / "fixed_ports.py").write_text(FIXED_SCRIPT)
            (etc / "services.json").write_text(json.dumps({
                "open": {"script": "fixed_ports.py", "count": 2,
                         "options": {"ports": [greeters.add("open 0"), greeters.add("open 1")]}},
                "render": {"script": "fixed_ports.py", "count": 1,
                           "options": {"ports": [greeters.add("render 0")], "group": "ClusterRendering"}},
            }))
            (etc / "groups.json").write_text(json.dumps(GROUPS))
            site_options = (f"--remote_session_config {etc / 'services.json'} "
                            f"--groups_file {etc / 'groups.json'} {options}")
            staged = stage(tmp_path, root, site_options, token=TOKEN)
            if not security_token:
                at = staged.argv.index("--security_token_file")
                del staged.argv[at:at + 2]
            return Deployment(activate(gateway, staged), staged, front)

        def front(deployment, locations):
            """nginx, its workers as the sockets' group's user (Debian: www-data)."""
            staged, sockets = deployment.staged, deployment.socket
            worker = staged.listeners[0].group  # Debian: the user www-data, of group www-data
            nginx = Nginx(root / "nginx", user=worker)
            nginxes.append(nginx)
            http_port, https_port = nginx.listen(), nginx.listen()
            nginx.users(PASSWORDS)
            cert, key = make_cert(tmp_path)
            ca = root / "ca.pem"
            shutil.copyfile(cert, ca)
            ca.chmod(0o644)
            (nginx.conf_dir / "site.conf").write_text(adapt_site(
                (CONFIG_DIR / "nexusws.conf").read_text(), sockets.get("http"), sockets.get("ws"),
                http_port, https_port, cert, key, nginx.logs, locations))
            nginx.start("include site.conf;\n")
            workers = procs.descendants(nginx.proc.pid)
            assert workers and {owner(p) for p in workers} == {pwd.getpwnam(worker).pw_uid}, \
                "nginx's workers run as the sockets' group's user"
            return nginx, https_port, ca

        try:
            yield start
        finally:
            for nginx in nginxes:
                nginx.stop()
            greeters.close()


def test_on_the_shipped_sockets_a_local_user_cannot_reach_the_gateway_nor_pose_as_another(
        deploy, local_users):
    """The shipped layout: the intruder cannot even connect to either socket (EACCES: mode
    0660, group www-data), while www-data (nginx) and any member of its group can; nginx,
    talking to them as www-data, carries alice's session; the intruder, through nginx as
    his own web user bob, forging alice and a local address, is refused her session."""
    intruder, python = local_users
    d = deploy("--allowed_host 127.0.0.1")  # nginx comes later: nothing but the sockets yet
    nginx_user = account(d.staged.listeners[0].group)
    member = account(INTRUDER, [grp.getgrnam(d.staged.listeners[0].group).gr_gid])
    for entry in d.staged.listeners:
        outcome = probe(intruder, python, entry.address)
        assert outcome == "EACCES", (
            f"{INTRUDER} ({outcome}) on {entry.unit} ({entry.shipped}): every local user reaches the "
            "gateway around nginx and may name any user")
        assert probe(nginx_user, python, entry.address) == "connected", entry.unit
        assert probe(member, python, entry.address) == "connected", f"{entry.unit}: the group decides"
    assert intruder.run(["test", "-S", str(d.socket["http"])]).returncode == 0, \
        "the path is open to him: the socket's own mode and group refuse him"

    # The Nexus server's way (the service has a security token): reserve for alice.
    d.front()
    status, body = d.direct("/v1/reserve/render?user=alice")
    assert status == 200, body
    alices = body["token"]

    # The intruder, with alice's token (say it leaked), through nginx, forging her name.
    status, body = d.curl(intruder, f"/websockify?token={alices}", "bob", FORGED, websocket=True)
    assert status == 403 and "reserved by another user" in body
    d.gw.wait_for(r"session WebSocket refused: 127\.0\.0\.1 as 'bob', for render#0: this token was "
                  r"reserved by another user")
    for target in ("/v1/status", f"/v1/release/{alices}", "/v1/stop"):
        status, body = d.curl(intruder, target, "bob", FORGED)
        assert status in (401, 403) and alices not in body, target  # the API needs the token
    assert d.direct("/v1/status")[1][1]["instances"][0]["state"] == "reserved", "nothing launched"

    # alice herself, through nginx, whose workers reach the sockets as www-data.
    assert d.session(alices, "alice") == "render 0"
    assert d.gw.proc.poll() is None


def test_through_nginx_a_local_user_is_one_of_nginx_s_users_never_the_operator(deploy, local_users):
    """Browsers reserving through nginx (no security token, --allow_remote_api): nginx
    replaces the intruder's forged X-Remote-User with his own web user, bob, and forwards
    him as 127.0.0.1, yet he is no local caller: he sees no other user's token, cannot
    reserve alice's group service, release her token or open her session, and /v1/stop
    is 403, from nginx and, where nginx would pass it, from nexusws itself."""
    intruder, _ = local_users
    d = deploy("--allowed_host 127.0.0.1 --allow_remote_api", security_token=False).front(UNGUARDED)
    status, body = d.curl(account("root"), "/v1/reserve/render", "alice")
    assert status == 200, body
    alices = json.loads(body)["token"]

    for prefix in ("", "/unguarded"):
        status, body = d.curl(intruder, f"{prefix}/v1/status", "bob", FORGED)
        assert status == 200 and alices not in body, prefix
        assert [i["token"] for s in json.loads(body) for i in s["instances"]] == ["***"]
    status, body = d.curl(intruder, "/v1/reserve/render", "bob", FORGED)
    assert (status, json.loads(body)) == (403, {"error": "user 'bob' is not a member of group 'ClusterRendering'"})
    status, body = d.curl(intruder, f"/v1/release/{alices}", "bob", FORGED)
    assert (status, json.loads(body)) == (403, {"error": "this token was reserved by another user"})
    status, body = d.curl(intruder, f"/websockify?token={alices}", "bob", FORGED, websocket=True)
    assert status == 403 and "reserved by another user" in body
    status, body = d.curl(intruder, "/v1/stop", "bob", FORGED)
    assert status == 403 and "nginx" in body
    status, body = d.curl(intruder, "/unguarded/v1/stop", "bob", FORGED)
    assert status == 403 and "needs the security token" in json.loads(body)["error"]
    d.gw.wait_for(r"/v1/stop refused: 127\.0\.0\.1 as 'bob'")
    assert d.gw.proc.poll() is None, "the gateway still runs"

    # alice sees her token, and opens her session; the operator (root, on the socket) sees all.
    status, body = d.curl(account("root"), "/v1/status", "alice")
    assert status == 200 and alices in body
    assert d.direct("/v1/status")[1][1]["instances"][0]["token"] == alices
    assert d.session(alices, "alice") == "render 0"
