"""The service config file (C{--remote_session_config}): one L{ServiceSpec} per entry.

Each entry names a Python script defining one L{RemoteServiceScript}
subclass (L{nexusws.sessions.script}), the number of instances and their
common options (C{group}, C{reconnect_grace}, C{viewer} (false: the portal offers no
Launch: it is not a VNC desktop) and the limits C{idle_timeout},
C{idle_warning}, C{max_duration}, C{time_warning} and C{max_extend} are nexusws's
own, checked here; see L{nexusws.sessions.attach} and L{nexusws.sessions.deadlines}). L{read_config} reads and checks the whole file and runs each
script (the options stage: no reactor); L{ServiceSpec.build} creates the
script's object and its L{Service} with the reactor C{makeService} is given.
L{check_names} refuses two services reachable by one name (the built-in ones
included, L{nexusws.sessions.builtin}).
"""

import dataclasses
import itertools
import json
import os
import sys
import traceback
import types

from nexusws.convert import DuplicateKey, unique_keys
from nexusws.errors import StartupError
from nexusws.logs import describe, logger, show
from nexusws.sessions.deadlines import LIMITS
from nexusws.sessions.instances import Service
from nexusws.sessions.script import RemoteServiceScript
from nexusws.sessions.slurmscript import SlurmScript, check_options

__all__ = ["ServiceSpec", "build_services", "check_names", "read_config"]

_log = logger("nexusws.services")

#: The keys of a service's object in the config file, all required.
SERVICE_KEYS = ("script", "count", "options")

#: The options nexusws itself reads as seconds (L{nexusws.sessions.attach}, L{nexusws.sessions.deadlines}).
SECONDS_OPTIONS = ("reconnect_grace", *LIMITS)

_module_numbers = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """A service as configured and checked, before it runs: what L{build} makes a L{Service} of.

    Reading the configuration (L{read_config}, L{nexusws.sessions.builtin.builtin_specs})
    needs no reactor; building the L{Service} (which creates the script's object, whose
    C{__init__} may already use the helpers) happens in C{makeService}, with its reactor.
    """

    name: str
    script_class: type
    count: int
    options: dict
    aliases: tuple = ()
    origin: str = ""
    #: The script file, for the line number of an error in the script's C{__init__}.
    script_path: str = ""

    @property
    def group(self):
        return self.options.get("group")

    @property
    def slurm(self):
        """Whether its instances are Slurm jobs (its script is a L{SlurmScript})."""
        return issubclass(self.script_class, SlurmScript)

    def build(self, reactor, launcher, system=None, slurm_site=None):
        """The running L{Service} (or L{nexusws.sessions.slurm.SlurmService}, on C{slurm_site}):
        the script's object created with C{reactor} and C{launcher}.

        @raise StartupError: the script's C{__init__} raised, or a Slurm service's
            connection directory is unfit; one line naming the file, the service and the error.
        """
        try:
            if self.slurm:
                from nexusws.sessions.slurm import SlurmService
                from nexusws.sessions.slurmreport import connection_directory
                try:
                    where = connection_directory(self.options.get("connection_dir"))
                except ValueError as e:
                    raise StartupError(f"{self.origin}: service {self.name!r}: 'options.connection_dir': {e}"
                                       ) from None
                return SlurmService(self.name, self.script_class, self.count, self.options, reactor,
                                    slurm_site, aliases=self.aliases, origin=self.origin, connection_dir=where)
            return Service(self.name, self.script_class, self.count, self.options, reactor, launcher,
                           aliases=self.aliases, origin=self.origin, system=system)
        except StartupError:
            raise
        except Exception as e:  # any error in user code is reported as one line
            if self.script_path:
                sys.modules.pop(self.script_class.__module__, None)
            where = f"{self.origin}: service {self.name!r}" if self.script_path else self.origin
            raise StartupError(f"{where}: {self.script_class.__name__}(options) raised {describe(e)}"
                               f"{_line_in(e, self.script_path)}") from None


def build_services(specs, reactor, launcher, system=None, slurm_site=None):
    """L{ServiceSpec.build} for each of C{specs}, in order (Slurm services on C{slurm_site})."""
    return [spec.build(reactor, launcher, system=system, slurm_site=slurm_site) for spec in specs]


def read_config(path):
    """Read the service config file C{path}: one L{ServiceSpec} per entry, in file order.

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
        if "viewer" in options and not isinstance(options["viewer"], bool):
            raise bad(f"'options.viewer' must be true or false, not {show(options['viewer'])}")
        for key in SECONDS_OPTIONS:
            if key in options and not _is_seconds(options[key]):
                raise bad(f"'options.{key}' must be a number of seconds >= 0, not {show(options[key])}")
        if not isinstance(script, str) or not script.strip():
            raise bad(f"'script' must be a file name, not {show(script)}")
        path_of_script = os.path.join(base, script)
        script_class = _load_script(path_of_script, script, bad)
        if issubclass(script_class, SlurmScript) and check_options(options):
            raise bad(check_options(options))
        services.append(ServiceSpec(name, script_class, count, options, origin=where,
                                    script_path=path_of_script))
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
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    except SyntaxError as e:
        del sys.modules[name]
        raise bad(f"script {shown!r}: syntax error at line {e.lineno}: {e.msg}") from None
    except (Exception, SystemExit) as e:  # reported as one line
        del sys.modules[name]
        raise bad(f"script {shown!r} raised {describe(e)}{_line_in(e, path)} "
                  f"when run") from None
    found = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, (RemoteServiceScript, SlurmScript))
                and value.__module__ == name and value not in found):
            found.append(value)
    if len(found) != 1:
        del sys.modules[name]
        names = ", ".join(cls.__name__ for cls in found)
        raise bad(f"script {shown!r} must define one subclass of RemoteServiceScript or SlurmScript"
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


def _is_seconds(value):
    """Whether C{value} (from JSON) is a finite number >= 0 (a boolean is not), and one
    a float can hold (a JSON integer of 400 digits cannot: it is refused here, not
    when a WebSocket closes)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return 0 <= float(value) < float("inf")
    except OverflowError:
        return False


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _line_in(exc, path):
    """C{" (line N)"}: the last line of C{path} in C{exc}'s traceback, if any."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" (line {lines[-1]})" if lines else ""
