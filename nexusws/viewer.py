"""The browser VNC viewer at /ansys/nexus/novnc/: noVNC from a package, our pages over it.

noVNC is never part of nexusws: it comes from Debian's ``novnc`` package
(``/usr/share/novnc``, noVNC's full application with ``vnc.html``) or npm's
``@novnc/novnc`` (only the RFB library, ``core/``), found by L{find_novnc}
or named by ``--novnc_dir``. Over it, nexusws serves its own pages from
``nexusws/ansys/nexus/novnc`` (``vnc_envision.html`` and its script), which
use only noVNC's documented RFB API and so work with noVNC 1.3 to 1.7. Where
the noVNC tree has no ``vnc.html`` (the npm package), ours answers that name
too, taking the same query parameters (host, port, path, password, ...).
"""

import json
import os

from twisted.web import resource

from nexusws.files import ConfinedFile
from nexusws.logs import logger
from nexusws.responses import NOT_FOUND, TEXT, respond
from nexusws.web import ANSYS_ROOT

_log = logger("nexusws.viewer")

#: Where noVNC is looked for when --novnc_dir is not given, in this order.
CANDIDATES = (
    "/usr/share/novnc",  # Debian/Ubuntu: apt-get install novnc
    "/usr/local/lib/node_modules/@novnc/novnc",  # npm install -g @novnc/novnc
    "/usr/lib/node_modules/@novnc/novnc",
    "/usr/local/share/novnc",
)
#: Our pages, served first.
PAGES = os.path.join(ANSYS_ROOT, "nexus", "novnc")
#: What a noVNC tree must hold: the RFB module our pages import.
RFB_MODULE = os.path.join("core", "rfb.js")
#: The page that stands in for a missing vnc.html.
OUR_VIEWER = b"vnc_envision.html"


def is_novnc(path):
    return os.path.isfile(os.path.join(path, RFB_MODULE))


def find_novnc(candidates=None):
    """The first of C{candidates} (default: L{CANDIDATES}) that holds noVNC, or None."""
    for path in CANDIDATES if candidates is None else candidates:
        if is_novnc(path):
            return path
    return None


def check_novnc_dir(path):
    """--novnc_dir: an existing noVNC tree; returns its absolute path.

    @raise ValueError: with a one-line reason.
    """
    if not os.path.isdir(path):
        raise ValueError(f"{path!r}: not a directory")
    if not is_novnc(path):
        raise ValueError(f"{path!r}: not a noVNC tree (no {RFB_MODULE}); "
                         "install Debian's novnc or npm's @novnc/novnc")
    return os.path.abspath(path)


def describe(path):
    """'noVNC 1.7.0 (library only) at PATH' or 'noVNC (application) at PATH'."""
    version = None
    try:
        with open(os.path.join(path, "package.json"), encoding="utf-8") as f:
            version = json.load(f).get("version")
    except (OSError, ValueError, AttributeError):
        pass
    kind = "application" if os.path.isfile(os.path.join(path, "vnc.html")) else "library only"
    return f"noVNC {version + ' ' if version else ''}({kind}) at {path}"


class UnlistedFile(ConfinedFile):
    """A confined tree whose directories are not listed (404): only named files are served."""

    def directoryListing(self):
        return NOT_FOUND


class ViewerTree(UnlistedFile):
    """Our pages over a noVNC tree; each confined to its own root."""

    def __init__(self, novnc):
        super().__init__(PAGES)
        self.novnc = UnlistedFile(novnc)
        self.own_vnc_html = not os.path.isfile(os.path.join(novnc, "vnc.html"))

    def createSimilarFile(self, path):
        # Our files below the top are plain (unlisted) confined files.
        return UnlistedFile(path, root=self.root, defaultType=self.defaultType)

    def getChild(self, path, request):
        if path == b"vnc.html" and self.own_vnc_html:
            path = OUR_VIEWER
        child = super().getChild(path, request)
        if child is self.childNotFound and path:
            return self.novnc.getChildWithDefault(path, request)
        return child


class NoViewer(resource.Resource):
    """/ansys/nexus/novnc/ when no noVNC is installed: 404 saying what to install."""

    isLeaf = True

    def render(self, request):
        return respond(request, 404, TEXT, (
            b"The VNC viewer is not available: noVNC is not installed on this server.\n"
            b"Install Debian's novnc package (apt-get install novnc) or npm's @novnc/novnc,\n"
            b"or start nexusws with --novnc_dir pointing at a noVNC tree.\n"
        ))


def viewer_resource(novnc):
    """The resource for /ansys/nexus/novnc/, given the noVNC tree (or None)."""
    if novnc is None:
        _log.info("viewer: no noVNC found ({places}); /ansys/nexus/novnc/ answers 404 "
                  "(apt-get install novnc, or --novnc_dir)", places=", ".join(CANDIDATES))
        return NoViewer()
    _log.info("viewer at /ansys/nexus/novnc/: {what}", what=describe(novnc))
    return ViewerTree(novnc)
