"""The answers of both /v1 APIs, the gateway's (L{nexusws.api}) and the balancer's
(L{nexusws.balancer.web}): never cached (C{Cache-Control: no-store}), JSON as
UTF-8 with a final newline, an error as C{{"error": "..."}}.

Each site writes an answer its own way, its C{send(request, code, content_type,
body)}: the gateway sets the length and sends no body to a HEAD
(L{nexusws.responses.respond}); the balancer adds the CORS headers of Webots' session
server. L{Answers} binds one such way to these helpers. This module imports
nothing of nexusws, so that the balancer does not drag the gateway in.
"""

import json

JSON = b"application/json; charset=utf-8"
HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"


def error(message):
    """The body of an error answer."""
    return {"error": message}


def json_bytes(value):
    """C{value} as the body of a JSON answer."""
    return json.dumps(value).encode("utf-8") + b"\n"


class Answers:
    """The answers of one site, each written through its C{send}; every helper
    returns what C{send} does (the bytes for C{render}, or to write)."""

    def __init__(self, send):
        self.send = send

    def __call__(self, request, code, content_type, body):
        """Answer C{body} (bytes) with status C{code}, never to be cached."""
        request.setHeader(b"cache-control", b"no-store")
        return self.send(request, code, content_type, body)

    def json(self, request, code, value):
        """Answer C{value} as JSON."""
        return self(request, code, JSON, json_bytes(value))

    def error(self, request, code, message):
        """Answer the error C{message} (a string) as JSON."""
        return self.json(request, code, error(message))
