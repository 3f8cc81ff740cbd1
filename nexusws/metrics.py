"""Prometheus metrics of one gateway, answered at C{/v1/metrics}.

Counters the gateway increments as things happen (reservations, launches,
REST answers) live in a registry of this gateway's own, not
C{prometheus_client}'s global one, so that several gateways (tests) in one
process keep their figures apart. Tunnel figures (open tunnels, bytes each
way) are read from the bridge when scraped: the data path never touches a
metric.

  nexusws_tunnels_active                          open tunnels (gauge)
  nexusws_tunnels_opened_total                    tunnels opened since start
  nexusws_tunnel_bytes_total{direction}           client_to_backend, backend_to_client
  nexusws_reservations_total{service,outcome}     reserved, released, expired, no_free_instance
  nexusws_launches_total{service,outcome}         started, failed, cancelled
  nexusws_launch_seconds{service}                 token presented -> instance accepting (histogram)
  nexusws_reattaches_total{service}               WebSockets that re-attached to a detached session
  nexusws_takeovers_total{service}                sessions taken over by a new WebSocket (?takeover=1)
  nexusws_slurm_commands_total{command}           sbatch, squeue, scancel, sinfo run (Slurm services only)
  nexusws_sessions{service,state}                 live reservations by state (reserved, ..., detached)
  nexusws_session_extends_total{service}          time limits extended (/v1/extend)
  nexusws_session_ends_total{service,reason}      released, closed, grace_expired, idle, max_duration,
                                                  stopped, expired, failed, instance_ended
  nexusws_http_requests_total{call,code}          /v1 answers by call (nexusws.api.CALLS) and status
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: The Content-Type of the text exposition format C{generate_latest} writes.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: The C{call} label of a /v1 answer whose path names no call.
OTHER_CALL = "other"

LAUNCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metrics of one gateway; C{bridge} (a L{nexusws.bridge.BridgeFactory}) may be
    attached later with L{watch_tunnels}."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.reservations = Counter(
            "nexusws_reservations", "Reservations by service and what became of them",
            ["service", "outcome"], registry=self.registry)
        self.launches = Counter(
            "nexusws_launches", "Instance launches by service and outcome",
            ["service", "outcome"], registry=self.registry)
        self.launch_seconds = Histogram(
            "nexusws_launch_seconds", "From the token's WebSocket to the instance accepting",
            ["service"], buckets=LAUNCH_BUCKETS, registry=self.registry)
        self.reattaches = Counter(
            "nexusws_reattaches", "WebSockets that re-attached to a detached session, by service",
            ["service"], registry=self.registry)
        self.takeovers = Counter(
            "nexusws_takeovers", "Sessions taken over by a new WebSocket (takeover=1), by service",
            ["service"], registry=self.registry)
        self.extends = Counter(
            "nexusws_session_extends", "Time limits extended through /v1/extend, by service",
            ["service"], registry=self.registry)
        self.session_ends = Counter(
            "nexusws_session_ends", "Sessions ended, by service and reason (the ending event's)",
            ["service", "reason"], registry=self.registry)
        self.requests = Counter(
            "nexusws_http_requests", "Answers of the /v1 API by call and HTTP status",
            ["call", "code"], registry=self.registry)

    def watch_tunnels(self, bridge):
        """Report C{bridge}'s tunnels (read at each scrape)."""
        self.registry.register(_Tunnels(bridge))

    def watch_sessions(self, sessions, states):
        """Report the live reservations of C{sessions} (a registry: its C{status()}) by
        service and state, every one of C{states} (read at each scrape)."""
        self.registry.register(_Sessions(sessions, tuple(states)))

    def watch_slurm(self, site):
        """Report the Slurm commands C{site} (L{nexusws.sessions.slurmsite.SlurmSite}) ran."""
        self.registry.register(_Slurm(site))

    def api_answered(self, call, code):
        """Count one /v1 answer; C{call}: the metric label of the call its path names
        (L{nexusws.api.CALLS} declares them), or None for a path that names none."""
        self.requests.labels(call or OTHER_CALL, str(code)).inc()

    def exposition(self):
        """The text exposition of every metric (bytes)."""
        return generate_latest(self.registry)


class _Tunnels:
    """A collector over the bridge's live tunnels and the totals of closed ones."""

    def __init__(self, bridge):
        self.bridge = bridge

    def describe(self):
        return []  # collected afresh each time: nothing to check at registration

    def collect(self):
        bridge = self.bridge
        live = list(bridge.tunnels)
        active = GaugeMetricFamily("nexusws_tunnels_active", "Open tunnels")
        active.add_metric([], len(live))
        yield active
        opened = CounterMetricFamily("nexusws_tunnels_opened", "Tunnels opened since start")
        opened.add_metric([], bridge.opened_total)
        yield opened
        moved = CounterMetricFamily("nexusws_tunnel_bytes", "Bytes carried by tunnels",
                                    labels=["direction"])
        moved.add_metric(["client_to_backend"], bridge.closed_bytes_up + sum(t.bytes_up for t in live))
        moved.add_metric(["backend_to_client"],
                         bridge.closed_bytes_down + sum(t.bytes_down for t in live))
        yield moved


class _Sessions:
    """A collector of live reservations by service and state, from the registry's status."""

    def __init__(self, registry, states):
        self.sessions, self.states = registry, states

    def describe(self):
        return []

    def collect(self):
        gauge = GaugeMetricFamily("nexusws_sessions", "Live reservations by service and state",
                                  labels=["service", "state"])
        for service in self.sessions.status():
            states = [i["state"] for i in service["instances"]]
            for state in self.states:
                gauge.add_metric([service["name"], state], states.count(state))
        yield gauge


class _Slurm:
    """A collector of the Slurm commands the gateway ran (one squeue a poll for all jobs)."""

    def __init__(self, site):
        self.site = site

    def describe(self):
        return []

    def collect(self):
        commands = CounterMetricFamily("nexusws_slurm_commands", "Slurm commands run, by command",
                                       labels=["command"])
        for name in ("sbatch", "squeue", "scancel", "sinfo"):
            commands.add_metric([name], self.site.commands.get(name, 0))
        yield commands
