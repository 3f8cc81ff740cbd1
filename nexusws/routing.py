"""Where a WebSocket goes: routers map a handshake request to a TCP L{Target}.

A router has C{route(request)} returning a L{Target} (or a Deferred firing
with one) or raising L{ConnectionDeny} with the HTTP status to refuse with.
"""

from autobahn.websocket.types import ConnectionDeny


class Target:
    """A TCP address a tunnel connects to."""

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __eq__(self, other):
        return isinstance(other, Target) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self):
        return hash((self.host, self.port))


class FixedRouter:
    """Basic mode: every WebSocket goes to one configured address."""

    def __init__(self, target):
        self.target = target

    def route(self, request):
        return self.target


class NoRouter:
    """No backend configured: every WebSocket is refused with a clear reason."""

    def route(self, request):
        raise ConnectionDeny(
            404, "no backend configured: start nexusws with --client_port (basic mode)"
        )
