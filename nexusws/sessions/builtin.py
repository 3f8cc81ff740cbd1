"""The built-in services: EnSight and EnVision with their VNC servers (C{--local_session}).

C{--local_session ensight N} defines service C{ensight} (also reachable as
C{local_ensight}), C{--local_session envision N} service C{envision} (also
C{local_envision}). Instance C{index} runs, in its own process group::

    <executable> -vnc vnc://?rfb_port=<P>&use_auth=0
    <executable> -vnc vnc://?rfb_port=<P>&primary_password=<password>

the second when the reservation has a C{password} (or C{primary_password})
option, percent-encoded. This is the reference's C{-vnc "vnc://?primary_password=..."}
form; C{rfb_port} and C{use_auth} are the names EnSight's own launchers use.
A command line is visible to local users (C{ps}), password included.

Ports: C{P = vnc_port_base + 2 * index}, plus 1 for EnVision; the base is 5900
unless C{executables["vnc_port_base"]} says otherwise. So ensight 0, 1, 2 use
5900, 5902, 5904 and envision 0, 1, 2 use 5901, 5903, 5905: the two never
collide, whatever their counts. A port already taken when an instance starts
is that start's error (the tunnel would reach someone else's server). Once
C{127.0.0.1:P} accepts connections, the instance's address is C{("127.0.0.1", P)};
if the program exits first, the start fails at once.

The executable: C{executables["ensight"]} (or C{"envision"}), which the wiring
fills from C{--ensight_executable}/C{--envision_executable} or C{NEXUSWS_ENSIGHT}/
C{NEXUSWS_ENVISION}: a path, or a command looked up on C{PATH}; None means
C{ensight}/C{envision} on C{PATH}. It is looked for when an instance starts,
so a missing one fails that reservation with a one-line reason, not start-up.
"""

import errno
import os
import shutil
import socket
from urllib.parse import quote

from nexusws.convert import LOCAL_SESSION_APPS
from nexusws.errors import StartupError
from nexusws.sessions.config import ServiceSpec
from nexusws.sessions.instances import ServiceError
from nexusws.sessions.script import RemoteServiceScript
from nexusws.sessions.timeouts import APP_START_TIMEOUT

#: Applications (L{nexusws.convert.LOCAL_SESSION_APPS}, which C{--local_session} accepts)
#: and their offset in the port scheme: their place in that list.
APPS = {app: offset for offset, app in enumerate(LOCAL_SESSION_APPS)}

#: Each application's environment variable naming its executable (for the wiring and its errors).
EXECUTABLE_ENV = {app: f"NEXUSWS_{app.upper()}" for app in APPS}

DEFAULT_VNC_PORT_BASE = 5900

HOST = "127.0.0.1"

#: Reservation options that carry the VNC password, first found wins.
PASSWORD_OPTIONS = ("primary_password", "password")


class LocalApplication(RemoteServiceScript):
    """Runs one local application per instance with its VNC server on a derived port.

    L{builtin_specs} makes a subclass per application, setting the class attributes.
    """

    app = None
    executable = None
    vnc_port_base = DEFAULT_VNC_PORT_BASE
    start_timeout = APP_START_TIMEOUT

    def __init__(self, common_options):
        super().__init__(common_options)
        self._children = {}

    def port(self, index):
        """The VNC port of instance C{index} (see the module docstring)."""
        return self.vnc_port_base + 2 * index + APPS[self.app]

    def argv(self, executable, port, options):
        """The command line of an instance: C{[executable, "-vnc", url]}."""
        password = _option(options, PASSWORD_OPTIONS)
        if password:
            url = f"vnc://?rfb_port={port}&primary_password={quote(password, safe='')}"
        else:
            url = f"vnc://?rfb_port={port}&use_auth=0"
        return [executable, "-vnc", url]

    def find_executable(self):
        """The application's executable.

        @raise ServiceError: there is none, with what to set.
        """
        how = f"set --{self.app}_executable or {EXECUTABLE_ENV[self.app]}"
        wanted = self.executable or self.app
        if os.sep not in wanted:
            found = shutil.which(wanted)
            if found is None:
                raise ServiceError(f"no {self.app} executable: {wanted!r} is not on PATH ({how})")
            return found
        if os.path.isfile(wanted) and os.access(wanted, os.X_OK):
            return wanted
        raise ServiceError(f"no {self.app} executable: {wanted} does not exist or is not "
                           f"executable ({how})")

    def start(self, index, options):
        executable = self.find_executable()
        port = self.port(index)
        problem = _port_problem(port)
        if problem:
            raise ServiceError(f"VNC port {port} {problem}")
        self.log.info("{app} instance {index}: starting {exe} with VNC on {host}:{port}",
                      app=self.app, index=index, exe=executable, host=HOST, port=port)
        child = self.spawn(self.argv(executable, port, options), label=f"{self.app}[{index}]")
        self._children[index] = child
        waiting = self.wait_for_port(HOST, port, timeout=self.start_timeout, child=child)
        return waiting.addCallback(lambda _: (HOST, port))

    def stop(self, index):
        child = self._children.pop(index, None)
        if child is not None and child.running:
            return self.terminate(child)
        return None


def builtin_specs(specs, executables):
    """The built-in services C{specs} asks for, as L{ServiceSpec}s.

    @param specs: C{[(app, count)]}, app C{"ensight"} or C{"envision"}, each at most once.
    @param executables: C{{"ensight": path-or-None, "envision": ...}}, and optionally
        C{"vnc_port_base"} (int). An instance waits L{APP_START_TIMEOUT} for its port.
    @raise StartupError: an unknown application, a repeated one, a bad count or port base.
    """
    base = executables.get("vnc_port_base") or DEFAULT_VNC_PORT_BASE
    if not isinstance(base, int) or isinstance(base, bool) or not 0 < base < 65535:
        raise StartupError(f"VNC port base must be a port number, not {base!r}")
    services = []
    for app, count in specs:
        flag = f"--local_session {app}"
        if app not in APPS:
            raise StartupError(f"--local_session: unknown application {app!r} "
                               f"(known: {', '.join(APPS)})")
        if any(service.name == app for service in services):
            raise StartupError(f"{flag} is given more than once")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise StartupError(f"{flag}: the count must be a positive integer, not {count!r}")
        last = base + 2 * (count - 1) + APPS[app]
        if last > 65535:
            raise StartupError(f"{flag} {count}: its VNC ports would reach {last}, above 65535 "
                               f"(VNC port base {base})")
        attributes = {
            "app": app,
            "executable": executables.get(app),
            "vnc_port_base": base,
        }
        script_class = type(f"Local{app.capitalize()}", (LocalApplication,), attributes)
        services.append(ServiceSpec(app, script_class, count, {}, aliases=(f"local_{app}",),
                                    origin=f"{flag} {count}"))
    return services


def _option(options, names):
    """The first of C{names} in C{options} (the last value if a list), or None."""
    for name in names:
        value = options.get(name)
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value:
            return str(value)
    return None


def _port_problem(port):
    """Why C{HOST:port} cannot be the application's, or None if it is free."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR: a port in TIME_WAIT is free for a new listener, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
    except OSError as e:
        return "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be used: {e}"
    finally:
        probe.close()
    return None
