"""/v1/load: the node's load for a balancer (nexusws.load)."""

import json
import urllib.request

import pytest
from twisted.internet.testing import MemoryReactorClock

from nexusws import web
from nexusws.api import ApiRoot
from nexusws.load import NodeLoad, check_ws_url, cpu_pressure, memory_in_use
from support.api import Api
from support.reservations import FakeService, World

PSI = """some avg10=12.34 avg60=7.45 avg300=7.78 total=1341708107
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
MEMINFO = """MemTotal:       24000000 kB
MemFree:         1000000 kB
MemAvailable:   18000000 kB
Buffers:          100000 kB
"""


def test_cpu_pressure_is_psis_some_avg10_else_the_load_average_per_cpu(tmp_path, monkeypatch):
    psi = tmp_path / "cpu"
    psi.write_text(PSI)
    assert cpu_pressure(str(psi)) == 12.3
    monkeypatch.setattr("os.getloadavg", lambda: (3.0, 0, 0))
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert cpu_pressure(str(tmp_path / "none")) == 75.0, "no PSI: load average 3 on 4 CPUs"
    psi.write_text("garbage\n")
    assert cpu_pressure(str(psi)) == 75.0
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 0, 0))
    assert cpu_pressure(str(tmp_path / "none")) == 100.0, "never above 100"


def test_memory_in_use_is_what_memavailable_leaves(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert memory_in_use(str(meminfo)) == 25.0
    meminfo.write_text("MemTotal: 0 kB\n")
    assert memory_in_use(str(meminfo)) == 0.0
    assert memory_in_use(str(tmp_path / "none")) == 0.0


def test_this_machines_figures_are_percentages():
    assert 0 <= cpu_pressure() <= 100 and 0 < memory_in_use() <= 100


class Bridge:
    def __init__(self, tunnels):
        self.tunnels = set(range(tunnels))


def test_the_load_is_the_highest_part_and_the_report_gives_each_service():
    world = World(services=[FakeService(name="a", count=4), FakeService(name="b", count=1,
                                                                      aliases=["local_b"])])
    world.registry.reserve("a")
    world.registry.reserve("b")
    node = NodeLoad(world.registry, Bridge(3), 10, ws_url=lambda: "ws://n1:8080/",
                    cpu=lambda: 12.5, memory=lambda: 20.0)
    report = node.report()
    assert report == {
        "load": 40.0,
        "parts": {"sessions": 40.0, "tunnels": 30.0, "cpu": 12.5, "memory": 20.0},
        "services": {"a": {"used": 1, "capacity": 4, "free": 3, "aliases": []},
                     "b": {"used": 1, "capacity": 1, "free": 0, "aliases": ["local_b"]}},
        "tunnels": {"active": 3, "max": 10},
        "pending": 0,
        "ws_url": "ws://n1:8080/",
    }
    busy = NodeLoad(None, Bridge(0), 0, cpu=lambda: 97.0, memory=lambda: 10.0).report()
    assert busy["load"] == 97.0 and busy["services"] == {} and busy["parts"]["tunnels"] == 0.0


def test_a_batch_backends_jobs_waiting_in_its_queue_are_counted_as_pending():
    class Queued(FakeService):
        def pending(self):
            return 2

    world = World(services=[Queued(name="cluster", count=4), FakeService(name="local", count=1)])
    for _ in range(3):
        world.registry.reserve("cluster")
    report = NodeLoad(world.registry, Bridge(0), 0, cpu=lambda: 0.0, memory=lambda: 0.0).report()
    assert report["pending"] == 2 and report["services"]["cluster"]["pending"] == 2
    assert "pending" not in report["services"]["local"], "a local backend has no queue"
    assert report["services"]["cluster"]["used"] == 3 and report["parts"]["sessions"] == 60.0


@pytest.mark.parametrize("url", ["ws://node1:8080/", "wss://gw.example.com/cluster/n1", "ws://[::1]:1/"])
def test_advertised_urls_are_ws_or_wss_with_a_host(url):
    assert check_ws_url(url) == url


class LoadApi(Api):
    def __init__(self, directory, security_token=None):
        super().__init__(directory, security_token=security_token)
        load = NodeLoad(self.registry, Bridge(0), 0, ws_url=lambda: "ws://n1:1/",
                        cpu=lambda: 37.5, memory=lambda: 1.0)
        root = ApiRoot(security_token, registry=self.registry, stop=self._stop, reactor=self.clock,
                       load=load)
        self.site = web.make_site(str(directory), root, reactor=MemoryReactorClock())


def test_v1_load_answers_the_number_alone_as_a_webots_simulation_server_does(tmp_path):
    api = LoadApi(tmp_path)
    r = api.get("/v1/load")
    assert r.status == 200 and r.body == b"37.5"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    j = api.get("/v1/load?format=json")
    assert j.status == 200 and j.json()["load"] == 37.5 and j.json()["ws_url"] == "ws://n1:1/"
    assert j.json()["services"] == {"demo": {"used": 0, "capacity": 1, "free": 1, "aliases": []}}


def test_v1_load_needs_the_security_token_like_every_call(tmp_path):
    api = LoadApi(tmp_path, security_token="k")
    assert api.get("/v1/load").status == 401
    assert api.get("/v1/load?security_token=k").status == 200


def test_a_real_gateway_advertises_its_websocket_listener_or_the_url_it_is_given(gateway, tmp_path):
    loopback = "tcp:0:interface=127.0.0.1"
    base = ["--ws_listen", loopback, "--http_listen", loopback, "--http_directory", str(tmp_path),
            "--client_hostname", "127.0.0.1", "--client_port", "9"]
    for extra, expected in [([], None), (["--advertise_url", "wss://gw.example.com/n1"],
                                         "wss://gw.example.com/n1")]:
        gw = gateway([*base, *extra], http=True)
        with urllib.request.urlopen(f"{gw.http_url}/v1/load?format=json", timeout=10) as answer:
            report = json.load(answer)
        assert report["ws_url"] == (expected or f"ws://127.0.0.1:{gw.ws_port}/")
        assert 0 <= report["load"] <= 100
        gw.stop()
