"""Start-up checks that Autobahn's C accelerators (NVX) are in use."""

from autobahn import websocket as autobahn_websocket
from twisted.logger import LogLevel

from nexusws.gateway import check_nvx
from support.events import events_of


def test_nvx_on_is_reported_at_info(monkeypatch):
    monkeypatch.setattr(autobahn_websocket, "USES_NVX", True)
    ok, events = events_of(check_nvx)
    assert ok is True
    assert [e["log_level"] for e in events] == [LogLevel.info]


def test_nvx_off_is_a_loud_warning(monkeypatch):
    monkeypatch.setattr(autobahn_websocket, "USES_NVX", False)
    ok, events = events_of(check_nvx)
    assert ok is False
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert "100 times slower" in events[0]["log_format"]


def test_this_installation_really_uses_nvx():
    """The suite's own environment must have the accelerated Autobahn wheel."""
    assert autobahn_websocket.USES_NVX


def test_gateway_logs_the_nvx_check_at_start_up(gateway):
    gw = gateway(["--ws_listen", "tcp:0:interface=127.0.0.1"])
    assert "Autobahn NVX acceleration: on" in gw.log
