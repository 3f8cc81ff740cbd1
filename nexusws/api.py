"""The /v1/ REST API root.

Every call is a GET answered with JSON. With a security token configured, a
call must carry it as C{?security_token=...} or C{Authorization: Bearer ...}
or it gets 401. The session calls (reserve, release, status, stop) are not
implemented yet: every path answers a JSON 404 naming what was asked.
"""

import hashlib
import hmac
import json

from twisted.web import resource

from nexusws.logs import printable
from nexusws.web import READ_METHODS, respond

JSON = b"application/json; charset=utf-8"


def json_response(request, code, body):
    """Answer C{body} as JSON with status C{code}; return the bytes for C{render}."""
    request.setHeader(b"cache-control", b"no-store")
    return respond(request, code, JSON, json.dumps(body).encode("utf-8") + b"\n")


def presented_token(request):
    """The security token a request carries (bytes), from the query or a Bearer header.

    The query parameter wins when both are present.
    """
    values = request.args.get(b"security_token")
    if values:
        return values[0]
    scheme, _, credentials = (request.getHeader(b"authorization") or b"").strip().partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    return None


def _digest(value):
    return hashlib.sha256(value).digest()


class ApiRoot(resource.Resource):
    """The /v1 namespace: checks the security token, then dispatches."""

    isLeaf = True

    def __init__(self, security_token=None):
        super().__init__()
        # Comparing fixed-length digests keeps the comparison's time
        # independent of the token's length as well as of its content.
        self._token_digest = _digest(security_token.encode("utf-8")) if security_token else None

    def authorized(self, request):
        """True when no token is configured or C{request} carries the right one."""
        if self._token_digest is None:
            return True
        offered = presented_token(request)
        return offered is not None and hmac.compare_digest(_digest(offered), self._token_digest)

    def render(self, request):
        if not self.authorized(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="nexusws"')
            return json_response(request, 401, {"error": "missing or wrong security_token"})
        if request.method not in READ_METHODS:
            request.setHeader(b"allow", b"GET, HEAD")
            return json_response(request, 405, {"error": "the /v1 API answers GET only"})
        call = "/".join(p.decode("utf-8", "replace") for p in request.postpath)
        return json_response(
            request,
            404,
            {"error": f"no such API call: /v1/{printable(call)} (the session API is not yet supported)"},
        )
