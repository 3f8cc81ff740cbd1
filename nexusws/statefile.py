"""The session state file: a crash-safe record of reservations and their processes.

It is rewritten on every change, atomically (a temp file in the same
directory, renamed over the old one), so a reader sees the whole old file or
the whole new one, never a mix. It is written before the change is answered,
so it survives the gateway being killed at any moment; it is not fsynced:
it guards against the gateway's crash, not the machine's (after a reboot no
session process is left to end, and a file a power loss damaged is set
aside like any corrupt one). An fsync would halve the REST API's rate. Mode 0600:
it holds tokens. A file that cannot be read back (corrupt, of another format
version) is moved aside with one warning and start-up goes on without it:
never a crash loop.

On disk: C{{"version": 1, "data": {"reservations": [...], "orphans": [...]}}},
where C{data} is what L{nexusws.reservations.Registry.snapshot} returns.
"""

import json
import os
import tempfile
import time
from collections import namedtuple

from nexusws.errors import StartupError
from nexusws.logs import logger, printable

_log = logger("nexusws.statefile")

VERSION = 1
MODE = 0o600

#: One reservation as a previous run recorded it; C{created} is wall-clock epoch seconds.
Saved = namedtuple("Saved", "token service index options user state created pids")


class StateFile:
    """The state file at C{path} (made absolute now, so a later chdir does not move it)."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)

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
        """Replace the file's content with C{data} (JSON-serialisable), atomically.

        On any error the previous file is left as it was, no temp file is left
        behind, and the error is raised.
        """
        fd, temp = tempfile.mkstemp(
            prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=self.directory
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), MODE)
                json.dump({"version": VERSION, "data": data}, f, separators=(",", ":"), sort_keys=True)
                f.write("\n")
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def read(self):
        """The data last written, or None: no file (silently) or an unusable one (moved aside)."""
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
            content = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return self._set_aside("is not UTF-8 text")
        except (ValueError, RecursionError) as e:
            return self._set_aside(f"is not valid JSON ({e})")
        if not isinstance(content, dict) or "version" not in content:
            return self._set_aside("has no format version")
        if content["version"] != VERSION:
            return self._set_aside(
                f"has format version {printable(content['version'])}, not {VERSION}"
            )
        if not isinstance(content.get("data"), dict):
            return self._set_aside("has no data object")
        return content["data"]

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
