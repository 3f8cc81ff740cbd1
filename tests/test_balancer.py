"""The session balancer (nexusws.balancer): its configuration, polling, choice and endpoints,
in memory (a fake HTTP agent on a Clock)."""

import json

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from nexusws.balancer import config
from nexusws.balancer.nodes import BACK, DOWN, FREE, FULL, Cluster
from nexusws.balancer.web import NO_NODE, Root

WEBOTS = {
    "port": 1999, "portRewrite": True, "server": "cyberbotics1.epfl.ch",
    "administrator": "admin@cyberbotics.com", "mailServer": "mail.infomaniak.com",
    "mailServerPort": 587, "mailSender": "support@cyberbotics.com", "mailSenderPassword": "********",
    "simulationServers": ["cyberbotics1.epfl.ch/2000"],
}


# --- configuration -------------------------------------------------------------------


def test_webots_example_configuration_is_taken_with_webots_defaults(tmp_path):
    path = tmp_path / "session.json"
    path.write_text(json.dumps(WEBOTS))
    c = config.load(str(path))
    assert (c.port, c.ssl, c.port_rewrite, c.debug) == (1999, True, True, False)
    assert c.nodes == ["https://cyberbotics1.epfl.ch/2000"]
    assert c.log_dir == str(tmp_path / "log")
    assert (c.poll_interval, c.poll_timeout, c.load_threshold) == (5.0, 2.0, 95.0)
    assert c.mail.server == "mail.infomaniak.com" and c.mail.port == 587
    assert c.mail.user is None and c.mail.password == "********"
    assert c.monitor_url() == "https://cyberbotics1.epfl.ch/1999/monitor"
    assert c.notes == []


@pytest.mark.parametrize("change, expected", [
    ({"simulationServers": []}, "'simulationServers' must be a non-empty list"),
    ({"simulationServers": None}, "'simulationServers' must be a non-empty list"),
    ({"simulationServers": ["a:1", "a:1"]}, "'simulationServers' names a node twice"),
    ({"simulationServers": ["a:99999"]}, "'simulationServers[0]' 'a:99999' is not a node address"),
    ({"simulationServers": [5]}, "'simulationServers[0]' must be a node address (host:port), not 5"),
    ({"simulationServers": ["ftp://a:1"]}, "'simulationServers[0]' 'ftp://a:1' is not a node address"),
    ({"port": "1999"}, "'port' must be a number from 0 to 65535, not '1999'"),
    ({"port": 1.5}, "'port' must be a whole number"),
    ({"ssl": "yes"}, "'ssl' must be true or false, not 'yes'"),
    ({"pollInterval": 1, "pollTimeout": 2}, "'pollTimeout' must be a number from 0.05 to 1"),
    ({"loadThreshold": 101}, "'loadThreshold' must be a number from 0 to 100"),
    ({"mailServerPort": "587"}, "'mailServerPort' must be a port number"),
    ({"administrator": ""}, "'administrator' must be a non-empty string"),
])
def test_a_bad_value_is_one_line_naming_the_file_and_key(change, expected):
    with pytest.raises(config.ConfigError) as caught:
        config.parse({**WEBOTS, **change}, "/etc/session.json")
    message = str(caught.value)
    assert message.startswith("/etc/session.json: ") and expected in message and "\n" not in message


def test_missing_nodes_unreadable_files_and_bad_json_are_one_line(tmp_path):
    with pytest.raises(config.ConfigError, match="'simulationServers' is missing"):
        config.parse({"port": 1})
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    for text, problem in [("{", "not valid JSON"), ("[1]", "must be a JSON object"),
                          ('{"port": 1, "port": 2}', "key 'port' is given twice")]:
        bad.write_text(text)
        with pytest.raises(config.ConfigError, match=problem):
            config.load(str(bad))


def test_unknown_keys_and_mail_without_a_server_are_noted_not_fatal():
    c = config.parse({"simulationServers": ["n:1"], "administrator": "a@b", "colour": "red"})
    assert c.mail is None
    assert any("unknown key 'colour'" in n for n in c.notes)
    assert any("mailServer is not: no e-mail will be sent" in n for n in c.notes)


def test_node_addresses_may_be_host_port_or_urls_with_a_prefix():
    c = config.parse({"ssl": False, "simulationServers": [
        "n1:8080", "https://gw.example.com/cluster/n2/", "http://[::1]:9"]})
    assert c.nodes == ["http://n1:8080", "https://gw.example.com/cluster/n2", "http://[::1]:9"]


# --- a cluster of fake nodes -----------------------------------------------------------


class Response:
    def __init__(self, code, body):
        self.code, self.phrase, self.body = code, b"", body
        self.length = len(body)

    def deliverBody(self, protocol):
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class Agent:
    """Records requests; the test answers them (or not)."""

    def __init__(self):
        self.pending = []  # (url, headers, Deferred)

    def request(self, method, uri, headers=None, body=None):
        entry = []
        d = defer.Deferred(lambda _: self.pending.remove(entry[0]))  # a timeout drops it
        entry.append((uri.decode(), headers, d))
        self.pending.append(entry[0])
        return d

    def answer(self, url_part, code=200, value=None, raw=None):
        for i, (url, _, d) in enumerate(self.pending):
            if url_part in url:
                del self.pending[i]
                d.callback(Response(code, raw if raw is not None else json.dumps(value).encode()))
                return
        raise AssertionError(f"no pending request to {url_part}: {[u for u, _, _ in self.pending]}")

    def refuse(self, url_part):
        for i, (url, _, d) in enumerate(self.pending):
            if url_part in url:
                del self.pending[i]
                d.errback(ConnectionRefusedError("Connection refused"))
                return
        raise AssertionError(f"no pending request to {url_part}")


def report(load, free=1, capacity=2, ws="ws://n/"):
    return {"load": load, "ws_url": ws,
            "services": {"demo": {"used": capacity - free, "capacity": capacity, "free": free}}}


class World:
    def __init__(self, nodes=("a:1", "b:1", "c:1"), **extra):
        self.clock = Clock()
        self.agent = Agent()
        self.events, self.availability = [], []
        cfg = config.parse({"ssl": False, "pollInterval": 5, "pollTimeout": 2,
                            "simulationServers": list(nodes), **extra})
        self.cluster = Cluster(cfg, self.clock, agent=self.agent,
                               on_event=lambda n, e, m: self.events.append((n.name, e, m)),
                               on_availability=self.availability.append)

    def poll(self, loads):
        """One round: C{loads} maps a node name to a report, None (refused) or "silent"."""
        d = self.cluster.poll_all()
        for name, value in loads.items():
            if value is None:
                self.agent.refuse(f"//{name}/")
            elif value != "silent":
                self.agent.answer(f"//{name}/", value=value)
        self.clock.advance(2.01)  # past the poll timeout
        assert d.called
        return d


def test_every_node_is_asked_at_once_and_a_silent_one_is_out_after_the_poll_timeout():
    w = World()
    w.cluster.poll_all()
    assert sorted(u for u, _, _ in w.agent.pending) == [
        "http://a:1/v1/load?format=json", "http://b:1/v1/load?format=json",
        "http://c:1/v1/load?format=json"], "all three asked before any answered"
    w.agent.answer("//a:1/", value=report(10))
    w.agent.answer("//b:1/", value=report(20))
    w.clock.advance(2.01)
    assert [n.name for n in w.cluster.candidates()] == ["a:1", "b:1"]
    assert w.cluster.nodes[2].error == "no answer within 2 s"
    assert w.availability == [True]


def test_the_security_token_goes_to_the_nodes_as_a_bearer_header():
    w = World(securityToken="s3cret")
    w.cluster.poll_all()
    _, headers, _ = w.agent.pending[0]
    assert headers.getRawHeaders(b"authorization") == [b"Bearer s3cret"]


def test_events_are_webots_ones_down_back_full_free_and_only_after_a_first_answer():
    w = World(nodes=("a:1",))
    w.poll({"a:1": None})
    assert w.events == [], "never answered: not 'down' (Webots does the same)"
    w.poll({"a:1": report(10)})
    assert w.events == [], "a first answer is not 'back'"
    w.poll({"a:1": report(96)})
    w.poll({"a:1": report(50)})
    w.poll({"a:1": "silent"})
    w.poll({"a:1": report(40)})
    assert [e for _, e, _ in w.events] == [FULL, FREE, DOWN, BACK]
    assert w.events[0][2] == "a:1 simulation server has reached maximum load (96%)"
    assert "not responding" in w.events[2][2] and "no answer within 2 s" in w.events[2][2]
    assert w.availability == [True, False, True, False, True]


def test_unusable_answers_exclude_a_node_like_silence():
    w = World(nodes=("a:1", "b:1", "c:1"))
    w.cluster.poll_all()
    w.agent.answer("//a:1/", value={"load": 150, "ws_url": "ws://a/"})
    w.agent.answer("//b:1/", raw=b"<html>")
    w.agent.answer("//c:1/", code=401, value={"error": "missing or wrong security_token"})
    assert w.cluster.candidates() == []
    assert [n.error for n in w.cluster.nodes] == [
        "unusable /v1/load answer: load 150.0 out of 0-100", "the answer is not JSON",
        "HTTP 401: missing or wrong security_token"]


def test_the_least_loaded_node_is_chosen_and_ties_are_shared():
    w = World()
    w.poll({"a:1": report(30), "b:1": report(10), "c:1": report(10)})
    firsts = [w.cluster.candidates()[0].name for _ in range(6)]
    assert firsts == ["b:1", "c:1"] * 3, "ties alternate"
    assert all(c[-1].name == "a:1" for c in [w.cluster.candidates() for _ in range(3)])


def test_a_reservation_goes_only_to_nodes_with_a_free_instance_of_the_service():
    w = World()
    w.poll({"a:1": report(5, free=0), "b:1": report(60, free=1), "c:1": report(96, free=2)})
    assert [n.name for n in w.cluster.candidates("demo")] == ["b:1"], "c:1 is full"
    assert w.cluster.candidates("other") == []
    w.cluster.nodes[1].took("demo")
    assert w.cluster.candidates("demo") == [], "its last free instance is taken until the next poll"


# --- the endpoints --------------------------------------------------------------------


def get(resource, path, args=None, headers=None):
    """Render GET C{path} (bytes segments) on C{resource}; a Deferred firing with the request."""
    request = DummyRequest(path.split(b"/")[1:])
    request.args = args or {}
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    node = resource
    while request.postpath and not getattr(node, "isLeaf", False):
        segment = request.postpath.pop(0)
        request.prepath.append(segment)
        node = node.getChildWithDefault(segment, request)
    result = node.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    return request


def body(request):
    return b"".join(request.written)


def test_webots_endpoints_answer_availability_load_session_and_monitor():
    w = World()
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(30, ws="ws://a/"), "b:1": report(10, ws="ws://b/"), "c:1": None})
    assert body(get(root, b"/")) == b"1"
    assert body(get(root, b"/load")) == b"20"
    assert body(get(root, b"/session")) == b"ws://b/"
    page = body(get(root, b"/monitor")).decode()
    assert page.count("<tr><td>") == 4 and ">30%<" in page and ">10%<" in page
    assert '<span style="color:red">N/A</span>' in page and "average:" in page
    assert get(root, b"/session").responseHeaders.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    w.poll({"a:1": None, "b:1": report(97), "c:1": None})
    assert body(get(root, b"/")) == b"0"
    assert body(get(root, b"/session")) == NO_NODE.encode()
    assert body(get(root, b"/load")) == b"97"
    w.poll({"a:1": None, "b:1": None, "c:1": None})
    assert body(get(root, b"/load")) == b"-1"


def test_monitor_as_json_gives_each_nodes_load_for_an_admin_dashboard():
    w = World()
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(30, ws="ws://a/"), "b:1": report(97), "c:1": None})
    answer = json.loads(body(get(root, b"/monitor", args={b"format": [b"json"]})))
    assert [(n["node"], n["load"], n["available"]) for n in answer["nodes"]] == [
        ("a:1", 30, True), ("b:1", 97, False), ("c:1", None, False)]
    assert answer["nodes"][2]["error"] and answer["load"] == 63.5 and answer["threshold"] == 95


def test_a_reservation_is_forwarded_to_the_least_loaded_node_and_falls_to_the_next():
    w = World()
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(30, ws="ws://a/"), "b:1": report(10, ws="ws://b/"), "c:1": report(50)})
    request = get(root, b"/v1/reserve/demo", args={b"size": [b"1024x768"]})
    w.agent.answer("//b:1/v1/reserve/demo?size=1024x768", code=503, value={"error": "no free instance"})
    w.agent.answer("//a:1/v1/reserve/demo?size=1024x768", value={"token": "T", "service": "demo"})
    assert request.responseCode is None or request.responseCode == 200
    assert json.loads(body(request)) == {"token": "T", "ws_url": "ws://a/", "node": "a:1"}
    request = get(root, b"/v1/reserve/none")
    answer = json.loads(body(request))
    assert request.responseCode == 503 and "no free instance of service 'none'" in answer["error"]


def test_v1_status_merges_the_nodes_services_and_never_shows_tokens_options_or_users():
    w = World(nodes=("a:1", "b:1"))
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(0), "b:1": report(0)})
    request = get(root, b"/v1/status")
    instance = {"index": 0, "token": "x", "timestamp": "T", "state": "active",
                "options": {"password": "p"}, "user": "alice"}
    w.agent.answer("//a:1/v1/status", value=[{"name": "demo", "count": 2, "common_options": {"k": 1},
                                             "instances": [instance]}])
    w.agent.answer("//b:1/v1/status", value=[{"name": "demo", "count": 2, "instances": []}])
    assert json.loads(body(request)) == [{"name": "demo", "count": 4, "instances": [
        {"index": 0, "timestamp": "T", "state": "active", "node": "a:1"}]}]


def test_a_client_cannot_name_a_user_or_a_token_through_the_balancer():
    w = World(nodes=("a:1",), securityToken="op")
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(0, ws="ws://a/")})
    get(root, b"/v1/reserve/demo", args={b"user": [b"root"], b"security_token": [b"x"], b"k": [b"v"]})
    ((url, headers, _),) = w.agent.pending
    assert url == "http://a:1/v1/reserve/demo?k=v"


def test_a_node_refusing_the_caller_is_answered_as_it_is_not_tried_elsewhere():
    w = World(nodes=("a:1", "b:1"))
    root = Root(w.cluster, w.clock)
    w.poll({"a:1": report(0), "b:1": report(10)})
    request = get(root, b"/v1/reserve/demo")
    w.agent.answer("//a:1/v1/reserve", code=429, value={"error": "too many reservations"})
    assert request.responseCode == 429 and w.agent.pending == []
    assert json.loads(body(request)) == {"error": "a:1: too many reservations"}


def test_a_node_that_stalls_after_its_headers_is_cut_off_and_polling_goes_on():
    w = World(nodes=("a:1", "b:1"))

    class Stalling(Response):
        def deliverBody(self, protocol):
            self.protocol = protocol  # headers came; the body never does

            class Transport:
                def stopProducing(self):
                    protocol.connectionLost(Failure(ConnectionDone()))

                abortConnection = stopProducing

            protocol.makeConnection(Transport())

    d = w.cluster.poll_all()
    w.agent.answer("//b:1/", value=report(10))
    (url, _, pending) = w.agent.pending[0]
    pending.callback(Stalling(200, b""))
    w.clock.advance(2.01)
    assert d.called, "the round ends at the timeout"
    assert w.cluster.nodes[0].error == "no answer within 2 s"


def test_unusable_service_figures_exclude_the_node():
    w = World(nodes=("a:1",))
    w.poll({"a:1": {"load": 1, "ws_url": "ws://a/", "services": {"demo": {"free": "1"}}}})
    assert w.cluster.candidates("demo") == [] and "services" in w.cluster.nodes[0].error
    w.poll({"a:1": {"load": 1e400, "ws_url": "ws://a/"}})
    assert w.cluster.candidates() == []


@pytest.mark.errors_expected  # provokes the error it checks is logged
def test_a_closing_websocket_client_does_not_stop_the_announcements():
    w = World(nodes=("a:1",))
    root = Root(w.cluster, w.clock)
    told = []

    class Client:
        STATE_OPEN, state = 3, 3

        def __init__(self, fail=False):
            self.fail = fail

        def sendMessage(self, payload, isBinary):
            if self.fail:
                raise RuntimeError("Disconnected")
            told.append(payload)

    closing = Client()
    closing.state = 2
    root.sockets.clients |= {closing, Client(fail=True), Client()}
    root.sockets.broadcast(True)
    assert told == [b"1"]


def test_unknown_paths_are_404():
    w = World()
    root = Root(w.cluster, w.clock)
    assert get(root, b"/v1/nothing").responseCode == 404
    assert isinstance(Site(root), Site)


def test_a_service_is_found_on_the_nodes_by_its_aliases_too():
    w = World(nodes=("a:1",))
    r = report(0)
    r["services"]["demo"]["aliases"] = ["local_demo"]
    w.poll({"a:1": r})
    assert [n.name for n in w.cluster.candidates("local_demo")] == ["a:1"]
    w.cluster.nodes[0].took("local_demo")
    assert w.cluster.nodes[0].free("demo") == 0
