"""The session state file: a crash-safe record of reservations and their processes.

It is a journal: a full record, then one line per change. A change (a
reservation made, started, released; a process recorded) is appended in one
C{write()}, before the change is answered, so the file survives the gateway
being killed at any moment. When the changes outweigh the full record
(64 KiB at least), the next change rewrites the file whole, atomically (a temp
file in the same directory, renamed over the old one), so a reader sees the
whole old file or the whole new one, never a mix. Nothing is fsynced: the
file guards against the gateway's crash, not the machine's (after a reboot no
session process is left to end, and a file a power loss damaged is read as
far as it is whole, then set aside). Appending instead of replacing the file at every change
is what lets the REST API make well over a thousand reservations a second. Mode
0600: it holds tokens.

Reading back never discards more than it must, and never crash-loops:
  - a last change cut short (the disk filled up mid-write) is dropped with a
    warning; the rest is used;
  - a damaged file (lines that are not JSON, not UTF-8, not changes) gives
    every well-formed line, and every process any of them recorded is to be
    ended (a damaged line may have been the last to mention it); the file is
    moved aside with one warning naming it and its first damaged line;
  - each record is checked field by field (L{check_reservation}, L{check_proc});
    a bad one is dropped with a warning naming its line, its valid processes
    still ended;
  - a file of another format (no or another version) is moved aside whole;
  - a file that exists but cannot be read (permissions, I/O) stops start-up
    with one line: starting without it would leave the previous run's
    processes running.
A change that cannot be written is refused by the caller (L{NotRecorded}).

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
import math
import os
import stat
import tempfile
import time
from collections import namedtuple

from nexusws.errors import StartupError
from nexusws.logs import MASK, SECRET_PARAMS, logger, printable, tag

_log = logger("nexusws.statefile")

VERSION = 2
READABLE = (1, 2)
MODE = 0o600
#: The journal is rewritten whole when its changes outgrow the full record and this.
COMPACT_MIN = 64 * 1024

#: One reservation as a previous run recorded it; C{created} is wall-clock epoch seconds.
Saved = namedtuple("Saved", "token service index options user state created pids")


def _dumps(value):
    return json.dumps(_storable(value), separators=(",", ":"), sort_keys=True)


def _storable(document):
    """A whole record or a change line as written: a reservation's secret options
    (C{password}..., L{SECRET_PARAMS}) keep their names, their values masked. A
    restart cannot honour them, so it drops such a reservation (L{recover})."""
    data = document.get("data")
    if isinstance(data, dict) and isinstance(data.get("reservations"), list):
        document = dict(document, data=dict(data, reservations=[_unsecret(r) for r in data["reservations"]]))
    if isinstance(document.get("put"), list):
        document = dict(document, put=[_unsecret(r) for r in document["put"]])
    return document


def _unsecret(record):
    options = record.get("options") if isinstance(record, dict) else None
    if not options or not any(name.lower() in SECRET_PARAMS for name in options):
        return record
    return dict(record, options={name: MASK if name.lower() in SECRET_PARAMS else value
                                 for name, value in options.items()})


class Unusable(ValueError):
    """The file cannot be used; the message says why."""


class NotRecorded(Exception):
    """A change could not be recorded in the state file, so it is refused; the message
    (one line, fit for a client) says why."""


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
        self._check_owner(os.stat(self.directory), f"directory {self.directory}", directory=True)
        try:
            fd, probe = tempfile.mkstemp(prefix=".nexusws-probe-", dir=self.directory)
        except OSError as e:
            raise StartupError(
                f"state file {self.path}: cannot create files in {self.directory}: "
                f"{e.strerror or e}"
            ) from None
        os.close(fd)
        os.unlink(probe)

    def _check_owner(self, info, what, directory=False):
        """Refuse (one line) a file or directory another user could have put there or
        change: the file names processes a root gateway ends, and reservations.

        The file must be this user's and writable by no one else; its directory
        this user's or root's and writable by no one else, unless sticky (as
        /tmp: others may add files there, not replace this user's).
        """
        uid = os.geteuid()
        owners = (uid, 0) if directory else (uid,)
        if info.st_uid not in owners:
            raise StartupError(f"state file {self.path}: {what} belongs to uid {info.st_uid}, not to "
                               f"this user (uid {uid}): another user could have written it")
        if info.st_mode & 0o022 and not (directory and info.st_mode & stat.S_ISVTX):
            raise StartupError(f"state file {self.path}: {what} is writable by other users "
                               f"(mode {stat.S_IMODE(info.st_mode):o}): make it private (chmod go-w)")

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
        """The data last written, or None: no file (silently), nothing usable in it.

        A damaged file (lines that are not what this module writes) gives what
        its well-formed lines hold, with every process it recorded anywhere
        among C{orphans}, and is moved aside with one warning naming its lines;
        a record whose fields are out of type or range is dropped with a
        warning naming its line, its processes kept among C{orphans} (see
        L{check_reservation}). A file of another format is moved aside whole.

        @raise StartupError: (one line) the file exists but cannot be read
            (permissions, an I/O error), or is a directory: starting without
            it would leave the previous run's processes running.
        """
        self._forget()
        try:
            # Non-blocking: a FIFO put there must not hang start-up before the check below.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise StartupError(f"state file {self.path}: is a directory") from None
        except OSError as e:
            raise StartupError(f"state file {self.path}: cannot be read: {e.strerror or e}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise StartupError(f"state file {self.path}: is {kind}")
        with open(fd, "rb") as f:
            self._check_owner(info, "it")
            if info.st_size > MAX_FILE_SIZE:
                return self._set_aside(f"is {info.st_size} bytes, over {MAX_FILE_SIZE}")
            try:
                raw = f.read(MAX_FILE_SIZE + 1)
            except OSError as e:
                raise StartupError(f"state file {self.path}: cannot be read: {e.strerror or e}") from None
        try:
            data, damaged = self._parse(raw, warn=True)
        except Unusable as e:
            return self._set_aside(str(e))
        if damaged:
            (first, why), more = damaged[0], len(damaged) - 1
            others = f" and {more} other line(s)" if more else ""
            if why.startswith("not valid JSON"):
                problem = f"is not valid JSON at line {first} ({why[len('not valid JSON: '):]})"
            elif why == "not UTF-8 text":
                problem = f"is not UTF-8 text at line {first}"
            else:
                problem = f"is damaged at line {first} ({why})"
            self._set_aside(problem + others, kept=None if data is None else _kept(data))
        return data

    def parse(self, raw):
        """The data C{raw} (the file's bytes) records; a reader's view, changing
        nothing and logging nothing (see L{read}): damaged lines and bad records
        are left out.

        @raise Unusable: nothing in it can be used (the message says why)."""
        data, damaged = self._parse(raw, warn=False)
        if data is None:
            raise Unusable(f"is damaged at line {damaged[0][0]} ({damaged[0][1]})")
        return data

    def _parse(self, raw, warn):
        """C{(data or None, [(line number, why)])}: what C{raw}'s well-formed lines
        record, and its damaged lines (a last change cut short is not damage).

        @raise Unusable: the file is of another format, or of none."""
        journal = _Journal(self.path if warn else None)
        if not raw.strip():
            raise Unusable("is empty")
        text = raw.decode("utf-8", "surrogateescape")
        try:
            content, end = json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))
            head = text[:end].encode("utf-8")  # UnicodeEncodeError: bytes that are not UTF-8
        except (UnicodeError, ValueError, RecursionError):
            content = None
        if content is None:
            journal.damaged(1, _why_not_json(raw.split(b"\n", 1)[0]))
            first, rest = 1, raw.split(b"\n")
        else:
            if not isinstance(content, dict) or "version" not in content:
                raise Unusable("has no format version")
            if content["version"] not in READABLE:
                raise Unusable(f"has format version {printable(content['version'])}, not {VERSION}")
            first = head.count(b"\n") + 1  # a version 1 record may span lines (written indented)
            journal.base(content.get("data"), first)
            rest = raw[len(head):].split(b"\n")
            extra = [n for n, b in enumerate(rest) if b.strip()]
            if extra and (extra[0] == 0 or content["version"] == 1):
                journal.damaged(first + extra[0], "extra data after the record")
                if content["version"] == 1:
                    rest = rest[:1]
        last = first + len(rest) - 1  # the text after the final newline: b"" unless cut short
        for number, blob in enumerate(rest[1:], start=first + 1):
            if not blob.strip():
                continue
            try:
                change = json.loads(blob.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                if number == last:
                    journal.cut(number)
                    break
                journal.damaged(number, _why_not_json(blob))
                continue
            journal.change(change, number)
        return journal.result()

    def _set_aside(self, problem, kept=None):
        stamp = int(time.time())
        aside, n = f"{self.path}.corrupt-{stamp}", 1
        while os.path.lexists(aside):
            aside, n = f"{self.path}.corrupt-{stamp}-{n}", n + 1
        try:
            os.rename(self.path, aside)
            done = f"moved aside to {aside}"
        except OSError as e:
            done = f"could not be moved aside ({e.strerror or e}); it will be overwritten"
        outcome = ("starting without the previous run's sessions" if kept is None
                   else f"kept what its well-formed lines record ({kept})")
        _log.warn("state file {path} {problem}: {done}; {outcome}",
                  path=self.path, problem=problem, done=done, outcome=outcome)


def _why_not_json(blob):
    try:
        json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except RecursionError:
        return "not valid JSON: nested too deeply"
    except ValueError as e:
        return printable(f"not valid JSON: {e}", limit=200)
    return "not valid JSON: "


def _kept(data):
    """A few words on what a damaged file still gave."""
    reservations = data.get("reservations") if isinstance(data, dict) else None
    orphans = data.get("orphans") if isinstance(data, dict) else None
    return (f"{len(reservations) if isinstance(reservations, list) else 0} reservation(s), "
            f"{len(orphans) if isinstance(orphans, list) else 0} process(es) to end")


class _Journal:
    """Replays a file's lines: the full record, then each change, checking every record.

    Records that fail L{check_reservation} are dropped (a warning naming the line
    when C{path} is given), their valid processes kept to be ended; so are bad
    entries of C{orphans}. Every process any well-formed line recorded is
    remembered: when a line is damaged, all of them are to be ended, since the
    damaged line may have been the one that recorded them last.
    """

    def __init__(self, path):
        self.path = path
        self.data = None  # the other keys of the record, as changed
        self.records = {}  # token -> record, in order
        self.doomed = []  # (pid, start) of records and entries dropped as bad
        self.seen = []  # every (pid, start) a well-formed line recorded
        self.problems = []  # (line, why) of damaged lines
        self.cut_at = None
        self.journal = False  # whether the data has reservations (by token)

    def _warn(self, number, what, why, then=""):
        if self.path is not None:
            _log.warn("state file {path} line {number}: dropped {what} ({why}){then}",
                      path=self.path, number=number, what=what, why=printable(why, limit=300),
                      then=then)

    def damaged(self, number, why):
        self.problems.append((number, why))

    def cut(self, number):
        self.cut_at = number

    def base(self, data, number):
        if not isinstance(data, dict):
            self.damaged(number, "no data object")
            return
        self.data = {k: v for k, v in data.items() if k != "reservations"}
        if "reservations" in data:
            self.journal = True
            items = data["reservations"]
            if not isinstance(items, list):
                self.damaged(number, "its reservations are not a list")
                items = []
            self._put(items, number)
        if "orphans" in data:
            self.data["orphans"] = self._orphans(data["orphans"], number)

    def change(self, change, number):
        if self.data is None:  # the full record was damaged: the changes still tell
            self.data = {}
        self.journal = True
        try:
            if not isinstance(change, dict) or set(change) - {"put", "drop", "set"}:
                raise ValueError("not a change")
            put, drop, changed = change.get("put", []), change.get("drop", []), change.get("set", {})
            if not isinstance(put, list) or not isinstance(changed, dict) or not (
                    isinstance(drop, list) and all(isinstance(t, str) for t in drop)):
                raise ValueError("not a change")
        except ValueError as e:
            self.damaged(number, str(e))
            return
        self._put(put, number)
        for token in drop:
            self.records.pop(token, None)
        for key, value in changed.items():
            if key == "reservations":
                self.damaged(number, "it sets the reservations")
            elif key == "orphans":
                self.data["orphans"] = self._orphans(value, number)
            else:
                self.data[key] = value

    def _put(self, items, number):
        for item in items:
            try:
                record = check_reservation(item)
            except (TypeError, ValueError) as e:
                procs = _valid_procs(item.get("pids") if isinstance(item, dict) else None)
                self.doomed += procs
                self.seen += procs
                self._warn(number, "a reservation record", str(e),
                           f"; its {len(procs)} process(es) will be ended" if procs else "")
                continue
            self.records[record["token"]] = record
            self.seen += [tuple(p) for p in record["pids"]]

    def _orphans(self, items, number):
        if not isinstance(items, list):
            self._warn(number, "the list of processes to end", "not a list")
            return []
        kept = []
        for item in items:
            try:
                kept.append(list(check_proc(item)))
            except (TypeError, ValueError) as e:
                self._warn(number, "a process to end", str(e))
        self.seen += [tuple(p) for p in kept]
        return kept

    def result(self):
        if self.cut_at is not None and self.path is not None:
            if self.problems:
                self.problems.append((self.cut_at, "cut short"))
            else:
                _log.warn("state file {path}: its last change was cut short (line {number}); "
                          "dropped", path=self.path, number=self.cut_at)
        if self.data is None:
            return None, self.problems or [(1, "no record")]
        data = dict(self.data)
        if self.journal:
            data["reservations"] = list(self.records.values())
        doomed = self.doomed + (self.seen if self.problems else [])
        if doomed:
            known = [tuple(p) for p in data.get("orphans", [])]
            data["orphans"] = [list(p) for p in dict.fromkeys(known + doomed)]
        return data, self.problems


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
    (C{orphans}). Malformed records (see L{check_reservation}) are dropped
    with one warning each; their valid processes join the second list.
    """
    saved, orphans = [], []
    data = {} if data is None else data  # no state file
    for item in _list(data, "orphans"):
        try:
            orphans.append(check_proc(item))
        except (TypeError, ValueError) as e:
            _malformed("process", e)
    for entry in _list(data, "reservations"):
        try:
            r = check_reservation(entry)
        except (TypeError, ValueError) as e:
            _malformed("reservation", e)
            orphans += _valid_procs(entry.get("pids") if isinstance(entry, dict) else None)
            continue
        saved.append(Saved(r["token"], r["service"], r["index"], r["options"], r["user"],
                           r["state"], float(r["created"]), [tuple(p) for p in r["pids"]]))
    return saved, list(dict.fromkeys(orphans))


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
        label = f"{tag(s.token)} {printable(s.service)}#{s.index}"
        service, age = services.get(s.service), max(0.0, now - s.created)
        if s.state != "reserved":
            _log.info("previous run: {label} was {state}; ended", label=label, state=printable(s.state))
            doomed += s.pids
        elif service is None:
            _log.warn("previous run: reservation {label} dropped: service {name!r} is not "
                      "configured any more", label=label, name=printable(s.service))
        elif age >= timeout:
            _log.info("previous run: reservation {label} expired meanwhile; dropped", label=label)
        elif secret := sorted(name for name in s.options if name.lower() in SECRET_PARAMS):
            _log.info("previous run: reservation {label} dropped: its {names} (never written to the "
                      "state file) cannot be restored; reserve again", label=label, names=", ".join(secret))
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


#: The states a saved reservation may be in (L{nexusws.reservations}).
STATES = ("reserved", "starting", "active", "stopping")
#: The largest pid Linux can give (PID_MAX_LIMIT), and the latest time C{iso_utc} can show.
PID_MAX, EPOCH_MAX = 1 << 22, 253402300799.0  # 9999-12-31T23:59:59Z
#: Bounds on what a record from the file may hold: nexusws never writes more.
MAX_TEXT, MAX_OPTIONS = 4096, 256
#: The largest state file read; a larger one is set aside (some 200,000 reservations).
MAX_FILE_SIZE = 64 * 1024 * 1024


def check_proc(item):
    """A C{(pid, start_time)} from the file, checked: a pid of 2 to PID_MAX (never one
    that would signal a group or every process) and a start time in clock ticks or None.

    @raise TypeError, ValueError: the message says what is wrong."""
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise TypeError(f"not a (pid, start time) pair: {printable(item, limit=100)}")
    pid, start = item
    if not _is_int(pid) or not 1 < pid <= PID_MAX:
        raise ValueError(f"not a process id: {printable(pid, limit=100)}")
    if start is not None and (not _is_int(start) or not 0 <= start < 1 << 63):
        raise ValueError(f"not a start time: {printable(start, limit=100)}")
    return (pid, start)


def _valid_procs(items):
    """The valid C{(pid, start)} pairs of C{items}, whatever else it holds."""
    found = []
    for item in items if isinstance(items, list) else ():
        try:
            found.append(check_proc(item))
        except (TypeError, ValueError):
            pass
    return found


def check_options(options):
    """Raise ValueError unless C{options} are what a reservation may hold (and this
    file can give back): at most L{MAX_OPTIONS} names, each with text values (or
    lists of at most as many) of at most L{MAX_TEXT} characters. /v1/reserve
    applies the same check, so nothing it accepts is dropped at a restart."""
    if not isinstance(options, dict) or len(options) > MAX_OPTIONS:
        raise ValueError(f"options are not an object of at most {MAX_OPTIONS} entries")
    for name, value in options.items():
        _check_text("an option's name", name, controls=True)
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_OPTIONS:
            raise ValueError(f"option {printable(name, limit=100)!r} has too many values")
        for v in values:
            if not isinstance(v, str) or len(v) > MAX_TEXT:
                raise ValueError(f"option {printable(name, limit=100)!r} is not a text of at most "
                                 f"{MAX_TEXT} characters")


def check_reservation(record):
    """A reservation record from the file, checked field by field (type and range);
    returned as a new dict holding only the fields nexusws reads.

    A record that passes can be listed (/v1/status, status_view), restored and
    handed to a script without surprise: a finite creation time C{iso_utc} can
    show, texts of bounded length without control characters, options whose
    values are texts or lists of texts (as a query gives them), known states,
    valid processes.

    @raise TypeError, ValueError: the message names the field."""
    if not isinstance(record, dict):
        raise TypeError("not an object")
    for key in ("token", "service", "index", "state", "created"):
        if key not in record:
            raise ValueError(f"no {key}")
    token, service = record["token"], record["service"]
    _check_text("token", token)
    _check_text("service", service)
    index = record["index"]
    if not _is_int(index) or not 0 <= index < 1 << 31:
        raise ValueError(f"index {printable(index, limit=100)} is not an instance index")
    state = record["state"]
    if state not in STATES:
        raise ValueError(f"state {printable(state, limit=100)} is not one of {', '.join(STATES)}")
    created = record["created"]
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not (
            math.isfinite(created) and 0 <= created <= EPOCH_MAX):
        raise ValueError(f"created {printable(created, limit=100)} is not a time")
    user = record.get("user")
    if user is not None:
        _check_text("user", user)
    options = record.get("options") or {}
    check_options(options)
    pids = record.get("pids") or []
    if not isinstance(pids, list):
        raise TypeError("pids is not a list")
    return {"token": token, "service": service, "index": index, "options": dict(options),
            "user": user, "state": state, "created": created,
            "pids": [list(check_proc(p)) for p in pids]}


def _check_text(what, value, controls=False):
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise ValueError(f"{what} is not a text of 1 to {MAX_TEXT} characters")
    if not controls and not value.isprintable():
        raise ValueError(f"{what} {printable(value, limit=100)!r} holds control characters")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(what, error):
    _log.warn("state file: dropping a malformed {what} record ({error})",
              what=what, error=printable(f"{type(error).__name__}: {error}"))
