"""The /v1 REST API in memory: reserve, release, stop, errors, methods, the security token,
and the table of calls (L{nexusws.api.CALLS}) as the one source of routes, methods and metric labels.

Raw HTTP bytes go through twisted.web's real parser and L{nexusws.web} Site
(one L{StringTransport} connection per request, no sockets) to an L{ApiRoot}
over a real L{Registry} of fake services; every timer runs on a L{Clock}.
The harness is in support/api.py; the status calls are in test_api_status.py.
"""

import uuid

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from nexusws import web
from nexusws.api import API_METHODS, CALLS, ApiRoot, Call, Who, answer
from nexusws.metrics import Metrics
from support.api import JSON_TYPE, SECRET, Api, FakeService


@pytest.fixture
def make_api(tmp_path):
    return lambda *args, **kwargs: Api(tmp_path, *args, **kwargs)


@pytest.fixture
def api(make_api):
    return make_api()


def assert_json_error(r, status):
    assert r.status == status, r.raw
    assert r.headers["content-type"] == JSON_TYPE
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]


# --- reserve ------------------------------------------------------------------


def test_reserve_answers_200_json_with_a_fresh_uuid4_token_service_and_index(make_api):
    api = make_api([FakeService(count=2)])
    first, second = api.get("/v1/reserve/demo"), api.get("/v1/reserve/demo")
    assert (first.status, first.headers["content-type"], first.headers["cache-control"]) == (
        200, JSON_TYPE, "no-store")
    tokens = []
    for r, index in ((first, 0), (second, 1)):
        body = r.json()
        parsed = uuid.UUID(body["token"])
        assert parsed.version == 4 and str(parsed) == body["token"]
        assert body == {"token": body["token"], "service": "demo", "index": index}
        tokens.append(body["token"])
    assert api.live() == {tokens[0]: ("demo", 0, "reserved"), tokens[1]: ("demo", 1, "reserved")}


def test_reserve_records_query_options_one_value_as_a_string_repeated_ones_as_a_list(api):
    token = api.reserve("?sizes=1600x1200&sizes=800x600&mode=view&empty=&name=a%20b%26c")
    assert api.registry.get(token).options == {
        "sizes": ["1600x1200", "800x600"], "mode": "view", "empty": "", "name": "a b&c"}


def test_reserve_records_no_security_token_and_no_client_supplied_token_or_user(make_api):
    """security_token is the API's; token and user are what nexusws itself tells the
    script: without the security token a client cannot pose as a user."""
    api = make_api()
    token = api.reserve("?token=forged&user=admin&mode=1")
    assert api.registry.get(token).options == {"mode": "1"}
    assert api.registry.get(token).user is None
    api.registry.activate(token)
    assert api.services[0].starts == [(0, {"mode": "1", "token": token})]


def test_reserve_with_the_security_token_reserves_on_behalf_of_the_user_parameter(make_api):
    """With the security token, user=NAME names the user the reservation is for: it is
    recorded as the reservation's user (not an option) and the script receives it."""
    api = make_api(security_token=SECRET)
    token = api.reserve(f"?security_token={SECRET}&token=forged&user=admin&mode=1")
    assert api.registry.get(token).options == {"mode": "1"}
    assert api.registry.get(token).user == "admin"
    api.registry.activate(token)
    assert api.services[0].starts == [(0, {"mode": "1", "token": token, "user": "admin"})]


def test_reserve_without_any_option_records_an_empty_dict(api):
    assert api.registry.get(api.reserve()).options == {}


def test_reserve_of_a_service_name_with_spaces_takes_it_percent_encoded(make_api):
    api = make_api([FakeService("Local Software Session")])
    r = api.get("/v1/reserve/Local%20Software%20Session?x=1")
    assert (r.status, r.json()["service"]) == (200, "Local Software Session")
    assert [v[0] for v in api.live().values()] == ["Local Software Session"]


@pytest.mark.parametrize("name", ["ensight", "local_ensight"])
def test_reserve_by_name_or_alias_reserves_the_same_service(make_api, name):
    api = make_api([FakeService("ensight", aliases=("local_ensight",)), FakeService("envision")])
    r = api.get(f"/v1/reserve/{name}")
    assert (r.status, r.json()["service"]) == (200, "ensight")
    assert list(api.live().values()) == [("ensight", 0, "reserved")]


@pytest.mark.parametrize("name", ["nope", "Demo", "demo%20", "", "%ff"])
def test_reserve_of_an_unknown_service_is_json_404_and_reserves_nothing(api, name):
    r = api.get(f"/v1/reserve/{name}")
    assert_json_error(r, 404)
    assert "unknown service" in r.json()["error"]
    assert api.live() == {}


def test_reserve_without_any_configured_service_is_json_404(make_api):
    assert_json_error(make_api(with_registry=False).get("/v1/reserve/demo"), 404)


def test_reserve_with_every_instance_taken_is_json_503_until_one_is_released(make_api):
    api = make_api([FakeService(count=2)])
    first, _ = api.reserve(), api.reserve()
    r = api.get("/v1/reserve/demo")
    assert_json_error(r, 503)
    assert "no free instance" in r.json()["error"]
    assert len(api.live()) == 2
    api.get(f"/v1/release/{first}")
    assert api.get("/v1/reserve/demo").json()["index"] == 0


# --- release ------------------------------------------------------------------


def test_release_of_a_reserved_token_answers_200_and_frees_its_index(api):
    token = api.reserve()
    r = api.get(f"/v1/release/{token}")
    assert (r.status, r.headers["content-type"], r.json()) == (200, JSON_TYPE, {"released": token})
    assert api.live() == {} and api.services[0].stops == []  # nothing was running
    again = api.get("/v1/reserve/demo").json()
    assert (again["index"], again["token"] != token) == (0, True)


@pytest.mark.parametrize("token", ["nope", str(uuid.uuid4()), "%20"])
def test_release_of_an_unknown_token_is_json_404(api, token):
    kept = api.reserve()
    assert_json_error(api.get(f"/v1/release/{token}"), 404)
    assert list(api.live()) == [kept]


def test_release_of_an_already_released_token_is_json_404(api):
    token = api.reserve()
    assert api.get(f"/v1/release/{token}").status == 200
    assert_json_error(api.get(f"/v1/release/{token}"), 404)


def test_release_without_any_configured_service_is_json_404(make_api):
    assert_json_error(make_api(with_registry=False).get("/v1/release/abc"), 404)


def test_release_of_an_active_instance_answers_only_once_its_stop_has_finished(api):
    token = api.reserve()
    api.registry.activate(token)
    api.services[0].stopping = stopped = defer.Deferred()
    pending = api.send(f"/v1/release/{token}")
    assert not pending.finished
    assert api.services[0].stops == [0]
    assert api.live() == {token: ("demo", 0, "stopping")}
    assert_json_error(api.get("/v1/reserve/demo"), 503)  # the index is not free yet
    stopped.callback(None)
    assert (pending.response().status, pending.response().json()) == (200, {"released": token})
    assert api.live() == {}
    assert api.get("/v1/reserve/demo").json()["index"] == 0


def test_release_whose_client_hung_up_still_frees_the_index_and_writes_nothing(api, events):
    token = api.reserve()
    api.registry.activate(token)
    api.services[0].stopping = stopped = defer.Deferred()
    pending = api.send(f"/v1/release/{token}")
    sent = pending.transport.value()
    pending.hang_up()
    stopped.callback(None)
    assert pending.transport.value() == sent == b""
    assert api.live() == {}
    assert not [e for e in events if e.get("log_failure") is not None]


# --- stop ---------------------------------------------------------------------


def test_stop_answers_200_and_calls_stop_once_after_the_answer_is_written(api):
    r = api.get("/v1/stop")
    assert (r.status, r.headers["content-type"], r.json()) == (200, JSON_TYPE, {"stopping": True})
    assert api.stop_calls == []  # not from inside the request
    api.clock.advance(0)
    assert api.stop_calls == [[True]]


def test_stop_requested_twice_answers_200_both_times_but_stops_once(api):
    assert api.get("/v1/stop").status == 200
    assert api.get("/v1/stop").status == 200
    api.clock.advance(0)
    assert api.get("/v1/stop").status == 200
    api.clock.advance(10)
    assert len(api.stop_calls) == 1


def test_stop_whose_client_hung_up_before_the_answer_still_stops(api):
    """The answer of a stop cannot be held back; a vanished client does not cancel the stop."""
    exchange = api.send("/v1/stop")
    exchange.hang_up()
    api.clock.advance(0)
    assert len(api.stop_calls) == 1


# --- errors and methods -------------------------------------------------------


@pytest.mark.parametrize("target", ["/v1", "/v1/", "/v1/nope", "/v1/reserve", "/v1/reserve/demo/x",
                                    "/v1/release", "/v1/release/a/b", "/v1/status/x", "/v1/stop/now"])
def test_unknown_calls_are_json_404_naming_the_call(api, target):
    r = api.get(target)
    assert_json_error(r, 404)
    assert r.json()["error"].startswith("no such API call: /v1/")


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
@pytest.mark.parametrize("call", ["reserve/demo", "release/TOKEN", "status", "status_view", "stop"])
def test_methods_other_than_get_are_json_405_and_change_nothing(api, method, call):
    token = api.reserve()
    r = api.get("/v1/" + call.replace("TOKEN", token), method=method)
    assert_json_error(r, 405)
    assert r.headers["allow"] in ("GET, HEAD", "GET")
    api.clock.advance(10)
    assert (list(api.live()), api.stop_calls) == ([token], [])


@pytest.mark.parametrize("call", ["reserve/demo", "release/TOKEN", "stop"])
def test_head_of_a_call_that_changes_something_is_405_and_changes_nothing(api, call):
    """A HEAD answer has no body: a reservation made by it would hold an index nobody can use."""
    token = api.reserve()
    r = api.get("/v1/" + call.replace("TOKEN", token), method=b"HEAD")
    assert (r.status, r.headers["allow"], r.body) == (405, "GET", b"")
    api.clock.advance(10)
    assert (list(api.live()), api.stop_calls) == ([token], [])


# --- security token -----------------------------------------------------------


TARGETS = ["reserve/demo?mode=1", "release/TOKEN", "status", "status_view", "stop", "nope"]


@pytest.mark.parametrize("credentials", [
    ("", []), ("?security_token=wrong", []), ("", [("Authorization", "Bearer wrong")]),
], ids=["none", "wrong-query", "wrong-bearer"])
@pytest.mark.parametrize("call", TARGETS)
def test_with_a_security_token_every_call_without_it_is_401_and_has_no_effect(make_api, call, credentials):
    api = make_api(security_token=SECRET)
    token = api.reserve(f"?security_token={SECRET}")
    query, headers = credentials
    sep = "&" if "?" in call else ""
    target = "/v1/" + call.replace("TOKEN", token) + (sep + query[1:] if sep and query else query)
    r = api.get(target, headers=headers)
    assert_json_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert token not in r.body.decode()
    api.clock.advance(10)
    assert (list(api.live()), api.stop_calls) == ([token], [])


@pytest.mark.parametrize("how", ["query", "bearer"])
def test_with_the_security_token_in_query_or_bearer_header_every_call_works(make_api, how):
    api = make_api(security_token=SECRET)
    query, headers = (f"security_token={SECRET}", []) if how == "query" else ("", [("Authorization", f"Bearer {SECRET}")])
    token = api.get(f"/v1/reserve/demo?{query}", headers=headers).json()["token"]
    assert api.get(f"/v1/status?{query}", headers=headers).json()[0]["instances"][0]["token"] == token
    assert api.get(f"/v1/status_view?{query}", headers=headers).status == 200
    assert api.get(f"/v1/release/{token}?{query}", headers=headers).status == 200
    assert api.get(f"/v1/stop?{query}", headers=headers).status == 200
    api.clock.advance(0)
    assert (api.live(), len(api.stop_calls)) == ({}, 1)


@pytest.mark.parametrize("query, problem", [
    ("?x=" + "a" * 5000, "option 'x' is not a text of at most 4096 characters"),
    ("?" + "&".join(f"k{i}=v" for i in range(300)), "options are not an object of at most 256 entries"),
])
def test_reserve_refuses_options_the_state_file_could_not_give_back_with_400(api, query, problem):
    """What /v1/reserve accepts survives a restart: the state file's own limits, checked first."""
    r = api.get(f"/v1/reserve/{api.services[0].name}{query}")
    assert_json_error(r, 400)
    assert problem in r.json()["error"]
    assert api.live() == {}


# --- the table of calls -------------------------------------------------------


def path_of(call, *extra):
    """A path naming C{call} with as many arguments as it takes (then C{extra} ones)."""
    return "/v1/" + "/".join([call.name, *["demo"] * call.arity, *extra])


def test_every_call_of_the_table_is_routed_and_only_with_its_arity(api):
    for call in CALLS.values():
        r = api.get(path_of(call))
        assert r.status != 404 or not r.json()["error"].startswith("no such API call"), call.name
        short = "/v1/" + call.name + ("" if call.arity else "/")  # /v1/stop/ is stop with an argument
        for target in [path_of(call, "x"), short]:
            r = api.get(target)
            assert_json_error(r, 404)
            assert r.json()["error"] == f"no such API call: {target}"
    assert api.get("/v1/nope").json()["error"] == "no such API call: /v1/nope"


@pytest.mark.parametrize("call", CALLS.values(), ids=list(CALLS))
def test_head_and_the_405s_follow_the_table(api, call):
    """A call that changes something answers GET only; the others HEAD too; nothing else is answered."""
    assert call.methods == ((b"GET",) if call.mutating else (b"GET", b"HEAD"))
    r = api.get(path_of(call), method=b"HEAD")
    if call.mutating:
        assert (r.status, r.headers["allow"], r.body) == (405, "GET", b"")
    else:
        assert r.status in (200, 404) and r.body == b""
    r = api.get(path_of(call), method=b"POST")
    assert_json_error(r, 405)
    assert r.headers["allow"] == "GET, HEAD" == ", ".join(m.decode() for m in API_METHODS)
    api.clock.advance(10)
    assert api.live() == {} and api.stop_calls == []


class MeteredApi(Api):
    """The harness, its ApiRoot counting its answers into a L{Metrics}."""

    def __init__(self, directory):
        super().__init__(directory)
        self.metrics = Metrics()
        root = ApiRoot(None, registry=self.registry, stop=self._stop, reactor=self.clock, metrics=self.metrics)
        self.site = web.make_site(str(directory), root, reactor=MemoryReactorClock())

    def labels(self):
        """The C{call} labels of the answers counted so far."""
        return {s.labels["call"] for family in self.metrics.requests.collect() for s in family.samples}


def test_the_metric_labels_are_those_the_table_declares(tmp_path):
    api = MeteredApi(tmp_path)
    for call in CALLS.values():
        api.get(path_of(call))
        api.get(path_of(call, "x"))  # a 404 still counts as its call
    api.get("/v1/nope")
    assert api.labels() == {call.metric for call in CALLS.values()} | {"other"}
    assert {call.metric for call in CALLS.values()} == set(CALLS)
    assert all(name == call.name for name, call in CALLS.items())


def test_a_new_call_is_one_entry_of_the_table_and_its_handler(tmp_path, monkeypatch):
    def echo(root, request, caller, word):
        return answer.json(request, 200, {"echo": word})

    monkeypatch.setitem(CALLS, "echo", Call("echo", 1, False, Who.LOCAL, echo, "echoes"))
    api = MeteredApi(tmp_path)
    r = api.get("/v1/echo/hi")
    assert (r.status, r.json(), r.headers["cache-control"]) == (200, {"echo": "hi"}, "no-store")
    assert api.get("/v1/echo/hi", method=b"HEAD").status == 200
    assert_json_error(api.get("/v1/echo"), 404)
    assert "echoes" in api.labels()
