"""A remote desktop per session: Xvfb plus an x11vnc bound to 127.0.0.1.

The reference's "Local Software Session". Common options (from the service
config file):

  sizes         screen sizes offered, e.g. ["1280x1024", "1600x1200"]; the
                first is the default (default: ["1280x1024"])
  display_base  X display number of instance 0; instance i uses
                display_base + i (default: 100)
  vnc_port_base VNC port of instance 0; instance i uses vnc_port_base + i
                (default: any free loopback port)
  depth         colour depth (default: 24)
  start_timeout seconds to wait for Xvfb and x11vnc (default: 20)
  background    fill the desktop with this colour ("#3a6ea5", "steelblue"),
                with xsetroot (Debian: x11-xserver-utils); default: Xvfb's
  xvfb, x11vnc, xsetroot  the programs (default: found on PATH)
  programs      command lines to run on the desktop once x11vnc listens, each
                a list of strings, e.g. [["xmessage", "-center", "Hello"]];
                a program is a path or a command on PATH, checked at start-up.
                They get DISPLAY and XAUTHORITY and stop with the session
                (default: none)

Reservation options (the query of /v1/reserve):

  size          one of the offered sizes
  password      the VNC password (none: no password, for loopback-only use)

On stop, nexusws terminates Xvfb, x11vnc and the programs (their process groups).

Only the session reaches the X display: Xvfb requires a fresh random cookie
(MIT-MAGIC-COOKIE-1, in a 0600 file only x11vnc, xsetroot and the programs
are given), so other local users cannot open it. x11vnc listens on 127.0.0.1:
without a password, any local user could connect to it directly, so give one
on a host shared with other users.
"""

import os
import re
import shutil
import socket
import struct
import tempfile

from twisted.internet import task

from nexusws.services import RemoteServiceScript, ServiceError

SIZE = re.compile(r"^\d{2,5}x\d{2,5}$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def x_socket(display):
    return f"/tmp/.X11-unix/X{display}"


def display_in_use(display):
    """Whether a live X server holds C{display} (a lock left by a dead one does not count)."""
    try:
        with open(f"/tmp/.X{display}-lock") as f:
            pid = int(f.read().strip())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable: assume it is someone's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def display_accepts(display):
    """Whether an X server accepts connections on C{display}'s socket (not a stale file)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(x_socket(display))
            return True
        except OSError:
            return False


def xauthority(cookie):
    """An Xauthority file's bytes: C{cookie} for any display on any host (FamilyWild)."""
    def field(data):
        return struct.pack(">H", len(data)) + data
    return struct.pack(">H", 0xFFFF) + field(b"") + field(b"") + field(b"MIT-MAGIC-COOKIE-1") + field(cookie)


def programs_option(value):
    """The C{programs} option checked: a list of command lines, each program found.

    @return: the command lines, each program as the path found.
    @raise ValueError: one line naming the option and what is wrong.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"programs: must be a list of command lines, not {value!r}")
    checked = []
    for argv in value:
        if (not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv)
                or not argv[0]):
            raise ValueError(f"programs: {argv!r} is not a command line (a non-empty list of strings)")
        found = shutil.which(argv[0])
        if found is None:
            where = "does not exist or is not executable" if os.sep in argv[0] else "is not on PATH"
            raise ValueError(f"programs: {argv[0]!r} {where}")
        checked.append([found, *argv[1:]])
    return checked


class X11VncDesktopSession(RemoteServiceScript):
    def __init__(self, common_options):
        super().__init__(common_options)
        options = common_options
        self.sizes = list(options.get("sizes") or ["1280x1024"])
        for size in self.sizes:
            if not isinstance(size, str) or not SIZE.match(size):
                raise ValueError(f"sizes: {size!r} is not WIDTHxHEIGHT")
        self.display_base = int(options.get("display_base", 100))
        self.port_base = options.get("vnc_port_base")
        self.depth = int(options.get("depth", 24))
        self.timeout = float(options.get("start_timeout", 20))
        self.xvfb = options.get("xvfb") or shutil.which("Xvfb") or "Xvfb"
        self.x11vnc = options.get("x11vnc") or shutil.which("x11vnc") or "x11vnc"
        self.background = options.get("background")
        if self.background is not None:
            if not isinstance(self.background, str) or not self.background or self.background.startswith("-"):
                raise ValueError(f"background: {self.background!r} is not a colour")
            self.xsetroot = options.get("xsetroot") or shutil.which("xsetroot")
            if not self.xsetroot:
                raise ValueError("background needs xsetroot (Debian: apt-get install x11-xserver-utils)")
        self.programs = programs_option(options.get("programs"))
        self.private_files = {}  # index -> files removed at stop

    async def start(self, index, options):
        size = options.get("size") or self.sizes[0]
        if size not in self.sizes:
            raise ServiceError(f"size {size!r} is not offered (offered: {', '.join(self.sizes)})")
        display = self.display_base + index
        if display_in_use(display) or display_accepts(display):
            raise ServiceError(f"X display :{display} is already in use")
        port = int(self.port_base) + index if self.port_base is not None else free_port()

        auth = self._private_file(index, "nexusws-xauth-", xauthority(os.urandom(16)))
        self.progress(f"starting the X server :{display} ({size})")
        xvfb = self.spawn([self.xvfb, f":{display}", "-screen", "0", f"{size}x{self.depth}",
                           "-nolisten", "tcp", "-noreset", "-auth", auth])
        await self._wait_for_display(display, xvfb)
        if self.background is not None:
            self.progress("painting the desktop's background")
            painter = self.spawn([self.xsetroot, "-display", f":{display}", "-solid", self.background],
                                 env={**os.environ, "XAUTHORITY": auth})
            status = await painter.ended
            if status != 0:
                raise ServiceError(f"xsetroot -solid {self.background!r} failed (status {status})")

        argv = [self.x11vnc, "-display", f":{display}", "-auth", auth, "-rfbport", str(port), "-localhost",
                "-noipv6", "-forever", "-shared", "-nocursorshape", "-quiet"]
        password = options.get("password")
        if password:
            # rm: x11vnc removes the file once read.
            argv += ["-passwdfile", "rm:" + self._private_file(index, "nexusws-vnc-", password.encode() + b"\n")]
        else:
            argv += ["-nopw"]
        self.progress("starting the VNC server")
        x11vnc = self.spawn(argv)
        self.progress("waiting for the VNC server to listen")
        await self.wait_for_port("127.0.0.1", port, timeout=self.timeout, child=x11vnc)
        if self.programs:
            self.progress("starting the desktop's programs")
            env = {**os.environ, "DISPLAY": f":{display}", "XAUTHORITY": auth}
            for argv in self.programs:
                self.spawn(argv, env=env)
        self.log.info("desktop {index}: display :{display} {size}, VNC on 127.0.0.1:{port}",
                      index=index, display=display, size=size, port=port)
        return "127.0.0.1", port

    def stop(self, index):
        # nexusws terminates Xvfb and x11vnc; their files are ours to remove.
        for path in self.private_files.pop(index, []):
            if os.path.exists(path):
                os.unlink(path)

    async def _wait_for_display(self, display, xvfb):
        """Until Xvfb accepts connections; fail if Xvfb exits or the timeout passes."""
        waited = 0.0
        while not display_accepts(display):
            if not xvfb.running:
                raise ServiceError(f"Xvfb for display :{display} exited at start")
            if waited >= self.timeout:
                raise ServiceError(f"Xvfb did not open display :{display} within {self.timeout:g}s")
            await task.deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    def _private_file(self, index, prefix, content):
        """A new 0600 file holding C{content}, removed when instance C{index} stops."""
        fd, path = tempfile.mkstemp(prefix=prefix)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        self.private_files.setdefault(index, []).append(path)
        return path
