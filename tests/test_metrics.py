"""/v1/metrics: Prometheus metrics of reservations, launches, tunnels and the REST API."""

import asyncio
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from nexusws import web
from nexusws.api import ApiRoot
from nexusws.metrics import Metrics
from nexusws.sessions.registry import NoFreeInstance
from support.api import Api
from support.bridge import open_tunnel
from support.reservations import ADDRESS, FakeService, World


def samples(text):
    """{(name, frozenset(labels.items())): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics, name, **labels):
    return samples(metrics.exposition().decode())[(name, frozenset(labels.items()))]


def world_with_metrics(**kwargs):
    metrics = Metrics()
    return World(metrics=metrics, **kwargs), metrics


def test_reservations_are_counted_by_service_and_what_became_of_them():
    world, metrics = world_with_metrics(services=[FakeService(count=1)])
    registry = world.registry
    a = registry.reserve("demo")
    try:
        registry.reserve("demo")
    except NoFreeInstance:
        pass
    registry.release(a.token)
    registry.reserve("demo")
    world.clock.advance(301)
    registry.reap()
    for outcome, n in [("reserved", 2), ("no_free_instance", 1), ("released", 1), ("expired", 1)]:
        assert value(metrics, "nexusws_reservations_total", service="demo", outcome=outcome) == n


def test_launches_are_counted_and_timed_from_the_token_to_the_instance_accepting():
    service = FakeService(count=2)
    world, metrics = world_with_metrics(services=[service])
    started = defer.Deferred()
    service.start_result = lambda index: started if index == 0 else ADDRESS
    first = world.registry.reserve("demo")
    d = world.registry.activate(first.token)
    world.clock.advance(0.3)
    started.callback(ADDRESS)
    assert d.called
    second = world.registry.reserve("demo")
    service.start_result = lambda index: (_ for _ in ()).throw(RuntimeError("no binary"))
    world.registry.activate(second.token).addErrback(lambda f: None)
    assert value(metrics, "nexusws_launches_total", service="demo", outcome="started") == 1
    assert value(metrics, "nexusws_launches_total", service="demo", outcome="failed") == 1
    assert value(metrics, "nexusws_launch_seconds_count", service="demo") == 1
    assert abs(value(metrics, "nexusws_launch_seconds_sum", service="demo") - 0.3) < 1e-9
    assert value(metrics, "nexusws_launch_seconds_bucket", service="demo", le="0.25") == 0
    assert value(metrics, "nexusws_launch_seconds_bucket", service="demo", le="0.5") == 1
    third = world.registry.reserve("demo")
    service.start_result = lambda index: defer.Deferred()  # never starts
    world.registry.activate(third.token).addErrback(lambda f: None)
    world.registry.release(third.token)
    assert value(metrics, "nexusws_launches_total", service="demo", outcome="cancelled") == 1
    assert value(metrics, "nexusws_launches_total", service="demo", outcome="failed") == 1


def test_tunnels_open_and_the_bytes_each_way_are_read_from_the_bridge_when_scraped():
    h = open_tunnel(greeting=b"")
    metrics = Metrics()
    metrics.watch_tunnels(h.factory)
    h.client.sendMessage(b"u" * 1000, isBinary=True)
    h.backend.transport.write(b"d" * 300)
    h.flush()
    assert value(metrics, "nexusws_tunnels_active") == 1
    assert value(metrics, "nexusws_tunnels_opened_total") == 1
    assert value(metrics, "nexusws_tunnel_bytes_total", direction="client_to_backend") == 1000
    assert value(metrics, "nexusws_tunnel_bytes_total", direction="backend_to_client") == 300
    h.client.sendClose(1000)
    h.flush()
    assert value(metrics, "nexusws_tunnels_active") == 0
    assert value(metrics, "nexusws_tunnel_bytes_total", direction="client_to_backend") == 1000, \
        "a closed tunnel's bytes stay counted"


class MetricsApi(Api):
    """The test API over a registry and an ApiRoot that count into a L{Metrics}."""

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.metrics = Metrics()
        self.registry.metrics = self.metrics
        root = ApiRoot(kwargs.get("security_token"), registry=self.registry, stop=self._stop,
                       reactor=self.clock, metrics=self.metrics)
        self.site = web.make_site(str(directory), root, reactor=MemoryReactorClock())


def test_v1_metrics_answers_the_text_format_with_the_api_answers_counted(tmp_path):
    api = MetricsApi(tmp_path)
    token = api.reserve()
    api.get(f"/v1/release/{token}")
    api.get("/v1/release/nope")
    api.get("/v1/nonsense")
    r = api.get("/v1/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    got = samples(r.body.decode())
    assert got[("nexusws_http_requests_total", frozenset({("call", "reserve"), ("code", "200")}))] == 1
    assert got[("nexusws_http_requests_total", frozenset({("call", "release"), ("code", "200")}))] == 1
    assert got[("nexusws_http_requests_total", frozenset({("call", "release"), ("code", "404")}))] == 1
    assert got[("nexusws_http_requests_total", frozenset({("call", "other"), ("code", "404")}))] == 1
    assert got[("nexusws_reservations_total",
                frozenset({("service", "demo"), ("outcome", "released")}))] == 1
    assert api.get("/v1/metrics", method=b"HEAD").status == 200


def test_v1_metrics_needs_the_security_token_like_every_call(tmp_path):
    api = MetricsApi(tmp_path, security_token="s3cret")
    assert api.get("/v1/metrics").status == 401
    r = api.get("/v1/metrics", headers=[("Authorization", "Bearer s3cret")])
    assert r.status == 200 and b"nexusws_http_requests_total" in r.body
    assert b'code="401"' in r.body, "the refused scrape was counted"


def test_a_real_gateway_serves_its_metrics(gateway, tmp_path, echo_port):
    loopback = "tcp:0:interface=127.0.0.1"
    gw = gateway(["--ws_listen", loopback, "--http_listen", loopback, "--client_hostname", "127.0.0.1",
                  "--client_port", str(echo_port), "--http_directory", str(tmp_path)], http=True)

    async def one_tunnel():
        async with websockets.connect(gw.ws_url) as ws:
            await ws.send(b"x" * 100)
            assert await ws.recv() == b"x" * 100

    asyncio.run(one_tunnel())
    with urllib.request.urlopen(f"{gw.http_url}/v1/metrics", timeout=10) as answer:
        text = answer.read().decode()
    got = samples(text)
    assert got[("nexusws_tunnels_opened_total", frozenset())] == 1
    assert got[("nexusws_tunnel_bytes_total", frozenset({("direction", "client_to_backend")}))] == 100
