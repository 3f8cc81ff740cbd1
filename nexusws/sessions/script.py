"""The script API: L{RemoteServiceScript}, what a service's Python script subclasses.

A service is a named kind of session with C{count} instances, indexed
0..count-1. Its behaviour comes from a L{RemoteServiceScript}: one a user
wrote, named by the C{--remote_session_config} file (L{nexusws.sessions.config}),
or a built-in one (L{nexusws.sessions.builtin}). A L{Service} (from
L{nexusws.sessions.instances}, which also says how processes are attributed to
instances) runs it. Scripts import it from L{nexusws.services}, the public path.

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

import os

from twisted.internet import defer
from twisted.python.failure import Failure

from nexusws.sessions.instances import ProgramExited, current
from nexusws.sessions.owners import MARKER_ENV
from nexusws.sessions.timeouts import GRACE, PORT_TIMEOUT

__all__ = ["RemoteServiceScript"]


class RemoteServiceScript:
    """Base class for service scripts.

    nexusws runs the script file and instantiates the one subclass it defines
    as C{cls(common_options)} (the service's C{options} from the config file).
    The helpers (L{spawn}, L{wait_for_port}, L{terminate}, L{progress}, L{reactor}, L{log})
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

        Whatever is still running afterwards, nexusws ends (L{nexusws.sessions.instances}).
        """

    # --- helpers --------------------------------------------------------------

    def spawn(self, argv, env=None, cwd=None, label=None, index=None):
        """Start C{argv} in its own session and process group; its output goes to the log.

        @param env: the whole environment; None inherits the gateway's. nexusws
            adds C{NEXUSWS_INSTANCE}, which marks what the child and the
            programs it starts belong to.
        @param label: prefix of its log lines; default C{"<service>[<index>] <program>"}.
        @param index: the instance it belongs to; needed only where nexusws
            cannot tell (in a plain C{callLater}, say; see L{nexusws.sessions.instances}).
        @return: the L{nexusws.sessions.launcher.Child}, terminated when the instance stops.
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

    def wait_for_port(self, host, port, timeout=PORT_TIMEOUT, child=None):
        """A Deferred that fires (None) once C{host:port} accepts a TCP connection.

        It fails with C{nexusws.sessions.ports.StartTimeout} after C{timeout} seconds
        and, if C{child} is given, with L{ServiceError} (a C{ProgramExited}, which
        carries its C{exit_status}) as soon as it exits.
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
                result.fire(Failure(ProgramExited(
                    f"{what} exited (status {code}) before {host}:{port} accepted connections", code
                )))
                waiting.cancel()
                return code

            child.ended.addCallback(exited)
        return result.deferred

    def terminate(self, child, grace=GRACE):
        """SIGTERM C{child}'s process group, SIGKILL it after C{grace} seconds; a Deferred."""
        result = _Relay(self._service())
        child.terminate(grace).addBoth(result.fire)
        return result.deferred

    def progress(self, text, index=None):
        """Tell the instance's page how its start goes: a C{progress} event (GET /v1/events/{token}).

        @param text: a human-readable step (C{"starting the X server"}), made one
            printable line of at most 200 characters.
        @param index: as for L{spawn}: needed only where nexusws cannot tell the instance.
        @raise ServiceError: the instance is unknown or not running.
        """
        self._service().progress(text, index)

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
