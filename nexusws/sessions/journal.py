"""The state file's format: a journal of a full record, then one line per change.

Owns what goes into the file's lines and what comes back out of them, with no
file handling (that is L{nexusws.sessions.statefile}):
  - writing: a full record or a change line (L{whole_line}, L{change_line};
    secret option values masked), the change since the last write
    (L{diff}, L{apply}), and when the changes outweigh the full record so
    the file is to be rewritten whole (L{compact_due}, 64 KiB at least);
  - reading: replaying a file's lines into the data they record (L{replay}),
    each record checked (L{nexusws.sessions.records}), damaged lines and a
    last change cut short told apart, a file of another format refused
    (L{Unusable}).

On disk (format version 2), one JSON document a line::

    {"version": 2, "data": {"reservations": [...], "orphans": [...]}}
    {"put": [reservation, ...], "drop": [token, ...], "set": {"orphans": [...]}}
    ...

where C{data} is what L{nexusws.sessions.registry.Registry.snapshot} returns (plus
the gateway's own processes, in C{orphans}) and each later line changes it:
reservations put (a new or changed record, by C{token}), dropped (by token),
and other keys set whole. Format version 1, a full record alone, is still read.

Logs as C{nexusws.statefile}.
"""

import json

from nexusws.logs import logger, printable
from nexusws.scrub import SECRET_PARAMS, mask_options
from nexusws.sessions.records import check_proc, check_reservation, valid_procs

_log = logger("nexusws.statefile")

VERSION = 2
READABLE = (1, 2)
#: The journal is rewritten whole when its changes outgrow the full record and this.
COMPACT_MIN = 64 * 1024


class Unusable(ValueError):
    """The file cannot be used; the message says why."""


def whole_line(data):
    """The full record of C{data}, as written: one line (bytes)."""
    return (_dumps({"version": VERSION, "data": data}) + "\n").encode("utf-8")


def change_line(change):
    """A change (from L{diff}), as written: one line (bytes)."""
    return (_dumps(change) + "\n").encode("utf-8")


def _dumps(value):
    return json.dumps(_storable(value), separators=(",", ":"), sort_keys=True)


def _storable(document):
    """A whole record or a change line as written: a reservation's secret options
    (C{password}..., L{SECRET_PARAMS}) keep their names, their values masked. A
    restart cannot honour them, so it drops such a reservation
    (L{nexusws.sessions.records.recover})."""
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
    return dict(record, options=mask_options(options))


_NOTHING = object()


def by_token(data):
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


def diff(records, rest, data, new):
    """What turns the data the file records into C{data}.

    @param records: token -> reservation record, as the file has them.
    @param rest: the other keys of the file's data, as it has them.
    @param new: C{data}'s reservations by token (L{by_token}).
    @return: a change (C{put}, C{drop}, C{set}; C{{}} when nothing changed),
        or None when no change line expresses it (a key removed): the file is
        to be rewritten whole.
    """
    put = [r for t, r in new.items()
           if (old := records.get(t, _NOTHING)) is not r and old != r]
    drop = [t for t in records if t not in new]
    now = {k: v for k, v in data.items() if k != "reservations"}
    changed = {k: v for k, v in now.items() if rest.get(k, _NOTHING) != v}
    if set(rest) - set(now):
        return None
    result = {}
    if put:
        result["put"] = put
    if drop:
        result["drop"] = drop
    if changed:
        result["set"] = changed
    return result


def apply(records, rest, change):
    """Make C{records} and C{rest} (as L{diff} takes them) record C{change}, once written."""
    for t in change.get("drop", ()):
        del records[t]
    records.update((r["token"], r) for r in change.get("put", ()))
    rest.update(change.get("set", {}))


def compact_due(changes, base, compact_min):
    """Whether to rewrite the file whole instead of appending: its changes
    (C{changes} bytes, the next one included) outweigh its full record (C{base}
    bytes) and C{compact_min}."""
    return changes > max(compact_min, base)


def replay(raw, path=None):
    """C{(data or None, [(line number, why)])}: what C{raw}'s (the file's bytes)
    well-formed lines record, and its damaged lines (a last change cut short is
    not damage).

    @param path: the file's, to name in warnings (a bad record, a last change
        cut short); None: log nothing.
    @raise Unusable: the file is of another format, or of none."""
    journal = _Journal(path)
    if not raw.strip():
        raise Unusable("is empty")
    text = raw.decode("utf-8", "surrogateescape")
    try:
        content, end = json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))
        head = text[:end].encode("utf-8")  # UnicodeEncodeError: bytes that are not UTF-8
    except (UnicodeError, ValueError, RecursionError):
        content = None
    if content is None:
        journal.damaged(1, why_not_json(raw.split(b"\n", 1)[0]))
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
            journal.damaged(number, why_not_json(blob))
            continue
        journal.change(change, number)
    return journal.result()


def why_not_json(blob):
    """Why C{blob} (a line's bytes) is not a JSON document, in a few words."""
    try:
        json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except RecursionError:
        return "not valid JSON: nested too deeply"
    except ValueError as e:
        return printable(f"not valid JSON: {e}", limit=200)
    return "not valid JSON: "


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
                procs = valid_procs(item.get("pids") if isinstance(item, dict) else None)
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
