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

Reservation options (the query of /v1/reserve):

  size          one of the offered sizes
  password      the VNC password (none: no password, for loopback-only use)

On stop, nexusws terminates both programs (their process groups).
"""

import os
import re
import shutil
import socket
import tempfile

from twisted.internet import task

from nexusws.services import RemoteServiceScript

SIZE = re.compile(r"^\d{2,5}x\d{2,5}$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def x_socket(display):
    return f"/tmp/.X11-unix/X{display}"


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
        self.password_files = {}

    async def start(self, index, options):
        size = options.get("size") or self.sizes[0]
        if size not in self.sizes:
            raise ValueError(f"size {size!r} is not offered (offered: {', '.join(self.sizes)})")
        display = self.display_base + index
        if os.path.exists(x_socket(display)) or os.path.exists(f"/tmp/.X{display}-lock"):
            raise RuntimeError(f"X display :{display} is already in use")
        port = int(self.port_base) + index if self.port_base is not None else free_port()

        xvfb = self.spawn([self.xvfb, f":{display}", "-screen", "0", f"{size}x{self.depth}",
                           "-nolisten", "tcp", "-noreset"])
        await self._wait_for_display(display, xvfb)
        if self.background is not None:
            painter = self.spawn([self.xsetroot, "-display", f":{display}", "-solid", self.background])
            status = await painter.ended
            if status != 0:
                raise RuntimeError(f"xsetroot -solid {self.background!r} failed (status {status})")

        argv = [self.x11vnc, "-display", f":{display}", "-rfbport", str(port), "-localhost",
                "-noipv6", "-forever", "-shared", "-nocursorshape", "-quiet"]
        password = options.get("password")
        if password:
            argv += ["-passwdfile", "rm:" + self._password_file(index, password)]
        else:
            argv += ["-nopw"]
        x11vnc = self.spawn(argv)
        await self.wait_for_port("127.0.0.1", port, timeout=self.timeout, child=x11vnc)
        self.log.info("desktop {index}: display :{display} {size}, VNC on 127.0.0.1:{port}",
                      index=index, display=display, size=size, port=port)
        return "127.0.0.1", port

    def stop(self, index):
        # nexusws terminates Xvfb and x11vnc; only the password file may be left.
        path = self.password_files.pop(index, None)
        if path is not None and os.path.exists(path):
            os.unlink(path)

    async def _wait_for_display(self, display, xvfb):
        """Until Xvfb's socket exists; fail if Xvfb exits or the timeout passes."""
        waited = 0.0
        while not os.path.exists(x_socket(display)):
            if not xvfb.running:
                raise RuntimeError(f"Xvfb for display :{display} exited at start")
            if waited >= self.timeout:
                raise RuntimeError(f"Xvfb did not open display :{display} within {self.timeout:g}s")
            await task.deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    def _password_file(self, index, password):
        """A 0600 file x11vnc reads the password from (and removes: the rm: prefix)."""
        fd, path = tempfile.mkstemp(prefix="nexusws-vnc-")
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        self.password_files[index] = path
        return path
