"""Range requests and the producer of every file response.

L{plan_ranges} reads the Range header instead of static.File (for
L{nexusws.files.ConfinedFile}, which writes the heads). Overlapping and
adjacent ranges are merged (parts keep the order of their first range); a
header that is malformed, asks for more bytes in all than the file holds, or
leaves more than L{MAX_RANGES} parts is ignored (200, the whole file, as
RFC 9110 allows); none satisfiable is 416 with C{Content-Range: bytes */SIZE}.

L{FileProducer} sends every file response: a file that fails to read or ends
early, or a response that makes no progress for the idle timeout (a client
that stopped reading), aborts the connection and closes the file; nothing
waits forever. Log lines keep the C{nexusws.web} namespace of the HTTP server.
"""

import collections
import re

from twisted.logger import LogLevel
from twisted.web import static

from nexusws.logs import logger, printable

_log = logger("nexusws.web")

#: Most parts a 206 answer may have after merging; beyond, the whole file (200).
MAX_RANGES = 16
#: Most range-specs read from one Range header; beyond, it is ignored unread.
MAX_RANGE_SPECS = 1024
# Optional whitespace is tolerated as static.File's int() did; 30 digits is
# past any file size and keeps int() far from its 4300-digit limit.
_RANGE_SPEC = re.compile(rb"\s*(\d{0,30})\s*-\s*(\d{0,30})\s*")


def plan_ranges(header, size):
    """The parts of a file of C{size} bytes that Range header C{header} asks for.

    @return: L{None} to ignore the header and send the whole file (200): it
        is malformed, its unit is not bytes, it asks for more bytes in all
        than the file holds, or its ranges leave more than L{MAX_RANGES}
        parts once merged. C{[]}: no range is satisfiable (416). Otherwise
        C{[(offset, length), ...]}: overlapping and adjacent ranges merged,
        unsatisfiable ones dropped, each part where its first range was.
    """
    unit, eq, value = header.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    # At most MAX_RANGE_SPECS splits: any commas left make the last spec malformed.
    specs = [spec for spec in value.split(b",", MAX_RANGE_SPECS) if spec.strip()]
    if not specs or len(specs) > MAX_RANGE_SPECS:
        return None
    wanted, total = [], 0
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first:
            start = int(first)
            if last and int(last) < start:
                return None
            end = min(int(last) + 1, size) if last else size
        elif last:
            start, end = max(size - int(last), 0), size
        else:
            return None
        if start >= end:  # starts past the end, or a suffix of 0 bytes
            continue
        total += end - start
        if total > size:
            return None
        wanted.append((start, end))
    merged = []  # [start, end, position of its first range in the header]
    for position, (start, end) in sorted(enumerate(wanted), key=lambda item: item[1]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] = min(merged[-1][2], position)
        else:
            merged.append([start, end, position])
    if len(merged) > MAX_RANGES:
        return None
    return [(start, end - start) for start, end, _ in sorted(merged, key=lambda part: part[2])]


class _FileEnded(Exception):
    """The file held fewer bytes than its response promised."""


class FileProducer(static.StaticProducer):
    """Writes C{parts}, C{[(prefix, offset, length)]}, of an open file to a request.

    It replaces static.File's producers, which a multi-range request could
    crash (leaving the response, its connection and the file held forever)
    and a file cut short could spin. A read that fails or comes up short
    aborts the connection (the head promised a length); so does no progress
    for C{timeout} seconds on C{reactor} (the client stopped reading). The
    file is closed either way.
    """

    def __init__(self, request, fileObject, parts, timeout=None, reactor=None):
        super().__init__(request, fileObject)
        self._parts = collections.deque(parts)
        self._left = 0
        self._timeout = timeout
        self._reactor = reactor
        self._watchdog = None

    def start(self):
        if self._timeout and self._reactor is not None:
            self._watchdog = self._reactor.callLater(self._timeout, self._stalled)
        self.request.registerProducer(self, False)

    def resumeProducing(self):
        if not self.request:
            return
        if self._watchdog is not None:
            self._watchdog.reset(self._timeout)
        try:
            chunk = self._read()
        except _FileEnded:
            _log.warn("{path} ended before its response did (changed while served?): connection aborted",
                      path=self._name())
            return self._abort()
        except Exception:  # never leave the response hanging with the file open
            _log.failure("reading {path} failed: connection aborted", path=self._name(), level=LogLevel.error)
            return self._abort()
        if chunk:
            self.request.write(chunk)
        if self.request and not self._left and not self._parts:
            self.request.unregisterProducer()
            self.request.finish()
            self.stopProducing()

    def _read(self):
        """Up to about a buffer of prefixes and file bytes, in order."""
        data, length = [], 0
        while length < self.bufferSize:
            if not self._left:
                if not self._parts:
                    break
                prefix, offset, self._left = self._parts.popleft()
                data.append(prefix)
                length += len(prefix)
                if self._left:
                    self.fileObject.seek(offset)
                continue
            read = self.fileObject.read(min(self.bufferSize, self._left))
            if not read:
                raise _FileEnded()
            data.append(read)
            length += len(read)
            self._left -= len(read)
        return b"".join(data)

    def _name(self):
        return printable(str(getattr(self.fileObject, "name", "a file")))

    def _stalled(self):
        self._watchdog = None
        channel = self.request.channel if self.request else None
        client = getattr(channel, "_client", None)  # a nexusws.web.Channel's; another's peer is "-"
        _log.info("http {client}: response made no progress for {timeout:g} s: connection aborted",
                  client=client() if client is not None else "-", timeout=self._timeout)
        self._abort()

    def _abort(self):
        request = self.request
        self.stopProducing()
        if request is not None and request.channel is not None:
            request.unregisterProducer()
            request.channel.transport.abortConnection()

    def stopProducing(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        super().stopProducing()

