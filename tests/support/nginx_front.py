"""A real nginx in front of nexusws for tests, from the shipped config/nginx/ files.

L{Nginx} runs nginx in the foreground under a temporary prefix. Its
configuration directory holds the test's own nginx.conf, the htpasswd file and
C{nexusws/}, a symlink to config/nginx/: the shipped files are included
verbatim, exactly as an operator installs them in /etc/nginx/nexusws/.

Ports: nginx cannot listen on port 0 and report the port, so the test binds and
listens on 127.0.0.1:0 itself and hands the listening sockets to nginx through
the C{NGINX} environment variable (the inherited-sockets mechanism of nginx's
binary upgrade: C{NGINX="3;4;"}); the C{listen} directives name the same
addresses, so nginx adopts the sockets instead of binding. No race, no retry,
and connections made before nginx is up simply wait in the backlog.

The gateway behind it listens as shipped: on UNIX sockets (L{short_tempdir}
holds them: a socket's path has at most 107 bytes, which pytest's tmp_path
may exceed), the upstreams are C{server unix:PATH;}.
"""

import asyncio
import base64
import hashlib
import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT, echo_stream

CONFIG_DIR = ROOT / "config" / "nginx"


def nginx_binary():
    """The nginx program (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def adapt(text, replacements, name):
    """A shipped site with the test's values: each C{(pattern, replacement)} must match once at least."""
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        assert count, f"{name} no longer has {pattern!r}"
    return text


#: The gateway's sockets in the shipped site's upstreams (config/nginx/nexusws.conf).
SHIPPED_HTTP_SOCKET, SHIPPED_WS_SOCKET = "/run/nexusws/http.sock", "/run/nexusws/ws.sock"


def adapt_site(text, http_socket, ws_socket, http_port, https_port, cert, key, logs, locations=""):
    """config/nginx/nexusws.conf with the test's gateway sockets, ports, certificate and log
    directory, and C{locations} (test-only) added to its TLS server; nothing else changed."""
    replacements = [
        (r"access_log +/var/log/nginx/", f"access_log {logs}/"),
        (rf"server unix:{re.escape(SHIPPED_HTTP_SOCKET)};", f"server unix:{http_socket};"),
        (rf"server unix:{re.escape(SHIPPED_WS_SOCKET)};", f"server unix:{ws_socket};"),
        (r"listen +80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen +443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (r"listen +\[::\]:\d+( ssl)?;", ""),
        (r"ssl_certificate +\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key +\S+;", f"ssl_certificate_key {key};"),
        (r"(\n *include nexusws/locations\.conf;\n)", lambda m: m.group(1) + locations),
    ]
    return adapt(text, replacements, "nexusws.conf")


@contextmanager
def short_tempdir(prefix="nx-", mode=0o755):
    """A fresh directory under /tmp with a short path (for UNIX sockets), C{mode}; removed after."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(mode)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unix_listening(gw, label, path, timeout=15.0):
    """Wait until gateway C{gw} says its C{label} (--ws_listen...) listens on the UNIX socket C{path}."""
    return gw.wait_for(rf"{re.escape(label)} listening on .*{re.escape(str(path))}", timeout=timeout)


class UnixHTTPConnection(http.client.HTTPConnection):
    """An C{http.client} connection over a UNIX socket (the Host header is C{host})."""

    def __init__(self, path, host="localhost", timeout=10):
        super().__init__(host, timeout=timeout)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def unix_get(path, target, headers=None):
    """GET C{target} over the UNIX socket C{path}: (status, body bytes)."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", target, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def get_through(port, target, authorization=None, headers=()):
    """GET C{target} from 127.0.0.1:C{port} (nginx), with C{authorization} and C{headers}
    (names may repeat): (status, headers with lower-case names, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        if authorization is not None:
            conn.putheader("Authorization", authorization)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def basic(user, password):
    """An C{Authorization} header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Nginx:
    """One nginx (master and one worker) under C{prefix}; L{stop} ends it and its workers.

    Use: C{port = n.listen()} for each server address, C{n.users(...)}, then
    C{n.start(http_block)} where the block's C{listen} directives use the ports.
    """

    def __init__(self, prefix, user=None):
        self.prefix = Path(prefix)
        self.user = user  # the workers' user (as root); None: the current user
        self.conf_dir = self.prefix / "conf"
        self.logs = self.prefix / "logs"
        for d in (self.conf_dir, self.logs, self.prefix / "temp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "nexusws").symlink_to(CONFIG_DIR, target_is_directory=True)
        self.error_log = self.logs / "error.log"
        self.access_log = self.logs / "access.log"
        self.sockets = []
        self.proc = None

    def listen(self):
        """A listening socket on 127.0.0.1:0 for nginx to inherit; its port."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        self.sockets.append(s)
        return s.getsockname()[1]

    def users(self, passwords):
        """Write conf/nexusws.htpasswd ({SHA} scheme) for C{{user: password}}."""
        lines = [f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(pw.encode()).digest()).decode()}\n"
                 for user, pw in passwords.items()]
        path = self.conf_dir / "nexusws.htpasswd"
        path.write_text("".join(lines))
        return path

    def main_conf(self, http_block):
        temp = self.prefix / "temp"
        # As root the workers would become "nobody", who cannot read the test's
        # private temporary directory: keep them as the current user, unless the
        # test names theirs (and makes the prefix theirs to read).
        worker = self.user or pwd.getpwuid(os.geteuid()).pw_name
        user = f"user {worker};\n" if os.geteuid() == 0 else ""
        return (
            f"{user}"
            "daemon off;\n"
            "master_process on;\n"
            "worker_processes 1;\n"
            f"pid {self.prefix / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            f"    client_body_temp_path {temp / 'body'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"{http_block}\n"
            "}\n"
        )

    def start(self, http_block, timeout=10.0):
        """Write nginx.conf around C{http_block} and run nginx until its worker is up."""
        conf = self.conf_dir / "nginx.conf"
        conf.write_text(self.main_conf(http_block))
        fds = [s.fileno() for s in self.sockets]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NGINX": "".join(f"{fd};" for fd in fds)}
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-e", str(self.logs / "early.log"), "-c", str(conf)],
            env=env, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        for s in self.sockets:  # nginx holds them now
            s.close()
        self.sockets = []
        deadline = time.monotonic() + timeout
        while "start worker process" not in self.errors():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"nginx did not start:\n{self.errors()}")
            time.sleep(0.02)
        return self

    def errors(self):
        """nginx's error log so far (its early log too)."""
        text = ""
        for path in (self.logs / "early.log", self.error_log):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def stop(self, timeout=10.0):
        """SIGTERM (nginx's fast shutdown), then SIGKILL to the whole process group if need be."""
        for s in self.sockets:
            s.close()
        self.sockets = []
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the master ends its workers, then itself
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the workers share the master's group
            self.proc.wait(5)
            raise AssertionError(f"nginx did not stop within {timeout}s:\n{self.errors()}") from None


class Greeters:
    """Loopback TCP services (asyncio, in a thread) that send C{label\\n} on connect, then echo.

    C{port = g.add(label)}; L{close} ends them and their connections."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.servers, self.writers = [], set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def add(self, label):
        async def serve(reader, writer):
            await echo_stream(reader, writer, self.writers, label.encode() + b"\n")

        async def start():
            return await asyncio.start_server(serve, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def close(self):
        async def stop():
            for server in self.servers:
                server.close()
            for writer in list(self.writers):
                writer.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


#: A service script for the tests: instance i of a service is the TCP service
#: at the i-th of its C{ports} option (started by the test; nothing to launch).
FIXED_SCRIPT = '''\
from nexusws.services import RemoteServiceScript


class FixedPorts(RemoteServiceScript):
    def start(self, index, options):
        return ("127.0.0.1", int(self._common_options["ports"][index]))

    def stop(self, index):
        return None
'''
