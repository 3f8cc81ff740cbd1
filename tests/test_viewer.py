"""The viewer tree at /ansys/nexus/novnc/ (nexusws.viewer), resolved in memory."""

import json
import os

import pytest
from twisted.python import usage
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from nexusws import viewer, web
from nexusws.api import ApiRoot
from nexusws.responses import NOT_FOUND
from support.options import parse


def fake_novnc(path, application=True, version=None):
    """A noVNC tree: core/rfb.js, and vnc.html for the full application."""
    (path / "core").mkdir(parents=True)
    (path / "core" / "rfb.js").write_text("export default class RFB {}\n")
    if application:
        (path / "vnc.html").write_text("<p>noVNC app</p>\n")
    if version:
        (path / "package.json").write_text(json.dumps({"name": "@novnc/novnc", "version": version}))
    return path


def resolve(root, url):
    segments = [s.encode() for s in url.lstrip("/").split("/")]
    request = DummyRequest(segments)
    return getChildForRequest(root, request)


def tree(tmp_path, novnc):
    (tmp_path / "www").mkdir(exist_ok=True)
    return web.build_root(str(tmp_path / "www"), ApiRoot(None), viewer=viewer.viewer_resource(novnc))


def served(resource):
    return os.path.realpath(resource.path)


def test_our_pages_come_first_and_novnc_fills_in(tmp_path):
    novnc = fake_novnc(tmp_path / "novnc")
    root = tree(tmp_path, str(novnc))
    page = resolve(root, "/ansys/nexus/novnc/vnc_envision.html")
    assert served(page) == os.path.realpath(os.path.join(viewer.PAGES, "vnc_envision.html"))
    assert served(resolve(root, "/ansys/nexus/novnc/nexus_viewer.js")).endswith("nexus_viewer.js")
    assert served(resolve(root, "/ansys/nexus/novnc/core/rfb.js")) == str((novnc / "core" / "rfb.js").resolve())
    # noVNC's own application keeps its name.
    assert served(resolve(root, "/ansys/nexus/novnc/vnc.html")) == str((novnc / "vnc.html").resolve())
    # The rest of /ansys is untouched.
    assert served(resolve(root, "/ansys/nexus/index.html")).endswith(os.path.join("nexus", "index.html"))


def test_our_page_answers_vnc_html_when_the_package_has_only_the_library(tmp_path):
    novnc = fake_novnc(tmp_path / "novnc", application=False, version="1.7.0")
    root = tree(tmp_path, str(novnc))
    assert served(resolve(root, "/ansys/nexus/novnc/vnc.html")).endswith("vnc_envision.html")
    assert viewer.describe(str(novnc)) == f"noVNC 1.7.0 (library only) at {novnc}"


def test_nothing_outside_either_root_is_served(tmp_path):
    novnc = fake_novnc(tmp_path / "novnc")
    (tmp_path / "secret.txt").write_text("secret")
    (novnc / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (novnc / "core" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    root = tree(tmp_path, str(novnc))
    for url in ("/ansys/nexus/novnc/leak.txt", "/ansys/nexus/novnc/core/leak.txt",
                "/ansys/nexus/novnc/missing.js"):
        assert resolve(root, url) is NOT_FOUND, url


def test_directories_are_not_listed(tmp_path):
    novnc = fake_novnc(tmp_path / "novnc")
    root = tree(tmp_path, str(novnc))
    for url in ("/ansys/nexus/novnc/", "/ansys/nexus/novnc/core/"):
        assert resolve(root, url) is NOT_FOUND, url


def test_without_novnc_the_viewer_says_what_to_install(tmp_path):
    root = tree(tmp_path, None)
    for url in ("/ansys/nexus/novnc/vnc.html", "/ansys/nexus/novnc/core/rfb.js"):
        page = resolve(root, url)
        request = DummyRequest([])
        body = page.render(request)
        assert request.responseCode == 404
        assert b"apt-get install novnc" in body and b"--novnc_dir" in body


def test_find_novnc_takes_the_first_candidate_holding_novnc(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    first = fake_novnc(tmp_path / "first", application=False)
    second = fake_novnc(tmp_path / "second")
    assert viewer.find_novnc([str(empty), str(tmp_path / "missing"), str(first), str(second)]) == str(first)
    assert viewer.find_novnc([str(empty)]) is None


def test_novnc_dir_option(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    novnc = fake_novnc(tmp_path / "novnc")
    base = ["--http_directory", str(www), "--http_port", "9091", "--client_port", "5900"]
    assert parse("--novnc_dir", str(novnc), *base, "9090")["novnc_dir"] == str(novnc)
    for bad, why in ((tmp_path / "missing", "not a directory"), (www, "not a noVNC tree")):
        with pytest.raises(usage.UsageError) as e:
            parse("--novnc_dir", str(bad), *base, "9090")
        assert str(e.value).startswith(f"--novnc_dir: '{bad}': {why}")
    # Not given: the first candidate that holds noVNC, or none.
    monkeypatch.setattr(viewer, "CANDIDATES", (str(www), str(novnc)))
    assert parse(*base, "9090")["novnc_dir"] == str(novnc)
    monkeypatch.setattr(viewer, "CANDIDATES", (str(www),))
    assert parse(*base, "9090")["novnc_dir"] is None
