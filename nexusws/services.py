"""Services: the script API and the service config file.

A service is a named kind of session with C{count} instances, indexed
0..count-1. Its behaviour comes from a L{RemoteServiceScript}: one a user
wrote, named by the C{--remote_session_config} file (L{load_config}), or a
built-in one (L{builtin_services}, see L{nexusws.builtins}). A L{Service}
(from L{nexusws.instances}, which also says how processes are attributed to
instances) runs it.

A script, complete::

    from nexusws.services import RemoteServiceScript

    class EchoSession(RemoteServiceScript):
        def start(self, index, options):
            port = self._common_options["port_base"] + index
            self.spawn(["my-server", "--port", str(port)])
            d = self.wait_for_port("127.0.0.1", port)
            d.addCallback(lambda _: ("127.0.0.1", port))
            return d

        def stop(self, index):
            pass  # nexusws terminates what spawn() started for this index

C{start} may also be C{async def} (C{await self.wait_for_port(...)}).
"""

import itertools
import json
import os
import sys
import traceback
import types

from twisted.internet import defer
from twisted.python.failure import Failure

from nexusws.convert import DuplicateKey, unique_keys
from nexusws.errors import StartupError
from nexusws.instances import MARKER_ENV, Service, ServiceError, current
from nexusws.logs import describe, logger, show

__all__ = [
    "RemoteServiceScript",
    "Service",
    "ServiceError",
    "builtin_services",
    "check_names",
    "load_config",
]

_log = logger("nexusws.services")

#: The keys of a service's object in the config file, all required.
SERVICE_KEYS = ("script", "count", "options")

_module_numbers = itertools.count(1)


class RemoteServiceScript:
    """Base class for service scripts.

    nexusws runs the script file and instantiates the one subclass it defines
    as C{cls(common_options)} (the service's C{options} from the config file).
    The helpers (L{spawn}, L{wait_for_port}, L{terminate}, L{reactor}, L{log})
    work from C{__init__} on: nexusws binds the instance before calling it.
    """

    #: The L{Service} running this script; set by nexusws.
    _nexus = None

    def __init__(self, common_options):
        self._common_options = common_options

    def start(self, index, options):
        """Start instance C{index}; override this.

        @param index: 0..count-1, unique among the service's live instances.
        @param options: the reservation's query options (str values), plus
            C{token} and, when known, C{user}.
        @return: C{(host, port)} of a TCP listener to tunnel to, or a Deferred
            or coroutine giving it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement start()")

    def stop(self, index):
        """Stop instance C{index}: end everything C{start} began. May return a Deferred.

        Whatever is still running afterwards, nexusws ends (L{nexusws.instances}).
        """

    # --- helpers --------------------------------------------------------------

    def spawn(self, argv, env=None, cwd=None, label=None, index=None):
        """Start C{argv} in its own session and process group; its output goes to the log.

        @param env: the whole environment; None inherits the gateway's. nexusws
            adds C{NEXUSWS_INSTANCE}, which marks what the child and the
            programs it starts belong to.
        @param label: prefix of its log lines; default C{"<service>[<index>] <program>"}.
        @param index: the instance it belongs to; needed only where nexusws
            cannot tell (in a plain C{callLater}, say; see L{nexusws.instances}).
        @return: the L{nexusws.launcher.Child}, terminated when the instance stops.
        @raise ServiceError: the instance is unknown or not running.
        """
        service = self._service()
        instance = service.instance_for(index, "spawn")
        if isinstance(argv, (str, bytes)) or not argv:
            raise TypeError("spawn() takes argv as a non-empty list of strings")
        argv = [os.fspath(arg) for arg in argv]
        if label is None:
            label = f"{service.name}[{instance.index}] {os.path.basename(argv[0])}"
        env = dict(os.environ if env is None else env)
        env[MARKER_ENV] = instance.marker
        child = service.launcher.spawn(argv, env=env, cwd=cwd, label=label)
        instance.children.append(child)
        return child

    def wait_for_port(self, host, port, timeout=30.0, child=None):
        """A Deferred that fires (None) once C{host:port} accepts a TCP connection.

        It fails with C{nexusws.launcher.StartTimeout} after C{timeout} seconds
        and, if C{child} is given, with L{ServiceError} as soon as it exits.
        """
        service = self._service()
        result = _Relay(service)
        waiting = defer.ensureDeferred(
            service.system.wait_for_port(service.reactor, host, port, timeout)
        )
        result.cancel_also(waiting)
        waiting.addBoth(result.fire)
        if child is not None:

            def exited(code):
                what = child.label or "the process"
                result.fire(Failure(ServiceError(
                    f"{what} exited (status {code}) before {host}:{port} accepted connections"
                )))
                waiting.cancel()
                return code

            child.ended.addCallback(exited)
        return result.deferred

    def terminate(self, child, grace=5.0):
        """SIGTERM C{child}'s process group, SIGKILL it after C{grace} seconds; a Deferred."""
        result = _Relay(self._service())
        child.terminate(grace).addBoth(result.fire)
        return result.deferred

    @property
    def reactor(self):
        """The reactor nexusws runs on."""
        return self._service().reactor

    @property
    def log(self):
        """A L{twisted.logger.Logger} namespaced C{nexusws.service.<name>}."""
        return self._service().log

    def _service(self):
        if self._nexus is None:
            raise RuntimeError(f"{type(self).__name__} was not created by nexusws: no helpers")
        return self._nexus


class _Relay:
    """A helper's Deferred: fires once, with the instance of the caller made current.

    So a callback on it may call L{RemoteServiceScript.spawn} without C{index=}.
    """

    def __init__(self, service):
        index = service.current_index()
        self._binding = None if index is None else (service, index)
        self._also = None
        self.deferred = defer.Deferred(lambda _: self._also and self._also.cancel())

    def cancel_also(self, other):
        self._also = other

    def fire(self, result):
        if self.deferred.called:
            return  # failed early (the child exited) or cancelled
        token = current.set(self._binding)
        try:
            if isinstance(result, Failure):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)
        finally:
            current.reset(token)


# --- the config file ------------------------------------------------------------


def load_config(path, reactor, launcher, system=None):
    """Read the service config file C{path}: one L{Service} per entry, in file order.

    Script paths are relative to the file's directory. Each script file runs
    as a fresh module (its own namespace, C{__name__} not C{"__main__"}).
    Keys other than C{script}, C{count} and C{options} are refused, as are
    duplicate keys: both are mistakes that would otherwise pass silently
    (a C{"group"} beside C{"options"} would grant access to everyone).

    @raise StartupError: one line naming the file, the service and the problem.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise StartupError(f"{where}: cannot read the service config: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as e:
        raise StartupError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise StartupError(
            f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except DuplicateKey as e:
        raise StartupError(f"{where}: key {e.args[0]!r} appears twice in one object") from None
    if not isinstance(data, dict):
        raise StartupError(f"{where}: the top level must be an object of services, "
                           f"not {_kind(data)}")
    if not data:
        _log.warn("{path} defines no services", path=where)
    base = os.path.dirname(os.path.abspath(where))
    services = []
    for name, spec in data.items():
        def bad(problem, name=name):
            return StartupError(f"{where}: service {name!r}: {problem}")

        if not name.strip():
            raise bad("a service name must not be empty")
        if not isinstance(spec, dict):
            raise bad(f"must be an object with keys script, count and options, not {_kind(spec)}")
        missing = [key for key in SERVICE_KEYS if key not in spec]
        if missing:
            raise bad(f"missing key {missing[0]!r}")
        unknown = sorted(set(spec) - set(SERVICE_KEYS))
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (a service has script, count and options; "
                      f"other data belongs in options)")
        script, count, options = spec["script"], spec["count"], spec["options"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise bad(f"'count' must be a positive integer, not {show(count)}")
        if not isinstance(options, dict):
            raise bad(f"'options' must be an object, not {_kind(options)}")
        group = options.get("group")
        if "group" in options and (not isinstance(group, str) or not group.strip()):
            raise bad(f"'options.group' must be a group name, not {show(group)}")
        if not isinstance(script, str) or not script.strip():
            raise bad(f"'script' must be a file name, not {show(script)}")
        script_class = _load_script(os.path.join(base, script), script, bad)
        try:
            service = Service(name, script_class, count, options, reactor, launcher,
                              origin=where, system=system)
        except Exception as e:  # noqa: BLE001 - any error in user code is reported as one line
            sys.modules.pop(script_class.__module__, None)
            raise bad(f"{script_class.__name__}(options) raised {describe(e)}"
                      f"{_line_in(e, os.path.join(base, script))}") from None
        services.append(service)
    return services


def _load_script(path, shown, bad):
    """Run the script file C{path} as a new module; return its one L{RemoteServiceScript} subclass."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except FileNotFoundError:
        raise bad(f"script {shown!r} not found (looked for {path})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise bad(f"script {shown!r}: cannot read {path}: {getattr(e, 'strerror', None) or e}"
                  ) from None
    name = f"nexusws_script_{next(_module_numbers)}"
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module  # dataclasses, pickle and the like look classes up there
    try:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
    except SyntaxError as e:
        del sys.modules[name]
        raise bad(f"script {shown!r}: syntax error at line {e.lineno}: {e.msg}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - reported as one line
        del sys.modules[name]
        raise bad(f"script {shown!r} raised {describe(e)}{_line_in(e, path)} "
                  f"when run") from None
    found = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, RemoteServiceScript)
                and value.__module__ == name and value not in found):
            found.append(value)
    if len(found) != 1:
        del sys.modules[name]
        names = ", ".join(cls.__name__ for cls in found)
        raise bad(f"script {shown!r} must define one subclass of RemoteServiceScript"
                  + (f", it defines {len(found)}: {names}" if found else ", it defines none"))
    return found[0]


def check_names(services):
    """Refuse two services reachable by one name (a service name or an alias).

    @raise StartupError: naming the name and where each service comes from.
    """
    seen = {}
    for service in services:
        for name in (service.name, *service.aliases):
            if name in seen:
                raise StartupError(f"service name {name!r} is defined twice: by {seen[name]} "
                                   f"and by {service.origin or service.name}")
            seen[name] = service.origin or service.name


def builtin_services(specs, reactor, launcher, executables, system=None):
    """The built-in C{ensight}/C{envision} services; see L{nexusws.builtins}."""
    from nexusws import builtins  # imported here: it builds on this module

    return builtins.builtin_services(specs, reactor, launcher, executables, system=system)


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _line_in(exc, path):
    """C{" (line N)"}: the last line of C{path} in C{exc}'s traceback, if any."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" (line {lines[-1]})" if lines else ""
