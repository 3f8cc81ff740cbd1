"""Raw HTTP answers parsed with L{http.client}, and the client address in-memory requests come from."""

import http.client
import io
import json

from twisted.internet.address import IPv4Address

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class _Socket:
    """Just enough of a socket for L{http.client.HTTPResponse} to parse bytes."""

    def __init__(self, data):
        self._file = io.BytesIO(data)

    def makefile(self, *args, **kwargs):
        return self._file


def parse(raw):
    """(status, headers, body) of the first response in C{raw}."""
    response = http.client.HTTPResponse(_Socket(raw))
    response.begin()
    return response.status, response.headers, response.read()


class Response:
    def __init__(self, raw, method):
        parsed = http.client.HTTPResponse(_Socket(raw), method=method.decode("ascii"))
        parsed.begin()
        self.status = parsed.status
        self.headers = parsed.headers
        self.body = parsed.read()
        self.raw = raw

    def json(self):
        assert self.headers["content-type"] == "application/json; charset=utf-8"
        return json.loads(self.body)
