"""Server-Sent Events as a test reads them: from an in-memory response's raw bytes
(chunked), or line by line from a real HTTP response."""

import http.client
import json
import threading
import urllib.parse

from twisted.internet.testing import StringTransport

from support.http import PEER
from support.waiting import wait_until


def dechunk(body):
    """The data of the complete chunks of a chunked body; whether its last chunk came."""
    data, done = b"", False
    while b"\r\n" in body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            done = True
            break
        if len(rest) < size + 2:
            break
        data, body = data + rest[:size], rest[size + 2:]
    return data, done


def parse(text):
    """C{(events, comments)} of an event-stream text: events as dicts of their fields
    (C{data} parsed as JSON), comments as their text."""
    events, comments = [], []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = json.loads(value) if name == "data" else value
        if "event" in fields:
            events.append(fields)
    return events, comments


def stream_of(raw):
    """C{(events, comments, ended)} of an in-memory response's raw bytes so far."""
    head, _, body = raw.partition(b"\r\n\r\n")
    data, done = dechunk(body)
    events, comments = parse(data.decode("utf-8"))
    return events, comments, done


def names(events):
    return [e["event"] for e in events]


class Cramped(StringTransport):
    """A transport whose buffer is full beyond C{limit} bytes: it pauses its producer
    (the HTTP channel) as a TCP transport does, until the test L{drain}s it."""

    def __init__(self, limit):
        super().__init__(peerAddress=PEER)
        self.limit, self.full, self.most, self.received = limit, False, 0, b""

    def write(self, data):
        super().write(data)
        self.most = max(self.most, len(self.io.getvalue()))
        if not self.full and len(self.io.getvalue()) > self.limit:
            self.full = True
            self.producer.pauseProducing()

    def writeSequence(self, data):
        self.write(b"".join(data))

    def drain(self):
        """The client reads everything (kept in C{received}); the producer is resumed."""
        self.received += self.value()
        self.clear()
        self.full = False
        if self.producer is not None:  # unregistered once the connection closes
            self.producer.resumeProducing()

    def everything(self):
        return self.received + self.value()


class Reader:
    """A real client of an event stream: GET C{url} (http.client, its own thread), parsing
    each event as it arrives into C{events}; C{closed} once the server ends the stream."""

    def __init__(self, url, headers=None):
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        self.response = self.connection.getresponse()
        self.events, self.comments, self.closed = [], [], False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        # read1, not readline: on a chunked body readline looks for the next chunk's
        # size before it returns, so the newest event waited for the next chunk.
        pending = b""
        try:
            while chunk := self.response.read1(65536):  # de-chunked
                pending += chunk
                *blocks, pending = pending.split(b"\n\n")
                for block in blocks:
                    events, comments = parse(block.decode("utf-8"))
                    self.comments += comments
                    self.events += events
        except (OSError, ValueError, http.client.HTTPException):  # the connection closed under the read
            pass
        finally:
            self.closed = True

    def names(self):
        return names(self.events)

    def close(self):
        self.connection.close()


def events_of(gw, token):
    """Every event of C{token}'s session so far, once it has ended (the stream then closes)."""
    stream = Reader(f"{gw.http_url}/v1/events/{urllib.parse.quote(token)}")
    try:
        wait_until(lambda: stream.closed, 15, "the event stream's end")
        return [e["data"] for e in stream.events]
    finally:
        stream.close()
