"""The shape of the code (issue 14): no import circle, small modules, packages that
say what they own and may import, sessions below the web and tunnel layers, and
test modules that import no other test module."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nexusws"
TESTS = ROOT / "tests"

#: The longest a module of the package may be.
MAX_LINES = 400

#: The layers, bottom up: a module imports only from its own layer or those below
#: (the package docstring of nexusws says the same in words). A new module is put
#: in one here, deliberately.
LAYERS = {
    0: ("nexusws", "errors", "activity", "convert", "scrub", "logs", "clock", "internals", "answers", "addresses",
        "cmdline", "credentials", "tls", "load", "metrics", "status_page", "pipes"),
    1: ("groups", "limits", "sites", "auth", "admission"),
    2: ("sessions",),
    3: ("routing", "handshake", "closing", "bridge", "responses", "ranges", "files", "web", "viewer", "controls", "streams",
        "portal", "api"),
    4: ("gateway", "assemble", "tap", "cli", "services"),
    5: ("balancer",),
}

#: What the sessions package must never import: the layers above it.
ABOVE_SESSIONS = ("nexusws.web", "nexusws.api", "nexusws.bridge", "nexusws.routing", "nexusws.tap",
                  "nexusws.assemble", "nexusws.gateway", "nexusws.cli", "nexusws.services",
                  "nexusws.balancer")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports(path, known):
    """The package's modules that C{path} imports, anywhere in it (function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def graph():
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_packages_modules():
    assert cycles(graph()) == []


def test_no_module_is_longer_than_400_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_each_package_says_what_it_owns_and_what_it_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.splitlines()) > 3, f"{init}: no docstring saying what the package owns"
        assert re.search(r"\bmay import\b", doc, re.I), f"{init}: the docstring does not say what it may import"


def test_each_module_has_a_docstring():
    missing = [name for name, path in modules().items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def layer_of(name):
    for layer, names in LAYERS.items():
        for short in names:
            full = "nexusws" if short == "nexusws" else f"nexusws.{short}"
            if name == full or (short in ("sessions", "balancer") and name.startswith(full + ".")):
                return layer
    return None


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones():
    edges = graph()
    assert [name for name in edges if layer_of(name) is None] == []
    upward = {name: sorted(t for t in targets if layer_of(t) > layer_of(name))
              for name, targets in edges.items()}
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_sessions_package_imports_nothing_above_it():
    bad = {name: sorted(i for i in targets if i.startswith(ABOVE_SESSIONS))
           for name, targets in graph().items() if name.startswith("nexusws.sessions")}
    assert {name: found for name, found in bad.items() if found} == {}


def test_nothing_in_the_package_imports_the_public_script_path():
    """nexusws.services is for service scripts (the reference's import path) only."""
    assert [name for name, targets in graph().items() if "nexusws.services" in targets] == []


def test_no_test_module_imports_another():
    pattern = re.compile(r"^\s*(from\s+(tests\.)?test_\w*\s+import|import\s+(tests\.)?test_\w*)", re.M)
    found = [str(p.relative_to(ROOT)) for p in TESTS.rglob("*.py") if pattern.search(p.read_text())]
    assert found == []
