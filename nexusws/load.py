"""A node's load, for /v1/load and a balancer in front of several nodes.

One number from 0 to 100, as Webots' simulation servers give their session
server: the highest of the sessions in use (of all instances configured), the
tunnels open (of C{--max_tunnels}), CPU pressure and memory in use. A balancer
treats a node at 95 or more as full. The JSON form gives each part, the
instances used and free per service, and the WebSocket address clients of
this node connect to, and how many sessions wait in a batch scheduler's queue
(C{pending}: Slurm jobs not yet running; they hold their instances, so they count
in the sessions in use).

CPU pressure is the share of the last 10 s in which some task waited for a
CPU (Linux PSI, C{/proc/pressure/cpu}); where the kernel has no PSI, the
1-minute load average per CPU. Memory in use is what C{MemAvailable} leaves.
"""

import os
import socket
from urllib.parse import urlsplit

PSI_CPU = "/proc/pressure/cpu"
MEMINFO = "/proc/meminfo"


def cpu_pressure(psi=PSI_CPU):
    """Percent (0-100) of recent time some task waited for a CPU."""
    try:
        with open(psi, encoding="ascii") as f:
            for line in f:
                if line.startswith("some "):
                    fields = dict(p.split("=", 1) for p in line.split()[1:])
                    return _percent(float(fields["avg10"]))
    except (OSError, ValueError, KeyError):
        pass
    try:
        return _percent(os.getloadavg()[0] / (os.cpu_count() or 1) * 100)
    except OSError:
        return 0.0


def memory_in_use(meminfo=MEMINFO):
    """Percent (0-100) of memory not available to new work (C{MemAvailable} of C{MemTotal})."""
    values = {}
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return 0.0
    return _percent((1 - available / total) * 100)


def check_ws_url(text):
    """C{text} if it is a ws:// or wss:// URL with a host.

    @raise ValueError: a one-line reason."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as e:
        raise ValueError(f"{text!r} is not a URL ({e})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{text!r} is not a ws:// or wss:// URL with a host")
    return text


def listener_url(port, scheme):
    """The ws(s):// URL of a listening C{port}: its address, or this host's name for a wildcard."""
    host = port.getHost()
    if getattr(host, "port", None) is None:  # a UNIX socket: only --advertise_url can say
        return None
    address = getattr(host, "host", None)
    if not address or address in ("0.0.0.0", "::"):
        address = socket.getfqdn()
    shown = f"[{address}]" if ":" in address else address
    return f"{scheme}://{shown}:{host.port}/"


def _percent(value):
    return round(min(100.0, max(0.0, value)), 1)


class NodeLoad:
    """The load of this gateway.

    @param registry: the L{nexusws.sessions.registry.Registry}, or None (no services).
    @param bridge: the L{nexusws.bridge.BridgeFactory} (its C{tunnels}).
    @param max_tunnels: C{--max_tunnels} (0: no limit, not part of the load).
    @param ws_url: a callable giving the ws(s):// URL clients connect to (or None).
    """

    def __init__(self, registry, bridge, max_tunnels, ws_url=lambda: None,
                 cpu=cpu_pressure, memory=memory_in_use):
        self.registry, self.bridge, self.max_tunnels = registry, bridge, max_tunnels
        self.ws_url, self.cpu, self.memory = ws_url, cpu, memory

    def report(self):
        """The load and its parts (JSON-safe)."""
        services, used, capacity, pending = {}, 0, 0, 0
        if self.registry is not None:
            aliases = {s.name: list(getattr(s, "aliases", ())) for s in self.registry.services}
            # A batch backend's jobs waiting in the scheduler's queue (they hold an instance too).
            waiting = {s.name: s.pending() for s in self.registry.services if hasattr(s, "pending")}
            for entry in self.registry.status():
                n = len(entry["instances"])
                services[entry["name"]] = {"used": n, "capacity": entry["count"],
                                           "free": max(0, entry["count"] - n),
                                           "aliases": aliases.get(entry["name"], [])}
                if entry["name"] in waiting:
                    services[entry["name"]]["pending"] = waiting[entry["name"]]
                    pending += waiting[entry["name"]]
                used, capacity = used + n, capacity + entry["count"]
        tunnels = len(self.bridge.tunnels)
        parts = {
            "sessions": _percent(used / capacity * 100) if capacity else 0.0,
            "tunnels": _percent(tunnels / self.max_tunnels * 100) if self.max_tunnels else 0.0,
            "cpu": self.cpu(),
            "memory": self.memory(),
        }
        return {
            "load": max(parts.values()),
            "parts": parts,
            "services": services,
            "tunnels": {"active": tunnels, "max": self.max_tunnels},
            "pending": pending,
            "ws_url": self.ws_url(),
        }
