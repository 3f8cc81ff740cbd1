"""The session state file: a crash-safe record of reservations and their processes.

It is a journal: a full record, then one line per change. A change (a
reservation made, started, released; a process recorded) is appended in one
C{write()}, before the change is answered, so the file survives the gateway
being killed at any moment. When the changes outweigh the full record
(64 KiB at least), the next change rewrites the file whole, atomically (a temp
file in the same directory, renamed over the old one), so a reader sees the
whole old file or the whole new one, never a mix. Nothing is fsynced: the
file guards against the gateway's crash, not the machine's (after a reboot no
session process is left to end, and a file a power loss damaged is set aside
like any corrupt one). Appending instead of replacing the file at every change
is what lets the REST API make well over a thousand reservations a second. Mode
0600: it holds tokens.

A file that cannot be read back (corrupt, of another format version) is moved
aside with one warning and start-up goes on without it: never a crash loop.
A last change cut short (the disk filled up mid-write) is dropped with a
warning; the rest is used.

On disk (format version 2), one JSON document a line::

    {"version": 2, "data": {"reservations": [...], "orphans": [...]}}
    {"put": [reservation, ...], "drop": [token, ...], "set": {"orphans": [...]}}
    ...

where C{data} is what L{nexusws.reservations.Registry.snapshot} returns (plus
the gateway's own processes, in C{orphans}) and each later line changes it:
reservations put (a new or changed record, by C{token}), dropped (by token),
and other keys set whole. Format version 1, a full record alone, is still read.
"""

import errno
import json
import os
import tempfile
import time
from collections import namedtuple

from nexusws.errors import StartupError
from nexusws.logs import logger, printable

_log = logger("nexusws.statefile")

VERSION = 2
READABLE = (1, 2)
MODE = 0o600
#: The journal is rewritten whole when its changes outgrow the full record and this.
COMPACT_MIN = 64 * 1024

#: One reservation as a previous run recorded it; C{created} is wall-clock epoch seconds.
Saved = namedtuple("Saved", "token service index options user state created pids")


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Unusable(ValueError):
    """The file cannot be used; the message says why."""


class StateFile:
    """The state file at C{path} (made absolute now, so a later chdir does not move it)."""

    def __init__(self, path, compact_min=COMPACT_MIN):
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.compact_min = compact_min
        self._fd = None  # the file as last written whole, open at its end
        self._records = None  # token -> reservation record, as the file has it
        self._rest = None  # the other keys of data, as the file has them
        self._size = self._base = 0  # bytes in the file; of its full record

    def check(self):
        """Make sure the file can be written; call at start-up.

        @raise StartupError: (one line) the directory is missing or not
            writable, or the path is a directory.
        """
        if not os.path.isdir(self.directory):
            raise StartupError(f"state file {self.path}: directory {self.directory} does not exist")
        if os.path.isdir(self.path):
            raise StartupError(f"state file {self.path}: is a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".nexusws-probe-", dir=self.directory)
        except OSError as e:
            raise StartupError(
                f"state file {self.path}: cannot create files in {self.directory}: "
                f"{e.strerror or e}"
            ) from None
        os.close(fd)
        os.unlink(probe)

    def write(self, data):
        """Make the file record C{data} (a JSON-serialisable dict): append the
        change since the last write, or rewrite the file whole.

        On any error the file still records the previous C{data} (whole, or
        with a last change cut short that L{read} drops), no temp file is left
        behind, the next write rewrites the file whole, and the error is raised.
        """
        records = _by_token(data)
        if records is None or self._records is None or self._fd is None:
            return self._write_whole(data, records)
        change = {}
        known = self._records
        put = [r for t, r in records.items()
               if (old := known.get(t, _NOTHING)) is not r and old != r]
        drop = [t for t in self._records if t not in records]
        rest = {k: v for k, v in data.items() if k != "reservations"}
        changed = {k: v for k, v in rest.items() if self._rest.get(k, _NOTHING) != v}
        if set(self._rest) - set(rest):
            return self._write_whole(data, records)  # a key removed: not a change lines express
        if put:
            change["put"] = put
        if drop:
            change["drop"] = drop
        if changed:
            change["set"] = changed
        if not change:
            return None
        line = (_dumps(change) + "\n").encode("utf-8")
        if self._size + len(line) - self._base > max(self.compact_min, self._base):
            return self._write_whole(data, records)
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
        except BaseException:
            self._forget(truncate=True)
            raise
        self._size += len(line)
        for t in drop:
            del self._records[t]
        self._records.update((r["token"], r) for r in put)
        self._rest.update(changed)
        return None

    def _write_whole(self, data, records):
        text = (_dumps({"version": VERSION, "data": data}) + "\n").encode("utf-8")
        self._forget()
        fd, temp = tempfile.mkstemp(
            prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=self.directory
        )
        try:
            os.fchmod(fd, MODE)
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.replace(temp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        self._size = self._base = len(text)
        if records is None:  # not a journal of reservations: every write is whole
            os.close(fd)
            return
        self._fd = fd
        self._records = dict(records)
        self._rest = {k: v for k, v in data.items() if k != "reservations"}

    def _forget(self, truncate=False):
        """Stop appending: the next write is whole (C{truncate}: first cut a part-written change)."""
        if self._fd is not None:
            if truncate:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass  # read() drops a change cut short
            os.close(self._fd)
        self._fd = self._records = self._rest = None

    def close(self):
        """Let go of the file (the next write rewrites it whole)."""
        self._forget()

    def read(self):
        """The data last written, or None: no file (silently) or an unusable one (moved aside)."""
        self._forget()
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise StartupError(f"state file {self.path}: is a directory") from None
        except OSError as e:
            return self._set_aside(f"cannot be read ({e.strerror or e})")
        try:
            return self.parse(raw)
        except Unusable as e:
            return self._set_aside(str(e))

    def parse(self, raw):
        """The data C{raw} (the file's bytes) records; a reader's view, changing nothing.

        @raise Unusable: it cannot be used (the message says why)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Unusable("is not UTF-8 text") from None
        decoder = json.JSONDecoder()
        try:
            content, end = decoder.raw_decode(text, len(text) - len(text.lstrip()))
        except (ValueError, RecursionError) as e:
            raise Unusable(f"is not valid JSON ({e})") from None
        if not isinstance(content, dict) or "version" not in content:
            raise Unusable("has no format version")
        if content["version"] not in READABLE:
            raise Unusable(f"has format version {printable(content['version'])}, not {VERSION}")
        data = content.get("data")
        if not isinstance(data, dict):
            raise Unusable("has no data object")
        changes = text[end:].split("\n")
        if content["version"] == 1 or not any(line.strip() for line in changes):
            if any(line.strip() for line in changes):
                raise Unusable("is not valid JSON (extra data after the record)")
            return data
        records = _by_token(data)
        if records is None:
            raise Unusable("has changes but no list of reservations with tokens")
        last = len(changes) - 1  # the text after the final newline: "" unless cut short
        for number, line in enumerate(changes[1:], start=2):
            if not line.strip():
                continue
            try:
                change = json.loads(line)
                if not isinstance(change, dict):
                    raise TypeError("not an object")
                for r in change.get("put", ()):
                    records[r["token"]] = r
                for t in change.get("drop", ()):
                    records.pop(t, None)
                data.update(change.get("set", {}))
            except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as e:
                if number - 1 == last:
                    _log.warn("state file {path}: its last change was cut short (line {number}); "
                              "dropped", path=self.path, number=number)
                    break
                raise Unusable(f"has an unusable change at line {number} "
                               f"({type(e).__name__}: {e})") from None
        data["reservations"] = list(records.values())
        return data

    def _set_aside(self, problem):
        stamp = int(time.time())
        aside, n = f"{self.path}.corrupt-{stamp}", 1
        while os.path.lexists(aside):
            aside, n = f"{self.path}.corrupt-{stamp}-{n}", n + 1
        try:
            os.rename(self.path, aside)
            done = f"moved aside to {aside}"
        except OSError as e:
            done = f"could not be moved aside ({e.strerror or e}); it will be overwritten"
        _log.warn(
            "state file {path} {problem}: {done}; starting without the previous run's sessions",
            path=self.path, problem=problem, done=done,
        )


_NOTHING = object()


def _by_token(data):
    """C{data}'s reservations as {token: record}, in order; None if they are not such a list."""
    items = data.get("reservations") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    records = {}
    for r in items:
        if not isinstance(r, dict) or not isinstance(r.get("token"), str) or r["token"] in records:
            return None
        records[r["token"]] = r
    return records


def saved_records(data):
    """Check what L{StateFile.read} returned: C{([Saved], [(pid, start_time)])}.

    The second list holds processes a run recorded as left to terminate
    (C{orphans}). Malformed records are dropped with one warning each.
    """
    saved, orphans = [], []
    data = {} if data is None else data  # no state file
    for item in _list(data, "orphans"):
        try:
            orphans.append(_proc(item))
        except (TypeError, ValueError) as e:
            _malformed("process", e)
    for entry in _list(data, "reservations"):
        try:
            user, options = entry.get("user"), entry.get("options") or {}
            if not (user is None or isinstance(user, str)) or not isinstance(options, dict):
                raise TypeError("user or options of the wrong type")
            index = int(entry["index"])
            if index < 0:
                raise ValueError(f"index {index}")
            saved.append(Saved(
                str(entry["token"]), str(entry["service"]), index, options, user,
                str(entry["state"]), float(entry["created"]),
                [_proc(p) for p in entry.get("pids") or ()],
            ))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            _malformed("reservation", e)
    return saved, orphans


def recover(data, now, timeout, services):
    """Sort out what a previous run recorded, as it stands at C{now}.

    Unused reservations of a known service, at a valid and unique index and
    younger than C{timeout} seconds survive; any other reservation is dropped
    (logged: a warning when that is surprising). Processes of instances that
    were running, and orphans recorded but not yet terminated, are to be
    terminated.

    @param data: what L{StateFile.read} returned (None: nothing).
    @param now: wall-clock epoch seconds.
    @param services: service name or alias -> service.
    @return: C{([(Saved, service, age)], [(pid, start_time)])}.
    """
    saved, doomed = saved_records(data)
    keep, taken = [], set()
    for s in saved:
        label = f"{printable(s.token[:8])}... {printable(s.service)}#{s.index}"
        service, age = services.get(s.service), max(0.0, now - s.created)
        if s.state != "reserved":
            _log.info("previous run: {label} was {state}; ended", label=label, state=printable(s.state))
            doomed += s.pids
        elif service is None:
            _log.warn("previous run: reservation {label} dropped: service {name!r} is not "
                      "configured any more", label=label, name=printable(s.service))
        elif age >= timeout:
            _log.info("previous run: reservation {label} expired meanwhile; dropped", label=label)
        elif s.index >= service.count or {(service.name, s.index), s.token} & taken:
            _log.warn("previous run: reservation {label} dropped: index out of range or taken twice",
                      label=label)
        else:
            taken |= {(service.name, s.index), s.token}
            keep.append((s, service, age))
    return keep, list(dict.fromkeys(doomed))


def _list(data, key):
    items = data.get(key, []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        _log.warn("state file: {key!r} is not a list; ignored", key=key)
        return []
    return items


def _proc(item):
    """A C{(pid, start_time)} record; never a pid that would signal a group or every process."""
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise TypeError(f"not a (pid, start time) pair: {printable(item)}")
    pid, start = item
    if isinstance(pid, bool) or int(pid) <= 1:
        raise ValueError(f"not a process id: {printable(pid)}")
    return (int(pid), None if start is None else int(start))


def _malformed(what, error):
    _log.warn("state file: dropping a malformed {what} record ({error})",
              what=what, error=printable(f"{type(error).__name__}: {error}"))
