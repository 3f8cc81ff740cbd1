"""The balancer's HTTP and WebSocket endpoints: Webots' session server's, and /v1.

  GET /                    1 if a node takes sessions, else 0 (text)
  WebSocket /              sends 1 or 0 at once, then each time that changes
  GET /load                the mean load of the nodes that answer (-1: none answers)
  GET /monitor             an HTML table of the nodes and their loads (full: in red);
                           ?format=json: {"load", "threshold", "nodes": [{"node", "url", "load",
                           "available", "error"}]}
  GET /session             ws(s)://... of the least-loaded node that takes sessions
  GET /v1/reserve/{service}?k=v...
                           reserves on the least-loaded node with a free instance of
                           that service: 200 {"token", "ws_url", "node"}
  GET /v1/status           every node's /v1/status, services merged, each instance
                           with its "node"
"""

import html
import time
from urllib.parse import quote, urlencode

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.web import resource, server

from nexusws.answers import HTML, TEXT, Answers, error
from nexusws.balancer.nodes import NodeError
from nexusws.logs import logger, one_line, printable

_log = logger("nexusws.balancer.web")

NO_NODE = "Error: no simulation server available at the moment."
#: Seconds a node has to answer a reservation (its state file written, its answer sent).
RESERVE_TIMEOUT = 10.0


def send(request, code, content_type, body):
    """Write an answer as Webots' session server does: pages of other origins may ask."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-headers", b"x-requested-with")
    request.setHeader(b"access-control-allow-methods", b"POST, GET, OPTIONS")
    return body


#: Every answer of the balancer: never cached, JSON and errors as the gateway's (L{nexusws.answers}).
answer = Answers(send)


class Availability(WebSocketServerProtocol):
    """A client of the WebSocket on /: told 1 or 0 now and at every change."""

    def onOpen(self):
        self.factory.clients.add(self)
        self.sendMessage(b"1" if self.factory.cluster.available else b"0", isBinary=False)

    def onMessage(self, payload, isBinary):
        pass  # Webots' clients send nothing that matters

    def onClose(self, wasClean, code, reason):
        self.factory.clients.discard(self)


class AvailabilityFactory(WebSocketServerFactory):
    protocol = Availability

    def __init__(self, cluster, reactor):
        super().__init__(reactor=reactor)
        self.cluster = cluster
        self.clients = set()
        self.setProtocolOptions(webStatus=False, autoPingInterval=30, autoPingTimeout=30)

    def broadcast(self, available):
        for client in list(self.clients):
            if client.state != client.STATE_OPEN:
                continue  # closing: it is told nothing more
            try:
                client.sendMessage(b"1" if available else b"0", isBinary=False)
            except Exception:  # one client's trouble is not the others'
                _log.failure("telling a WebSocket client the availability failed")


class Root(resource.Resource):
    """/: availability as text, or the WebSocket that pushes it; the rest below."""

    def __init__(self, cluster, reactor):
        super().__init__()
        self.cluster = cluster
        self.sockets = AvailabilityFactory(cluster, reactor)
        self._websocket = WebSocketResource(self.sockets)
        self.putChild(b"load", Leaf(self._load))
        self.putChild(b"monitor", Leaf(self._monitor))
        self.putChild(b"session", Leaf(self._session))
        self.putChild(b"v1", Api(cluster))

    def getChild(self, path, request):
        if path == b"":
            return self
        return resource.NoResource()

    def render(self, request):
        if (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
            return self._websocket.render(request)
        return self.render_GET(request)

    def render_GET(self, request):
        return answer(request, 200, TEXT, b"1" if self.cluster.available else b"0")

    def _load(self, request):
        mean = self.cluster.average_load()
        return answer(request, 200, TEXT, b"-1" if mean is None else f"{mean:g}".encode())

    def _session(self, request):
        nodes = self.cluster.candidates()
        if not nodes:
            return answer(request, 200, TEXT, NO_NODE.encode())
        return answer(request, 200, TEXT, nodes[0].report["ws_url"].encode("utf-8"))

    def _monitor(self, request):
        c = self.cluster
        threshold = c.config.load_threshold
        if request.args.get(b"format") == [b"json"]:  # the nodes panel of a node's admin dashboard
            taking = c.candidates()
            return answer.json(request, 200, {
                "load": c.average_load(), "threshold": threshold,
                "nodes": [{"node": n.name, "url": n.url, "load": n.load, "available": n in taking,
                           "error": n.error} for n in c.nodes]})
        rows = []
        for i, node in enumerate(c.nodes, 1):
            load = node.load
            shown = "N/A" if load is None else f"{load:g}%"
            if load is None or load >= threshold:
                shown = f'<span style="color:red">{shown}</span>'
            why = "" if node.error is None else f" ({html.escape(node.error)})"
            link = html.escape(f"{node.url}/v1/status_view", quote=True)
            rows.append(f'<tr><td>{i}</td><td><a href="{link}">{html.escape(node.name)}</a>'
                        f"{why}</td><td>{shown}</td></tr>")
        mean = c.average_load()
        average = "N/A" if mean is None else f"{mean:.1f}%"
        if mean is None or mean >= threshold:
            average = f'<span style="color:red">{average}</span>'
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.started or time.time()))
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>nexusws session balancer'
            "</title></head>\n<body><h1>nexusws session balancer</h1>\n"
            f"<p>Started on {started}</p>\n<p>Managing {len(c.nodes)} simulation server"
            f"{'s' if len(c.nodes) != 1 else ''}:</p>\n"
            '<table border="1"><thead><tr><th>#</th><th>simulation server</th><th>load</th></tr>'
            "</thead>\n" + "\n".join(rows) +
            f'\n<tr><td></td><td style="text-align:right">average:</td><td><b>{average}</b></td></tr>'
            "\n</table>\n</body></html>\n"
        )
        return answer(request, 200, HTML, page.encode("utf-8"))


class Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return answer(request, 404, TEXT, b"not found")
        return self._render(request)


class Api(resource.Resource):
    """/v1 of the balancer: reservations forwarded, status merged."""

    isLeaf = True

    def __init__(self, cluster):
        super().__init__()
        self.cluster = cluster

    def render_GET(self, request):
        path = [p.decode("utf-8", "replace") for p in request.postpath]
        if len(path) == 2 and path[0] == "reserve" and path[1]:
            d = self._reserve(request, path[1])
        elif path in (["status"], ["status", ""]):
            d = self._status(request)
        else:
            return answer.error(request, 404, f"no such call: /v1/{printable('/'.join(path))}")
        finish(request, d)
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _reserve(self, request, service):
        # The balancer calls the nodes with the operator's token: a client must not
        # name a user (or a token) through it.
        query = urlencode([(k, v) for k, vs in request.args.items() for v in vs
                           if k not in (b"user", b"security_token")])
        tried = []
        for node in self.cluster.candidates(service):
            path = f"/v1/reserve/{quote(service, safe='')}" + (f"?{query}" if query else "")
            ws_url = node.report["ws_url"]
            try:
                reserved = yield self.cluster.get_json(node, path, RESERVE_TIMEOUT)
                token = reserved["token"]
                if not isinstance(token, str):
                    raise NodeError(f"token {printable(repr(token))} is not a string")
            except NodeError as e:
                if e.code is not None and 400 <= e.code < 500 and e.code != 404:
                    return e.code, error(f"{node.name}: {e.detail}")  # the same everywhere
                tried.append(f"{node.name}: {one_line(e)}")
                continue
            except Exception as e:  # unreachable, timed out: the next node
                tried.append(f"{node.name}: {one_line(e) or type(e).__name__}")
                continue
            node.took(service)
            _log.info("reserved {service} on {node}", service=printable(service), node=node.name)
            return 200, {"token": token, "ws_url": ws_url, "node": node.name}
        why = "; ".join(tried) if tried else "no node that answers has a free instance of it"
        return 503, error(f"no free instance of service {printable(service)!r}: {why}")

    @defer.inlineCallbacks
    def _status(self, request):
        nodes = [n for n in self.cluster.nodes if n.error is None and n.report is not None]
        results = yield defer.DeferredList(
            [self.cluster.get_json(n, "/v1/status", self.cluster.config.poll_timeout) for n in nodes],
            consumeErrors=True)
        merged = {}
        for node, (ok, listing) in zip(nodes, results, strict=True):
            if not ok or not isinstance(listing, list):
                continue
            for entry in listing:
                if not isinstance(entry, dict) or "name" not in entry:
                    continue
                into = merged.setdefault(entry["name"], {
                    "name": entry["name"], "count": 0, "instances": []})
                into["count"] += entry.get("count", 0) if isinstance(entry.get("count"), int) else 0
                for instance in entry.get("instances", []):
                    if isinstance(instance, dict):
                        # Anyone may ask the balancer: never a token, an option or a user.
                        shown = {k: instance[k] for k in ("index", "timestamp", "state") if k in instance}
                        into["instances"].append({**shown, "node": node.name})
        return 200, list(merged.values())


def finish(request, d):
    """Write the C{(code, value)} C{d} fires with as JSON, unless the client has gone."""
    gone = []
    request.notifyFinish().addErrback(gone.append)

    def write(result):
        code, value = result
        if not gone:
            request.write(answer.json(request, code, value))
            request.finish()

    def failed(failure):
        _log.failure("answering {uri} failed", failure, uri=printable(request.path))
        if not gone:
            request.write(answer.error(request, 500, "internal error; see the log"))
            request.finish()

    d.addCallbacks(write, failed)
