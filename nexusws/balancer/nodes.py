"""The nodes behind the balancer: polled together, never blocking, each with a timeout.

Every C{pollInterval} the balancer asks each node for C{/v1/load?format=json},
all at once; a node that fails or does not answer within C{pollTimeout} is
excluded until it answers again, so a dead node is out within one poll. A new
session goes to the least-loaded node that takes sessions (load under the
threshold; for a reservation, a free instance of that service); among equally
loaded nodes the choice rotates, so ties are shared, not always the first.

What happens to a node (down, back, full, free again) goes to C{on_event}
(the administrator's e-mail), what happens to the whole (some node takes
sessions, or none does) to C{on_availability} (the WebSocket on /).
"""

import itertools
import json
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from nexusws import internals
from nexusws.clock import LoopingCall
from nexusws.logs import logger, one_line, printable

_log = logger("nexusws.balancer")

#: What befalls a node: the event names, and the subject of the e-mail about each.
DOWN, BACK, FULL, FREE = "down", "back", "full", "free"
SUBJECTS = {DOWN: "Simulation server not responding", BACK: "Simulation server working again",
            FULL: "Simulation server reached maximum load", FREE: "Simulation server available again"}


#: The largest answer a node may give (a /v1/status of thousands of sessions fits).
MAX_ANSWER = 16 * 1024 * 1024


class _Discard(Protocol):
    def dataReceived(self, data):
        self.transport.stopProducing()


class NodeError(Exception):
    """A node answered something unusable (the message says what).

    @ivar code: the HTTP status of an answer that was not 200 (else None).
    @ivar detail: the node's own error text, or the message."""

    def __init__(self, message, code=None, detail=None):
        super().__init__(message)
        self.code, self.detail = code, detail or message


class Node:
    """One nexusws node: its base URL and what its last poll told."""

    def __init__(self, url):
        self.url = url
        parts = urlsplit(url)
        self.name = parts.netloc + parts.path
        self.report = None  # the last /v1/load?format=json, while it answers
        self.error = None  # why it is excluded (None: it answers)
        self.seen = False  # it answered once at least
        self.polled = None  # the load it last reported itself (events compare with it)

    @property
    def load(self):
        """Its load (0-100), or None while it does not answer."""
        return None if self.report is None else self.report["load"]

    def takes_sessions(self, threshold):
        return self.report is not None and self.report["load"] < threshold

    def service(self, name):
        """Its report's entry for service C{name} (by name or alias), or None."""
        services = (self.report or {}).get("services", {})
        if name in services:
            return services[name]
        return next((e for e in services.values() if name in (e.get("aliases") or ())), None)

    def free(self, service):
        """Free instances of C{service} (name or alias) it reported (0 if unknown)."""
        entry = self.service(service)
        return entry.get("free", 0) if isinstance(entry, dict) else 0

    def took(self, service):
        """Count one more instance of C{service} in use until the next poll says better."""
        entry = self.service(service)
        if isinstance(entry, dict) and entry.get("free", 0) > 0:
            entry["free"] -= 1
            entry["used"] = entry.get("used", 0) + 1
            services = self.report["services"].values()
            capacity = sum(e.get("capacity", 0) for e in services)
            if capacity:
                sessions = 100.0 * sum(e.get("used", 0) for e in services) / capacity
                self.report["load"] = max(self.report["load"], round(sessions, 1))


class Cluster:
    """The nodes of a L{nexusws.balancer.config.Config}, polled on C{reactor}."""

    def __init__(self, config, reactor, agent=None, on_event=None, on_availability=None):
        self.config, self.reactor = config, reactor
        self.nodes = [Node(url) for url in config.nodes]
        if agent is None:
            pool = internals.quiet_http_pool(reactor)  # no "Starting factory" line per connection
            pool.maxPersistentPerHost = 2
            agent = Agent(reactor, connectTimeout=config.poll_timeout, pool=pool)
        self.agent = agent
        self.on_event = on_event or (lambda node, event, message: None)
        self.on_availability = on_availability or (lambda available: None)
        self.available = False
        self.started = None  # wall-clock start, for /monitor
        self._turn = itertools.count()
        self._loop = None

    # --- polling ----------------------------------------------------------------

    def start(self):
        self._loop = LoopingCall(self.reactor, self.poll_all)
        self._loop.start(self.config.poll_interval, now=True).addErrback(
            lambda f: _log.failure("polling the nodes failed", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll_all(self):
        """Poll every node at once; a Deferred firing when each answered or timed out."""
        d = defer.DeferredList([self.poll(node) for node in self.nodes], consumeErrors=True)
        d.addCallback(lambda _: self._check_availability())
        return d

    def poll(self, node):
        d = self.get_json(node, "/v1/load?format=json", self.config.poll_timeout)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(node,), errbackArgs=(node,))
        return d

    def _answered(self, report, node):
        try:
            load = float(report["load"])
            if not 0 <= load <= 100:
                raise ValueError(f"load {load} out of 0-100")
            if not isinstance(report.get("ws_url"), str) or not report["ws_url"]:
                raise ValueError("no ws_url")
            services = report.get("services", {})
            if not isinstance(services, dict) or not all(
                    isinstance(e, dict) and all(isinstance(e.get(k, 0), int) and not isinstance(
                        e.get(k, 0), bool) for k in ("used", "capacity", "free"))
                    for e in services.values()):
                raise ValueError("services is not {name: {used, capacity, free}} of whole numbers")
            if not all(isinstance(e.get("aliases", []), list) for e in services.values()):
                raise ValueError("a service's aliases are not a list")
            report["services"] = services
        except (TypeError, KeyError, ValueError, OverflowError) as e:
            return self._failed(NodeError(f"unusable /v1/load answer: {one_line(e)}"), node)
        report["load"] = load
        threshold = self.config.load_threshold
        before, was_error, seen = node.polled, node.error, node.seen
        node.report, node.error, node.seen, node.polled = report, None, True, load
        if was_error is not None and seen:
            self._event(node, BACK, f"{node.name} simulation server is up and running again "
                                    f"(load = {load:g}%)")
        elif before is not None and before < threshold <= load:
            self._event(node, FULL, f"{node.name} simulation server has reached maximum load "
                                    f"({load:g}%)")
        elif before is not None and load < threshold <= before:
            self._event(node, FREE, f"{node.name} simulation server is available again "
                                    f"(load = {load:g}%)")
        return None

    def _failed(self, failure, node):
        reason = getattr(failure, "value", failure)
        if isinstance(reason, defer.CancelledError | defer.TimeoutError):
            why = f"no answer within {self.config.poll_timeout:g} s"
        else:
            why = one_line(reason) or type(reason).__name__
        if node.error is None and node.seen:
            self._event(node, DOWN, f"{node.name} simulation server may be down, as it is not "
                                    f"responding to the requests of the session server ({why})")
        elif node.error is None:
            _log.warn("node {node} does not answer: {why}", node=node.name, why=printable(why))
        node.report, node.error, node.polled = None, why, None
        return None

    def _event(self, node, event, message):
        (_log.warn if event in (DOWN, FULL) else _log.info)("{message}", message=message)
        try:
            self.on_event(node, event, message)
        except Exception:  # logged; polling goes on
            _log.failure("handling the {event} event of {node} failed", event=event, node=node.name)

    def _check_availability(self):
        available = any(n.takes_sessions(self.config.load_threshold) for n in self.nodes)
        if available != self.available:
            self.available = available
            _log.info("sessions {state}", state="available" if available else "unavailable: "
                      "no node answers under the load threshold")
            try:
                self.on_availability(available)
            except Exception:  # logged; polling goes on
                _log.failure("announcing the availability failed")

    # --- calls to a node ----------------------------------------------------------

    def get_json(self, node, path, timeout):
        """GET C{node}'s C{path}; a Deferred firing with the JSON of a 200 answer.

        Fails with L{NodeError} for another status or a body that is not JSON, and
        with C{defer.TimeoutError} after C{timeout} seconds."""
        headers = Headers({b"user-agent": [b"nexusws-balancer"]})
        if self.config.security_token:
            headers.addRawHeader(b"authorization", b"Bearer " + self.config.security_token.encode())
        d = self.agent.request(b"GET", (node.url + path).encode("utf-8"), headers)

        def read(response):
            if response.length is not UNKNOWN_LENGTH and response.length > MAX_ANSWER:
                response.deliverBody(_Discard())
                raise NodeError(f"an answer of {response.length} bytes (at most {MAX_ANSWER})")
            body = readBody(response)
            body.addCallback(lambda raw: (response.code, raw))
            return body

        def decode(answer):
            code, raw = answer
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if code != 200:
                error = value.get("error") if isinstance(value, dict) else None
                error = one_line(error) if isinstance(error, str) else None
                raise NodeError(f"HTTP {code}" + (f": {error}" if error else ""), code, error)
            if value is None:
                raise NodeError("the answer is not JSON")
            return value

        # The timeout covers the whole answer: a node that sends its headers and then
        # stalls is cut off too (cancelling aborts the body's reading).
        def timed_out(result, seconds):
            # Whatever the cut-off connection reported, it was the timeout.
            raise defer.TimeoutError(f"no answer within {seconds:g} s")

        return d.addCallback(read).addCallback(decode).addTimeout(
            timeout, self.reactor, onTimeoutCancel=timed_out)

    # --- choosing -------------------------------------------------------------------

    def candidates(self, service=None):
        """Nodes that take a session (of C{service}: with a free instance), least loaded
        first; equal loads in an order that rotates from one call to the next."""
        threshold = self.config.load_threshold
        nodes = [n for n in self.nodes if n.takes_sessions(threshold)
                 and (service is None or n.free(service) > 0)]
        turn, ordered = next(self._turn), []
        for _, group in itertools.groupby(sorted(nodes, key=lambda n: n.load), key=lambda n: n.load):
            group = list(group)
            k = turn % len(group)
            ordered += group[k:] + group[:k]
        return ordered

    def average_load(self):
        """The mean load of the nodes that answer, or None when none does."""
        loads = [n.load for n in self.nodes if n.load is not None]
        return sum(loads) / len(loads) if loads else None
