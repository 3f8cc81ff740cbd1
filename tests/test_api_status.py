"""/v1/status and /v1/status_view in memory, through the harness of support/api.py."""

import html.parser
import json

import pytest
from twisted.internet import defer

from support.api import JSON_TYPE, SECRET, Api, FakeService

SERVICE_KEYS = {"name", "count", "common_options", "instances"}
INSTANCE_KEYS = {"index", "token", "timestamp", "state", "options"}
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def make_api(tmp_path):
    return lambda *args, **kwargs: Api(tmp_path, *args, **kwargs)


@pytest.fixture
def two(make_api):
    """Two services: "demo" (2 instances, secrets in its config options) and "idle" (never reserved)."""
    return make_api([
        FakeService("demo", count=2, common_options={"sizes": ["1600x1200"], "vnc_password": "cfg-pw"}),
        FakeService("idle", count=3, aliases=("local_idle",), common_options={}),
    ])


# --- /v1/status ---------------------------------------------------------------


def test_status_is_a_json_list_of_every_service_with_exactly_the_documented_shape(two):
    token = two.reserve("?mode=view")
    r = two.get("/v1/status")
    assert (r.status, r.headers["content-type"], r.headers["cache-control"]) == (200, JSON_TYPE, "no-store")
    listing = r.json()
    assert [s["name"] for s in listing] == ["demo", "idle"]  # in config order, aliases not repeated
    assert all(set(s) == SERVICE_KEYS for s in listing)
    demo, idle = listing
    assert (demo["count"], idle["count"], idle["common_options"], idle["instances"]) == (2, 3, {}, [])
    [instance] = demo["instances"]
    assert INSTANCE_KEYS <= set(instance)
    assert {k: instance[k] for k in INSTANCE_KEYS} == {
        "index": 0, "token": token, "timestamp": "2026-01-01T00:00:00Z",
        "state": "reserved", "options": {"mode": "view"},
    }


def test_status_without_any_configured_service_is_an_empty_list(make_api):
    r = make_api(with_registry=False).get("/v1/status")
    assert (r.status, r.json()) == (200, [])


def test_status_lists_instances_by_index_with_their_reservation_time(two):
    first = two.reserve()
    two.clock.advance(61)
    second = two.reserve()
    two.get(f"/v1/release/{first}")
    third = two.reserve()  # takes the freed index 0
    instances = two.get("/v1/status").json()[0]["instances"]
    assert [(i["index"], i["token"], i["timestamp"]) for i in instances] == [
        (0, third, "2026-01-01T00:01:01Z"), (1, second, "2026-01-01T00:01:01Z")]


def test_status_shows_each_instance_state_as_the_session_goes(two):
    token = two.reserve()

    def state():
        return two.get("/v1/status").json()[0]["instances"][0]["state"]

    assert state() == "reserved"
    two.registry.activate(token)
    assert state() == "active"
    two.services[0].stopping = stopped = defer.Deferred()
    pending = two.send(f"/v1/release/{token}")
    assert state() == "stopping"
    stopped.callback(None)
    assert pending.response().status == 200
    assert two.get("/v1/status").json()[0]["instances"] == []


@pytest.mark.parametrize("name", ["password", "vnc_password", "PASSWORD", "primary_password", "key", "secret"])
def test_status_masks_secret_option_values_but_keeps_the_instance_token(two, name):
    token = two.reserve(f"?{name}=hunter2&{name}=again&mode=view")
    r = two.get("/v1/status")
    assert b"hunter2" not in r.body and b"again" not in r.body
    [instance] = r.json()[0]["instances"]
    assert instance["options"] == {name: "***", "mode": "view"}
    assert instance["token"] == token


def test_status_masks_secret_values_of_the_config_options(two):
    assert two.get("/v1/status").json()[0]["common_options"] == {"sizes": ["1600x1200"], "vnc_password": "***"}


def test_masking_in_status_does_not_change_what_the_script_receives(two):
    token = two.reserve("?password=hunter2")
    two.get("/v1/status")
    two.get("/v1/status_view")
    two.registry.activate(token)
    assert two.services[0].starts == [(0, {"password": "hunter2", "token": token})]


def test_head_of_status_has_the_get_headers_and_no_body(two):
    two.reserve()
    get, head = two.get("/v1/status"), two.get("/v1/status", method=b"HEAD")
    assert (head.status, head.headers["content-type"], head.body) == (200, JSON_TYPE, b"")
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))


# --- /v1/status_view ----------------------------------------------------------


class Table(html.parser.HTMLParser):
    """The rows of the page's table as lists of cell texts, and every tag seen."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.tags, self._in_cell = [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data


def test_status_view_is_an_html_table_with_a_row_per_instance_and_idle_services(two):
    two.reserve("?mode=view")
    r = two.get("/v1/status_view")
    assert (r.status, r.headers["content-type"], r.headers["cache-control"]) == (
        200, "text/html; charset=utf-8", "no-store")
    table = Table(r.body.decode("utf-8"))
    header, *rows = table.rows
    assert header == ["service", "count", "index", "state", "user", "reserved at", "options"]
    assert rows == [
        ["demo", "2", "0", "reserved", "", "2026-01-01T00:00:00Z", '{"mode": "view"}'],
        ["idle", "3", "", "free", "", "", ""],
    ]


def test_status_view_without_any_configured_service_says_so(make_api):
    r = make_api(with_registry=False).get("/v1/status_view")
    assert r.status == 200
    assert Table(r.body.decode()).rows[1:] == [["no services configured"]]


def test_status_view_escapes_service_names_and_option_names_and_values(make_api):
    api = make_api([FakeService(HOSTILE, common_options={})])
    token = api.get("/v1/reserve/" + "".join(f"%{b:02X}" for b in HOSTILE.encode()) + "?"
                    + "%3Cb%3Ename%3C%2Fb%3E=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E%26amp%3B").json()["token"]
    assert api.registry.get(token).options == {"<b>name</b>": "<img src=x onerror=alert(1)>&amp;"}
    r = api.get("/v1/status_view")
    text = r.body.decode("utf-8")
    table = Table(text)
    assert "script" not in table.tags and "img" not in table.tags and "b" not in table.tags
    assert "&lt;script&gt;" in text and "&amp;amp;" in text
    assert table.rows[1][0] == HOSTILE  # shown, as text
    assert json.loads(table.rows[1][-1]) == {"<b>name</b>": "<img src=x onerror=alert(1)>&amp;"}


def test_status_view_masks_secret_option_values(two):
    two.reserve("?vnc_password=hunter2")
    r = two.get("/v1/status_view")
    assert b"hunter2" not in r.body and b"cfg-pw" not in r.body
    assert json.loads(Table(r.body.decode()).rows[1][-1]) == {"vnc_password": "***"}


def test_status_view_needs_the_security_token_too(make_api):
    api = make_api(security_token=SECRET)
    assert api.get("/v1/status_view").status == 401
    assert api.get(f"/v1/status_view?security_token={SECRET}").status == 200

