"""The shipped systemd units (config/systemd), read and run for tests as systemd would.

L{stage} lays out what nexusws.service expects -- the site's files under
/etc/nexusws and /srv/nexusws, the credential, the state directory, the
environment -- in a temporary tree, and reads the service's ExecStart=
command line with only those paths and the install prefix moved.
L{activate} runs it the way socket activation does: C{systemd-socket-activate}
listens as the socket units say (their FileDescriptorName=s; a ListenStream=
path as a socket under the test's own root, a TCP address on a free loopback
port), gives each UNIX socket the owner, group and mode of its unit
(SocketUser=, SocketGroup=, SocketMode=), and on the first connection execs
the gateway with the sockets as descriptors 3, 4...
"""

import grp
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from conftest import BIN, ROOT

UNITS = ROOT / "config" / "systemd"
SERVICE = "nexusws.service"
ACTIVATE = shutil.which("systemd-socket-activate")
#: Where the service's ExecStart= expects things (see L{moved}): the install
#: prefix is this virtualenv; the site's directories are made under the test's
#: temporary directory.
PREFIX = "/opt/nexusws/"
SITE_DIRS = ("/etc/nexusws/", "/srv/nexusws/")


def read_unit(path):
    """{(section, key): [values]} as systemd reads a unit file (systemd.syntax(5)):
    comment lines are skipped, even inside a line continued with a backslash."""
    entries, section, pending = {}, None, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")) or (not line and pending is None):
            continue
        if pending is not None:
            line = f"{pending} {line}"
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = None
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def one(unit, section, key, default=None):
    values = unit.get((section, key), [])
    if not values and default is not None:
        return default
    assert len(values) == 1, f"expected one {key}= in [{section}], got {values}"
    return values[0]


def exec_start_words():
    """ExecStart= of the service, split into words (no systemd specifiers or prefixes used)."""
    line = one(read_unit(UNITS / SERVICE), "Service", "ExecStart")
    assert "%" not in line, f"ExecStart= uses a specifier this test does not resolve: {line}"
    words = shlex.split(line)
    assert words[0].startswith(PREFIX), f"ExecStart= does not run from {PREFIX}: {words[0]}"
    return words


def read_env_file(path):
    """KEY=VALUE lines, as systemd's EnvironmentFile= (unquoted values only)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def expand(words, env):
    """systemd's expansion in ExecStart=: a word C{$NAME} becomes the value's
    words (none if unset), split as a command line; C{${NAME}} is replaced in place."""
    out = []
    for word in words:
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            out += shlex.split(env.get(m.group(1), ""))
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def moved(word, tmp):
    """Paths of the unit, as they are in this test: the prefix is this
    virtualenv, the site directories are under C{tmp}."""
    if word.startswith(PREFIX):
        return str(BIN.parent) + "/" + word[len(PREFIX):]
    for site in SITE_DIRS:
        if word.startswith(site):
            return str(tmp) + site.rstrip("/") + "/" + word[len(site):]
    assert not word.startswith("/"), f"a path this test does not know how to stage: {word}"
    return word


def free_ports(count):
    """Ports nothing listens on right now on 127.0.0.1 (the caller retries on a race)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Listener:
    """One socket unit, as this test runs it.

    @ivar unit: the unit's file name; @ivar fdname: its FileDescriptorName=.
    @ivar shipped: its ListenStream= as shipped.
    @ivar path: the UNIX socket's path in this test (its shipped path under the
        test's root), or None for TCP; @ivar port: the TCP port in this test.
    @ivar user, group, mode: SocketUser=, SocketGroup=, SocketMode= (systemd's
        defaults: root, root, 0666)."""

    unit: str
    fdname: str
    shipped: str
    path: Path = None
    port: int = None
    user: str = "root"
    group: str = "root"
    mode: int = 0o666

    @property
    def address(self):
        """What systemd-socket-activate --listen= takes, and says it listens on."""
        return str(self.path) if self.path is not None else f"127.0.0.1:{self.port}"

    def connect(self, timeout=10):
        """A connected client socket (the caller closes it)."""
        if self.path is not None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = str(self.path)
        else:
            s = socket.socket()
            target = ("127.0.0.1", self.port)
        s.settimeout(timeout)
        try:
            s.connect(target)
        except BaseException:
            s.close()
            raise
        return s


def listeners(socket_root):
    """The service's socket units (in its Sockets= order) as L{Listener}s: a
    ListenStream= path is placed under C{socket_root}, which must be short (a
    UNIX socket's path has at most 107 bytes)."""
    found = []
    for name in one(read_unit(UNITS / SERVICE), "Service", "Sockets").split():
        unit = read_unit(UNITS / name)
        listen = one(unit, "Socket", "ListenStream")
        entry = Listener(name, one(unit, "Socket", "FileDescriptorName"), listen,
                         user=one(unit, "Socket", "SocketUser", "root"),
                         group=one(unit, "Socket", "SocketGroup", "root"),
                         mode=int(one(unit, "Socket", "SocketMode", "0666"), 8))
        if listen.startswith("/"):
            entry.path = Path(socket_root) / listen.lstrip("/")
            directory_mode = int(one(unit, "Socket", "DirectoryMode", "0755"), 8)
            for parent in reversed(entry.path.relative_to(socket_root).parents[:-1]):
                (Path(socket_root) / parent).mkdir(exist_ok=True)
                (Path(socket_root) / parent).chmod(directory_mode)
        found.append(entry)
    return found


@dataclass
class Staged:
    """The service ready to run: its command line, environment, and where things are."""

    argv: list
    env: dict
    etc: Path
    www: Path
    state_dir: Path
    listeners: list


def stage(tmp_path, socket_root, options="", token="systemd-test-token"):
    """nexusws.service's files, environment and command line under C{tmp_path}, with
    C{options} as the site's NEXUSWS_OPTIONS (in /etc/nexusws/nexusws.env) and C{token}
    as its credential; the sockets under C{socket_root}."""
    service = read_unit(UNITS / SERVICE)
    etc = tmp_path / "etc" / "nexusws"  # the test may have put the site's files there already
    etc.mkdir(parents=True, exist_ok=True)
    env_file = Path(moved(one(service, "Service", "EnvironmentFile").lstrip("-"), tmp_path))
    assert env_file.parent == etc, env_file
    env_file.write_text(f"NEXUSWS_OPTIONS={options}\n")
    env_file.chmod(0o600)
    # LoadCredential=ID:PATH: systemd copies PATH to $CREDENTIALS_DIRECTORY/ID.
    credential, _, source = one(service, "Service", "LoadCredential").partition(":")
    Path(moved(source, tmp_path)).write_text(token + "\n")
    credentials = tmp_path / "run" / "credentials" / SERVICE
    credentials.mkdir(parents=True)
    shutil.copyfile(moved(source, tmp_path), credentials / credential)
    (credentials / credential).chmod(0o400)

    # The environment systemd gives the service: Environment=, the file,
    # $STATE_DIRECTORY (StateDirectory=, mode StateDirectoryMode=).
    env = {}
    for assignments in service.get(("Service", "Environment"), []):
        env.update(word.partition("=")[::2] for word in shlex.split(assignments))
    env.update(read_env_file(env_file))
    state_dir = tmp_path / "var" / "lib" / one(service, "Service", "StateDirectory")
    state_dir.mkdir(parents=True, mode=int(one(service, "Service", "StateDirectoryMode"), 8))
    env["STATE_DIRECTORY"] = str(state_dir)
    env["CREDENTIALS_DIRECTORY"] = str(credentials)

    argv = expand([moved(word, tmp_path) for word in exec_start_words()], env)
    www = Path(argv[argv.index("--http_directory") + 1])
    www.mkdir(parents=True)
    return Staged(argv, env, etc, www, state_dir, listeners(socket_root))


def activate(gateway, staged, attempts=5):
    """Run the staged service under systemd-socket-activate (a conftest C{gateway});
    once it listens, each UNIX socket gets its unit's owner, group and mode. The
    gateway itself starts on the first connection."""
    for attempt in range(attempts):
        tcp = [entry for entry in staged.listeners if entry.path is None]
        for entry, port in zip(tcp, free_ports(len(tcp)), strict=True):
            entry.port = port
        # systemd-socket-activate passes on PATH, TERM, USER and HOME only: PYTHONPATH too,
        # so that the gateway runs the nexusws under test.
        env = {**staged.env, **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
        command = [ACTIVATE, *(f"--listen={entry.address}" for entry in staged.listeners),
                   "--fdname=" + ":".join(entry.fdname for entry in staged.listeners),
                   *(f"--setenv={k}={v}" for k, v in env.items())]
        gw = gateway(staged.argv, via=command, wait=False, cwd="/")
        try:
            for fd, entry in enumerate(staged.listeners, 3):
                gw.wait_for(rf"Listening on {re.escape(entry.address)} as {fd}\.", timeout=10)
            break
        except AssertionError:
            gw.kill()
            if "Address already in use" not in gw.log or attempt == attempts - 1:
                raise
    for entry in staged.listeners:
        if entry.path is not None:
            if os.geteuid() == 0:  # else the socket stays the test user's, with the unit's mode
                os.chown(entry.path, pwd.getpwnam(entry.user).pw_uid, grp.getgrnam(entry.group).gr_gid)
            entry.path.chmod(entry.mode)
            assert stat.S_ISSOCK(entry.path.stat().st_mode)
    return gw
