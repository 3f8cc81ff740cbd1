"""A remote desktop per session on a cluster node: Xvfb plus x11vnc inside a Slurm job.

The reference's "Cluster Node Session". nexusws submits one job per session
(nexusws.sessions.slurm); on its node the job starts Xvfb, x11vnc on a free
port with a one-time password, and the desktop's programs, then reports where
it listens. Common options (from the service config file), besides those every
Slurm service has (sbatch, connection_dir, python, poll_interval, queue_timeout,
host: see nexusws.sessions.slurmscript):

  sizes       screen sizes offered, e.g. ["1280x1024", "1600x1200"]; the first
              is the default (default: ["1280x1024"])
  depth       colour depth (default: 24)
  background  fill the desktop with this colour ("#3a6ea5"), with xsetroot
              (Debian: x11-xserver-utils, on the nodes); default: Xvfb's
  desktop     more programs to run on the desktop, each an argument list
              (e.g. [["xterm"]] or [["startxfce4"]]); default: none
  x11vnc, xsetroot  the programs on the nodes (default: found on the job's PATH)

Reservation options (the query of /v1/reserve):

  size        one of the offered sizes

x11vnc asks for the one-time password (VNC authentication): the session's
page gets it from /v1/session with its token, no one else does.
"""

import re

from nexusws.services import SlurmScript

SIZE = re.compile(r"^\d{2,5}x\d{2,5}$")


class ClusterDesktopSession(SlurmScript):
    def __init__(self, common_options):
        super().__init__(common_options)
        options = common_options
        self.sizes = list(options.get("sizes") or ["1280x1024"])
        for size in self.sizes:
            if not isinstance(size, str) or not SIZE.match(size):
                raise ValueError(f"sizes: {size!r} is not WIDTHxHEIGHT")
        self.depth = int(options.get("depth", 24))
        self.x11vnc = options.get("x11vnc", "x11vnc")
        self.xsetroot = options.get("xsetroot", "xsetroot")
        self.background = options.get("background")
        if self.background is not None and (not isinstance(self.background, str) or not self.background
                                            or self.background.startswith("-")):
            raise ValueError(f"background: {self.background!r} is not a colour")
        self.desktop = options.get("desktop") or []
        if not isinstance(self.desktop, list) or not all(
                isinstance(p, list) and p and all(isinstance(a, str) for a in p) for p in self.desktop):
            raise ValueError("desktop: must be a list of argument lists")

    def job(self, index, options):
        size = options.get("size") or self.sizes[0]
        if size not in self.sizes:
            raise ValueError(f"size {size!r} is not offered (offered: {', '.join(self.sizes)})")
        vnc = [self.x11vnc, "-display", "{display}", "-rfbport", "{port}", "-listen", "{host}", "-noipv6",
               "-passwdfile", "rm:{password_file}", "-forever", "-shared", "-nocursorshape", "-quiet"]
        programs = [vnc]
        if self.background is not None:
            programs.append([self.xsetroot, "-solid", self.background])
        programs += self.desktop
        return {"programs": programs, "xvfb": f"{size}x{self.depth}", "password": True}
