"""The HTTP tree in memory: raw request bytes through twisted.web's real parser and Site.

No sockets: each request is fed into C{site.buildProtocol(...)} over a
L{StringTransport}, so URL decoding, traversal and rendering are exactly what
a real listener does. The response bytes are parsed by L{http.client}.
"""

import hashlib
import html.parser
import os
import re
from pathlib import Path

import pytest
from twisted.internet import _producer_helpers, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import eventAsText, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import resource

from nexusws import credentials, scrub, tap, web
from nexusws.api import ApiRoot
from nexusws.files import ConfinedFile, content_types
from support.http import PEER, Response

SECRET = "s3cr3t-T0KEN"
COUNTING = b"".join(b"%03d" % i for i in range(100))  # 300 bytes, each offset distinct
OUTSIDE_TEXT = b"TOP SECRET: outside the served root\n"
PACKAGE_ANSYS = web.ANSYS_ROOT


class Client:
    """Sends raw HTTP/1.1 requests to a Site, one connection per request."""

    def __init__(self, site, clock):
        self.site = site
        self.clock = clock

    def raw(self, data):
        protocol = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        for _ in range(10_000):  # static.File streams a 64 KiB chunk per step
            if not self.clock.getDelayedCalls():
                break
            self.clock.advance(0)
        assert not self.clock.getDelayedCalls(), "response never finished"
        protocol.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def request(self, target, method=b"GET", headers=()):
        if isinstance(target, str):
            target = target.encode("ascii")
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: localhost"]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
        lines += [b"Connection: close", b"", b""]
        return Response(self.raw(b"\r\n".join(lines)), method)


@pytest.fixture
def clock(monkeypatch):
    """Drive twisted.web's pull producers (static.File) with a Clock.

    HTTPChannel runs pull producers through L{task.cooperate}, which would
    schedule on the global reactor; there is no public hook, so the name its
    helper module uses is replaced for the test.
    """
    clock = task.Clock()
    cooperator = task.Cooperator(
        terminationPredicateFactory=lambda: (lambda: True),
        scheduler=lambda step: clock.callLater(0, step),
    )
    monkeypatch.setattr(_producer_helpers, "cooperate", cooperator.cooperate)
    return clock


def populate(root, outside):
    """Files of every tested type, plus links staying inside and leading out."""
    root.mkdir()
    for name in ("page.html", "app.js", "style.css", "data.json", "logo.png", "icon.svg", "mod.wasm", "blob"):
        (root / name).write_bytes(b"content of " + name.encode())
    (root / "counting.txt").write_bytes(COUNTING)
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "site").mkdir()
    (root / "site" / "index.html").write_bytes(b"<p>site index</p>\n")
    (root / "%2e%2e").mkdir()  # a literal name: what a double-encoded .. decodes to once
    (root / "%2e%2e" / "marker.txt").write_bytes(b"literal name\n")
    (root / "out-file").symlink_to(outside / "secret.txt")
    (root / "out-dir").symlink_to(outside)
    (root / "out-relative").symlink_to(Path("..") / "outside" / "secret.txt")
    (root / "in-file").symlink_to("counting.txt")
    (root / "in-dir").symlink_to("sub")
    (root / "sub" / "up-link").symlink_to(Path("..") / "counting.txt")
    (root / "index-out").mkdir()
    (root / "index-out" / "index.html").symlink_to(outside / "secret.txt")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """www/ and ansys/ (mounted at /ansys) side by side with outside/, which holds the secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE_TEXT)
    populate(tmp_path / "www", outside)
    populate(tmp_path / "ansys", outside)
    monkeypatch.setattr(web, "ANSYS_ROOT", str(tmp_path / "ansys"))
    return tmp_path


def make_client(clock, directory, token=None, **site):
    return Client(web.make_site(str(directory), ApiRoot(token), reactor=MemoryReactorClock(), **site), clock)


@pytest.fixture
def client(clock, tree):
    return make_client(clock, tree / "www")


@pytest.fixture
def package_client(clock, tmp_path):
    """A site whose /ansys is the tree shipped in the package."""
    (tmp_path / "www").mkdir()
    return make_client(clock, tmp_path / "www")


@pytest.fixture
def logged():
    """Every log event emitted during the test, as text (tracebacks included)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [eventAsText(e, includeTimestamp=False) for e in events]
    globalLogPublisher.removeObserver(events.append)


MOUNTS = pytest.mark.parametrize("mount", ["", "/ansys"], ids=["root", "ansys"])


def assert_refused(response):
    assert response.status == 404, response.raw
    assert OUTSIDE_TEXT not in response.body


# --- static files -------------------------------------------------------------


def test_root_without_index_lists_files_and_directories(client):
    r = client.request("/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    for name in (b"page.html", b"counting.txt", b"sub/", b"in-file", b"in-dir/"):
        assert b">" + name + b"<" in r.body


def test_directory_with_index_html_serves_it(client):
    r = client.request("/site/")
    assert (r.status, r.body) == (200, b"<p>site index</p>\n")


def test_directory_without_trailing_slash_redirects_to_it(client):
    r = client.request("/sub?x=1")
    assert r.status in (301, 302)
    assert r.headers["location"].endswith("/sub/?x=1")


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("page.html", "text/html"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("data.json", "application/json"),
        ("logo.png", "image/png"),
        ("icon.svg", "image/svg+xml"),
        ("mod.wasm", "application/wasm"),
        ("counting.txt", "text/plain"),
        ("blob", "application/octet-stream"),
    ],
)
def test_content_type_follows_extension_and_unknown_is_not_html(client, name, content_type):
    r = client.request("/" + name)
    assert r.status == 200
    assert r.headers["content-type"] == content_type
    assert r.headers["x-content-type-options"] == "nosniff"


def test_pinned_content_types_override_the_hosts_mime_types():
    types = content_types({".js": "application/x-javascript", ".wasm": "text/plain", ".pdf": "application/pdf"})
    assert (types[".js"], types[".wasm"], types[".pdf"]) == ("text/javascript", "application/wasm", "application/pdf")
    assert ConfinedFile.contentTypes[".js"] == "text/javascript"


def test_get_returns_the_whole_file(client):
    r = client.request("/counting.txt")
    assert (r.status, r.body, r.headers["accept-ranges"]) == (200, COUNTING, "bytes")


def test_head_gives_length_and_type_without_body(client):
    r = client.request("/counting.txt", method=b"HEAD")
    assert r.status == 200
    assert r.headers["content-length"] == "300"
    assert r.headers["content-type"] == "text/plain"
    assert r.raw.endswith(b"\r\n\r\n")  # nothing after the headers


@pytest.mark.parametrize(
    "spec, content_range, body",
    [
        ("bytes=30-38", "bytes 30-38/300", b"010011012"),
        ("bytes=-6", "bytes 294-299/300", b"098099"),
        ("bytes=297-", "bytes 297-299/300", b"099"),
        ("bytes=290-999", "bytes 290-299/300", b"6097098099"),
    ],
)
def test_single_range_gives_206_with_exactly_those_bytes(client, spec, content_range, body):
    r = client.request("/counting.txt", headers=[("Range", spec)])
    assert r.status == 206
    assert r.headers["content-range"] == content_range
    assert r.body == body


def test_range_beyond_the_end_gives_416(client):
    r = client.request("/counting.txt", headers=[("Range", "bytes=300-400")])
    assert r.status == 416
    assert r.headers["content-range"] == "bytes */300"
    assert r.body == b""


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"MKCOL"])
@pytest.mark.parametrize("target", ["/counting.txt", "/", "/site/", "/sub", "/ansys/counting.txt"])
def test_every_method_but_get_and_head_is_refused_with_405(client, method, target):
    r = client.request(target, method=method)
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert b"listing" not in r.body and COUNTING not in r.body


@pytest.mark.parametrize(
    "target", ["/nope.txt", "/counting.txt/x", "/sub//inner.txt", "//x/y", "/site//x", "/%2e%2e"],
    ids=["missing", "file-as-dir", "below-listing", "below-root-listing", "below-index", "dotdot"],
)
def test_every_miss_is_the_same_plain_404_and_head_gets_no_body(client, logged, target):
    r = client.request(target)
    assert (r.status, r.headers["content-type"], r.body) == (404, "text/plain; charset=utf-8", b"File not found.\n")
    head = client.request(target, method=b"HEAD")
    assert head.status == 404 and head.raw.endswith(b"\r\n\r\n")
    assert not [line for line in logged() if "returning a message body" in line]


def test_non_utf8_name_is_404_without_logging_a_traceback(client, logged):
    r = client.request("/%ff%fe")
    assert r.status == 404
    assert not [line for line in logged() if "Traceback" in line or "decode" in line]


def test_twisted_rejects_raw_non_ascii_in_the_request_line(client):
    raw = client.raw(b"GET /d\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


# --- /ansys -------------------------------------------------------------------


def test_ansys_nexus_serves_the_bundled_landing_page(package_client):
    r = package_client.request("/ansys/nexus/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html"
    assert r.body == (Path(PACKAGE_ANSYS) / "nexus" / "index.html").read_bytes()
    assert b'href="../../v1/status"' in r.body  # relative: behind a proxy at a prefix too
    assert b'src="js/landing.js"' in r.body
    for page in ("sessions/", "admin/", "test/viewer_test_vnc.html"):
        assert f'href="{page}"'.encode() in r.body
    script = package_client.request("/ansys/nexus/js/landing.js")
    assert script.status == 200 and b'new WebSocket(url, ["binary"])' in script.body


def test_ansys_nexus_without_slash_redirects_to_the_page(package_client):
    r = package_client.request("/ansys/nexus")
    assert r.status in (301, 302)
    assert r.headers["location"].endswith("/ansys/nexus/")


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [value for name, value in attrs if name in ("src", "href", "action") and value]


def test_landing_page_loads_nothing_from_elsewhere():
    """Every reference of the pages is a relative path on the same origin (so that they work behind
    a proxy at a path prefix too); no external scripts, styles or fonts, no absolute paths."""
    pages = [Path(PACKAGE_ANSYS) / "nexus" / name for name in (
        "index.html", "sessions/index.html", "admin/index.html", "test/viewer_test_vnc.html")]
    for page in pages:
        text = page.read_text("utf-8")
        parser = _Refs()
        parser.feed(text)
        assert parser.refs, page
        assert not [ref for ref in parser.refs if ref.startswith("/") or "://" in ref or ":" in ref], parser.refs
        assert "@import" not in text and "url(" not in text.replace("url(#sky)", ""), page
    for script in (Path(PACKAGE_ANSYS) / "nexus" / "js").glob("*.js"):
        imports = re.findall(r"""from\s+['"]([^'"]+)['"]""", script.read_text("utf-8"))
        assert all(i.startswith("./") for i in imports), (script, imports)


def test_ansys_and_v1_shadow_same_named_directories_of_http_directory(clock, tmp_path):
    www = tmp_path / "www"
    for reserved in ("ansys", "v1"):
        (www / reserved).mkdir(parents=True)
        (www / reserved / "mine.txt").write_bytes(b"from http_directory\n")
    client = make_client(clock, www)
    assert client.request("/ansys/mine.txt").status == 404
    assert client.request("/ansys/nexus/").status == 200
    assert client.request("/v1/mine.txt").json()["error"].startswith("no such API call")


# --- /v1 ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/v1", "/v1/", "/v1/nope", "/v1/release/a/b", "/v1/status/x"])
def test_unknown_v1_calls_answer_json_404_naming_the_call(client, target):
    r = client.request(target)
    assert r.status == 404
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["error"].startswith("no such API call: /v1/")


def test_v1_status_without_configured_services_is_an_empty_json_list(client):
    r = client.request("/v1/status")
    assert (r.status, r.headers["cache-control"], r.json()) == (200, "no-store", [])


def test_v1_head_has_the_get_headers_and_no_body(client, logged):
    get = client.request("/v1/status")
    head = client.request("/v1/status", method=b"HEAD")
    assert head.status == 200
    assert head.headers["content-type"] == "application/json; charset=utf-8"
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))
    assert head.raw.endswith(b"\r\n\r\n")
    assert not [line for line in logged() if "returning a message body" in line]


def test_v1_post_is_refused_with_json_405(client):
    r = client.request("/v1/stop", method=b"POST")
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert "error" in r.json()


@pytest.fixture
def guarded(clock, tree):
    return make_client(clock, tree / "www", token=SECRET)


@pytest.mark.parametrize(
    "target, headers",
    [
        ("/v1/status", []),
        ("/v1/status?security_token=", []),
        ("/v1/status?security_token=wrong", []),
        (f"/v1/status?security_token={SECRET}x", []),
        (f"/v1/status?token={SECRET}", []),
        ("/v1/status", [("Authorization", "Bearer wrong")]),
        ("/v1/status", [("Authorization", f"Basic {SECRET}")]),
        ("/v1/status", [("Authorization", "Bearer")]),
        ("/v1/nope", []),
    ],
    ids=["none", "empty", "wrong", "longer", "other-name", "wrong-bearer", "basic", "bare-bearer", "unknown-call"],
)
def test_with_a_token_configured_v1_without_the_right_token_is_401_json(guarded, target, headers):
    r = guarded.request(target, headers=headers)
    assert r.status == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "security_token" in r.json()["error"]
    assert "[" not in r.body.decode()  # the status list itself is not leaked


def test_token_in_query_parameter_is_accepted(guarded):
    r = guarded.request(f"/v1/status?security_token={SECRET}")
    assert (r.status, r.json()) == (200, [])


def test_token_in_query_is_percent_decoded_before_comparison(guarded):
    encoded = "".join(f"%{b:02X}" for b in SECRET.encode())
    assert guarded.request(f"/v1/status?security_token={encoded}").status == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_token_as_bearer_header_is_accepted_with_any_scheme_case(guarded, scheme):
    assert guarded.request("/v1/status", headers=[("Authorization", f"{scheme} {SECRET}")]).status == 200


def test_token_is_only_required_under_v1(guarded):
    assert guarded.request("/counting.txt").status == 200


def test_without_a_configured_token_v1_needs_none_and_ignores_one_given(client):
    assert client.request("/v1/status").status == 200
    assert client.request("/v1/status?security_token=anything").status == 200
    assert client.request("/v1/status", headers=[("Authorization", "Bearer anything")]).status == 200


def test_token_is_compared_with_compare_digest_on_equal_length_digests(guarded, monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    assert guarded.request("/v1/status?security_token=x").status == 401
    assert guarded.request(f"/v1/status?security_token={SECRET}").status == 200
    assert calls == [
        (hashlib.sha256(b"x").digest(), hashlib.sha256(SECRET.encode()).digest()),
        (hashlib.sha256(SECRET.encode()).digest(),) * 2,
    ]


# --- logging ------------------------------------------------------------------


def test_access_log_has_one_line_per_request(client, logged):
    client.request("/counting.txt?a=1", headers=[("User-Agent", "probe/1")])
    lines = [line for line in logged() if "http 127.0.0.1" in line]
    assert lines == ['[nexusws.web#info] http 127.0.0.1 "GET /counting.txt?a=1 HTTP/1.1" 200 300 "-" "probe/1"']


@pytest.mark.parametrize(
    "query, shown",
    [
        (f"security_token={SECRET}", "security_token=***"),
        (f"a=1&token={SECRET}&b=2", "a=1&token=***&b=2"),
        (f"password={SECRET}", "password=***"),
        (f"SECURITY_TOKEN={SECRET}", "SECURITY_TOKEN=***"),
        (f"security%5Ftoken={SECRET}", "security%5Ftoken=***"),
        (f"x=1;token={SECRET}", "x=1;token=***"),
    ],
)
def test_access_log_masks_secret_query_values(guarded, logged, query, shown):
    guarded.request(f"/v1/status?{query}", headers=[("Referer", f"http://app/page?{query}")])
    text = "\n".join(logged())
    assert SECRET not in text
    assert f'"GET /v1/status?{shown} HTTP/1.1"' in text
    assert f'"http://app/page?{shown}"' in text


def test_percent_encoded_parameter_name_is_still_accepted_and_masked(guarded, logged):
    """twisted.web decodes parameter names, so the API takes this token; the log must hide it."""
    assert guarded.request(f"/v1/status?security%5Ftoken={SECRET}").status == 200
    assert SECRET not in "\n".join(logged())


@pytest.mark.parametrize(
    "method, target",
    [
        (b"HEAD", f"/v1/status?security_token={SECRET}"),
        (b"HEAD", f"/missing?token={SECRET}"),
        (b"HEAD", f"/?token={SECRET}"),
        (b"HEAD", f"/sub?token={SECRET}"),
        (b"GET", f"/out-file?token={SECRET}"),
        (b"GET", f"/nested/%ff?security_token={SECRET}"),
    ],
)
def test_no_log_line_of_any_logger_shows_a_secret(guarded, logged, method, target):
    """twisted.web's own warnings print the Request's repr; ours masks the query."""
    guarded.request(target, method=method)
    lines = logged()
    assert lines
    assert not [line for line in lines if SECRET in line]


def test_redact_uri_masks_only_secret_values():
    assert scrub.redact(b"/p?token=a&tokenish=b&x=token%3Dc") == "/p?token=***&tokenish=b&x=token%3Dc"
    assert scrub.redact("/p/token=a") == "/p/token=a"
    assert scrub.redact("/p?key=&secret") == "/p?key=***&secret"


# --- confinement --------------------------------------------------------------


@MOUNTS
@pytest.mark.parametrize("target", ["/../outside/secret.txt", "/sub/../../outside/secret.txt", "/.."])
def test_dotdot_segments_are_refused(client, mount, target):
    assert_refused(client.request(mount + target))


@MOUNTS
@pytest.mark.parametrize("dots", ["%2e%2e", "%2E%2E", ".%2e", "%2e."])
def test_percent_encoded_dotdot_is_refused(client, mount, dots):
    assert_refused(client.request(f"{mount}/{dots}/outside/secret.txt"))


@MOUNTS
def test_percent_encoded_dotdot_and_slash_in_one_segment_is_refused(client, mount):
    assert_refused(client.request(f"{mount}/%2E%2E%2Foutside%2Fsecret.txt"))


@MOUNTS
def test_encoded_slash_inside_a_segment_is_refused(client, mount):
    assert client.request(f"{mount}/sub/inner.txt").status == 200
    assert client.request(f"{mount}/sub%2finner.txt").status == 404
    assert_refused(client.request(f"{mount}/..%2foutside%2fsecret.txt"))


@MOUNTS
def test_double_encoded_dotdot_is_decoded_once_to_a_literal_name(client, mount):
    assert_refused(client.request(f"{mount}/%252e%252e/outside/secret.txt"))
    assert_refused(client.request(f"{mount}/%252e%252e%252foutside%252fsecret.txt"))
    r = client.request(f"{mount}/%252e%252e/marker.txt")
    assert (r.status, r.body) == (200, b"literal name\n")


@MOUNTS
@pytest.mark.parametrize("target", ["/..\\outside\\secret.txt", "/%5c..%5coutside%5csecret.txt", "/sub\\..\\..\\outside\\secret.txt"])
def test_backslashes_are_plain_characters_not_separators(client, mount, target):
    assert_refused(client.request(mount + target))


@MOUNTS
def test_absolute_paths_are_not_filesystem_paths(client, tree, mount):
    assert_refused(client.request(f"{mount}//etc/passwd"))
    assert_refused(client.request(f"{mount}/{tree / 'outside' / 'secret.txt'}"))
    assert_refused(client.request(f"{mount}/%2f{tree}%2foutside%2fsecret.txt"))
    assert b"root:" not in client.request(f"{mount}//etc/passwd").body


def test_absolute_form_request_target_does_not_escape(client, tree):
    assert_refused(client.request("http://test/../outside/secret.txt"))
    assert_refused(client.request(f"http://test{tree / 'outside' / 'secret.txt'}"))


@MOUNTS
def test_nul_byte_is_404_not_500(client, mount):
    assert client.request(f"{mount}/counting.txt%00.png").status == 404


@MOUNTS
def test_symlink_to_a_file_outside_is_refused(client, mount):
    assert_refused(client.request(f"{mount}/out-file"))
    assert_refused(client.request(f"{mount}/out-file", method=b"HEAD"))
    assert_refused(client.request(f"{mount}/out-file", headers=[("Range", "bytes=0-3")]))


@MOUNTS
def test_relative_symlink_leading_outside_is_refused(client, mount):
    assert_refused(client.request(f"{mount}/out-relative"))


@MOUNTS
@pytest.mark.parametrize("target", ["/out-dir", "/out-dir/", "/out-dir/secret.txt"])
def test_symlink_to_a_directory_outside_is_refused(client, mount, target):
    r = client.request(mount + target)
    assert_refused(r)
    assert b"secret.txt" not in r.body


@MOUNTS
def test_index_html_linked_outside_is_not_served_as_the_index(client, mount):
    assert_refused(client.request(f"{mount}/index-out/"))


@MOUNTS
def test_symlinks_that_stay_inside_still_work(client, mount):
    assert client.request(f"{mount}/in-file").body == COUNTING
    assert client.request(f"{mount}/in-dir/inner.txt").body == b"inner\n"
    assert client.request(f"{mount}/sub/up-link").body == COUNTING


@MOUNTS
def test_listing_hides_links_leading_out(client, mount):
    body = client.request(f"{mount}/").body
    assert b">in-file<" in body and b">in-dir/<" in body
    for name in (b"out-file", b"out-dir", b"out-relative"):
        assert name not in body


def test_refused_symlink_is_logged_with_its_target(client, logged):
    client.request("/out-file")
    assert [line for line in logged() if "resolves outside the served root" in line]


def test_file_opened_outside_the_root_is_refused_even_past_getchild(clock, tree):
    """The check on the opened descriptor catches a path that passed (or skipped) getChild."""
    top = resource.Resource()
    top.putChild(b"leaf", ConfinedFile(str(tree / "outside" / "secret.txt"), root=str(tree / "www")))
    site = web.Site(top, requestFactory=web.Request, reactor=MemoryReactorClock())
    r = Client(site, clock).request("/leaf")
    assert r.status == 403
    assert OUTSIDE_TEXT not in r.body


@pytest.mark.parametrize(
    "target",
    [
        "/ansys/../web.py",
        "/ansys/%2e%2e/web.py",
        "/ansys/%2E%2E%2Fweb.py",
        "/ansys/..%2fweb.py",
        "/ansys/%252e%252e/web.py",
        "/ansys/nexus/..\\..\\web.py",
        f"/ansys/{os.path.dirname(PACKAGE_ANSYS)}/web.py",
    ],
)
def test_bundled_ansys_tree_does_not_expose_the_package_around_it(package_client, target):
    r = package_client.request(target)
    assert r.status == 404
    assert b"import" not in r.body


# --- dot-files ----------------------------------------------------------------


@pytest.fixture
def dotted(tree):
    """.env, .git/config and sub/.hidden in both www/ and the ansys/ mounted at /ansys."""
    for top in (tree / "www", tree / "ansys"):
        (top / ".env").write_bytes(b"DB_PASSWORD=dotenv\n")
        (top / ".git").mkdir()
        (top / ".git" / "config").write_bytes(b"[remote]\n")
        (top / "sub" / ".hidden").write_bytes(b"hidden\n")
    return tree


DOT_TARGETS = ["/.env", "/.git/config", "/.git/", "/.git", "/sub/.hidden", "/%2eenv", "/%2Egit/config",
               "/sub/%2ehidden", "/in-dir/.hidden", "/.env?x=1", "/.%65nv",
               "/nonexistent%2f..%2f.env", "/sub%2F..%2F.env", "/a%2f..%2f.git/config", "/a%2f..%2f.git/",
               "/a%5c..%5c.env"]


@MOUNTS
@pytest.mark.parametrize("target", DOT_TARGETS)
def test_dotfiles_are_the_plain_404_by_default(clock, dotted, mount, target):
    r = make_client(clock, dotted / "www").request(mount + target)
    assert (r.status, r.headers["content-type"], r.body) == (404, "text/plain; charset=utf-8", b"File not found.\n")


@MOUNTS
@pytest.mark.parametrize("directory", ["/", "/sub/", "/in-dir/"])
def test_listings_leave_dotfiles_out_by_default(clock, dotted, mount, directory):
    r = make_client(clock, dotted / "www").request(mount + directory)
    assert r.status == 200 and (b">inner.txt<" in r.body or b">counting.txt<" in r.body)
    for name in (b".env", b".git", b".hidden"):
        assert name not in r.body


def test_http_allow_dotfiles_serves_and_lists_them_under_http_directory_only(clock, dotted):
    client = make_client(clock, dotted / "www", allow_dotfiles=True)
    assert client.request("/.env").body == b"DB_PASSWORD=dotenv\n"
    assert client.request("/%2eenv").body == b"DB_PASSWORD=dotenv\n"
    assert client.request("/.git/config").body == b"[remote]\n"
    assert client.request("/sub/.hidden").body == b"hidden\n"
    assert b">.env<" in client.request("/").body and b">.git/<" in client.request("/").body
    assert b">.hidden<" in client.request("/sub/").body
    # The package's own tree never serves them.
    assert client.request("/ansys/.env").status == 404
    assert b".env" not in client.request("/ansys/").body


def test_dotfiles_still_cannot_reach_outside_the_root_when_allowed(clock, dotted):
    client = make_client(clock, dotted / "www", allow_dotfiles=True)
    for target in ("/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/./counting.txt/../../outside/secret.txt"):
        assert_refused(client.request(target))


def test_http_allow_dotfiles_option_reaches_the_site(clock, dotted):
    """--http_allow_dotfiles is a flag, off by default; makeService builds the site with it."""
    def site(*args):
        options = tap.Options()
        options.parseOptions(["--http_directory", str(dotted / "www"), "--http_listen", "tcp:0", *args, "0"])
        services = tap.makeService(options, MemoryReactorClock())
        return [s for s in services if getattr(s, "label", "") == "--http_listen"][0].factory

    assert Client(site(), clock).request("/.env").status == 404
    allowed = Client(site("--http_allow_dotfiles"), clock)
    assert allowed.request("/.env").body == b"DB_PASSWORD=dotenv\n"
    with pytest.raises(tap.usage.UsageError, match="^--http_allow_dotfiles takes no value$"):
        tap.Options().parseOptions(["--http_allow_dotfiles=yes", "0"])
