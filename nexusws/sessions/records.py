"""What a saved reservation record may hold, and what a restart makes of the records.

Owns the checks a record from the state file must pass, field by field (type
and range), and their bounds: L{check_reservation}, L{check_proc} and
L{check_options} (which /v1/reserve applies too, so nothing it accepts is
dropped at a restart). A record that passes can be listed, restored and handed
to a script without surprise.

Then, for a start-up: L{saved_records} turns what
L{nexusws.sessions.statefile.StateFile.read} returned into L{Saved} records and
processes to end (dropping malformed records with a warning each, their valid
processes still ended), and L{recover} sorts out which reservations survive.

Imports nothing else of the state file's (L{nexusws.sessions.journal} and
L{nexusws.sessions.statefile} import this); the states are
L{nexusws.sessions.reservation}'s. Logs as C{nexusws.statefile}.
"""

import math
from collections import namedtuple

from nexusws.logs import logger, printable, tag
from nexusws.scrub import SECRET_PARAMS
from nexusws.sessions.reservation import LIVE, RESERVED

_log = logger("nexusws.statefile")

#: One reservation as a previous run recorded it; C{created} is wall-clock epoch seconds.
#: A kept instance (L{nexusws.sessions.adoption}) also has C{kept} true, its C{address}
#: C{(host, port)}, C{started} and C{last_input} (wall clock, or None), C{extended}
#: seconds and C{bytes} C{(up, down)}, and a batch job's C{job} (C{{"id", "secret", "password",
#: "ends_at"}}, L{nexusws.sessions.slurm}) or None; others have C{kept} false and the defaults.
Saved = namedtuple("Saved", "token service index options user state created pids "
                   "kept address started last_input extended bytes events job",
                   defaults=(False, None, None, None, 0.0, (0, 0), 0, None))


def saved_records(data):
    """Check what L{nexusws.sessions.statefile.StateFile.read} returned: C{([Saved], [(pid, start_time)])}.

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
            orphans += valid_procs(entry.get("pids") if isinstance(entry, dict) else None)
            continue
        kept = {} if not r.get("kept") else {
            "kept": True, "address": tuple(r["address"]), "started": r["started"],
            "last_input": r["last_input"], "extended": r["extended"], "bytes": tuple(r["bytes"]),
            "events": r["events"], "job": r.get("job")}
        saved.append(Saved(r["token"], r["service"], r["index"], r["options"], r["user"],
                           r["state"], float(r["created"]), [tuple(p) for p in r["pids"]], **kept))
    return saved, list(dict.fromkeys(orphans))


def recover(data, now, timeout, services, alive=None):
    """Sort out what a previous run recorded, as it stands at C{now}.

    Unused reservations of a known service, at a valid and unique index and
    younger than C{timeout} seconds survive; so do instances the previous run
    kept running (L{nexusws.sessions.adoption}) whose processes are still
    alive, whatever their age, to be adopted. Any other reservation is dropped
    (logged: a warning when that is surprising). Processes of instances that
    were running and are not adopted, and orphans recorded but not yet
    terminated (but those of adopted instances), are to be terminated.

    @param data: what L{nexusws.sessions.statefile.StateFile.read} returned (None: nothing).
    @param now: wall-clock epoch seconds.
    @param services: service name or alias -> service.
    @param alive: C{[(pid, start_time)]} -> whether any of those is still that process
        (None: nothing is adopted).
    @return: C{([(Saved, service, age)], [(Saved, service, age)], [(pid, start_time)])}: the
        reservations that survive, the instances to adopt, the processes to terminate.
    """
    saved, doomed = saved_records(data)
    keep, adopt, taken = [], [], set()
    for s in saved:
        label = f"{tag(s.token)} {printable(s.service)}#{s.index}"
        service, age = services.get(s.service), max(0.0, now - s.created)
        if s.kept and s.state != RESERVED:
            problem = (f"service {printable(s.service)!r} is not configured any more" if service is None
                       else "index out of range or taken twice"
                       if s.index >= service.count or {(service.name, s.index), s.token} & taken
                       else "its backend cannot take a job back" if s.job is not None and not hasattr(service, "adopt")
                       # a batch job's life is its scheduler's to tell (the backend asks it once adopted)
                       else "its processes are gone" if s.job is None and (alive is None or not alive(s.pids))
                       else None)
            if problem is None:
                taken |= {(service.name, s.index), s.token}
                adopt.append((s, service, age))
            else:
                _log.info("previous run: kept instance {label} ended: {problem}", label=label, problem=problem)
                doomed += s.pids
        elif s.state != RESERVED:
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
    adopted = {p for s, _, _ in adopt for p in s.pids}
    return keep, adopt, [p for p in dict.fromkeys(doomed) if p not in adopted]


def _list(data, key):
    items = data.get(key, []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        _log.warn("state file: {key!r} is not a list; ignored", key=key)
        return []
    return items


#: The states a saved reservation may be in: those of a live one.
STATES = LIVE
#: The largest pid Linux can give (PID_MAX_LIMIT), and the latest time C{iso_utc} can show.
PID_MAX, EPOCH_MAX = 1 << 22, 253402300799.0  # 9999-12-31T23:59:59Z
#: Bounds on what a record from the file may hold: nexusws never writes more.
MAX_TEXT, MAX_OPTIONS = 4096, 256


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


def valid_procs(items):
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
    checked = {"token": token, "service": service, "index": index, "options": dict(options),
               "user": user, "state": state, "created": created,
               "pids": [list(check_proc(p)) for p in pids]}
    if record.get("kept") is True:  # the same fields again: checking a checked record gives it back
        checked.update(_check_kept(record))
    return checked


def _check_kept(record):
    """The fields of a kept instance's record (L{nexusws.sessions.adoption.kept_fields}), checked."""
    address = record.get("address")
    if not (isinstance(address, list) and len(address) == 2 and _is_int(address[1])
            and 0 < address[1] < 65536):
        raise ValueError(f"address {printable(address, limit=100)} is not a [host, port]")
    _check_text("address's host", address[0])
    times = {}
    for key in ("started", "last_input"):
        value = record.get(key)
        if value is not None and not _is_time(value):
            raise ValueError(f"{key} {printable(value, limit=100)} is not a time")
        times[key] = value
    extended = record.get("extended", 0.0)
    if isinstance(extended, bool) or not isinstance(extended, (int, float)) or not (
            math.isfinite(extended) and extended >= 0):  # as much as max_extend allows: no bound
        raise ValueError(f"extended {printable(extended, limit=100)} is not a number of seconds")
    traffic = record.get("bytes", [0, 0])
    if not (isinstance(traffic, list) and len(traffic) == 2 and all(_is_int(n) and 0 <= n < 1 << 63
                                                                    for n in traffic)):
        raise ValueError(f"bytes {printable(traffic, limit=100)} is not [up, down]")
    events = record.get("events", 0)
    if not _is_int(events) or not 0 <= events < 1 << 53:
        raise ValueError(f"events {printable(events, limit=100)} is not an event id")
    checked = dict(times, kept=True, address=[address[0], address[1]], extended=float(extended),
                   bytes=list(traffic), events=events)
    if record.get("job") is not None:
        checked["job"] = _check_job(record["job"])
    return checked


def _check_job(job):
    """A kept batch job (L{nexusws.sessions.slurm.SlurmService.kept}), checked."""
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"].isdigit() \
            or len(job["id"]) > 20 or not job["id"].isascii():
        raise ValueError(f"job {printable(job, limit=100)} has no job id")
    _check_text("job's secret", job.get("secret"))
    password = job.get("password")
    if password is not None:
        _check_text("job's password", password)
    ends_at = job.get("ends_at")
    if ends_at is not None and not _is_time(ends_at):
        raise ValueError(f"job's ends_at {printable(ends_at, limit=100)} is not a time")
    return {"id": job["id"], "secret": job["secret"], "password": password, "ends_at": ends_at}


def _is_time(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= EPOCH_MAX)


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
