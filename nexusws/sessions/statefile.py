"""The session state file: a crash-safe record of reservations and their processes.

Owns the file itself (L{StateFile}): the start-up checks (its directory, its
owner and mode), writing it (appending a change, or rewriting it whole,
atomically), reading it back, and setting a damaged one aside. What its lines
hold is L{nexusws.sessions.journal}'s; what a record may hold, and what a
restart makes of the records, L{nexusws.sessions.records}'s.

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
  - each record is checked field by field (L{nexusws.sessions.records.check_reservation},
    L{nexusws.sessions.records.check_proc}); a bad one is dropped with a warning
    naming its line, its valid processes still ended;
  - a file of another format (no or another version) is moved aside whole;
  - a file that exists but cannot be read (permissions, I/O) stops start-up
    with one line: starting without it would leave the previous run's
    processes running.
A change that cannot be written is refused by the caller (L{NotRecorded}).
"""

import errno
import os
import stat
import tempfile
import time

from nexusws.errors import StartupError
from nexusws.logs import logger
from nexusws.sessions import journal

_log = logger("nexusws.statefile")

MODE = 0o600
#: The largest state file read; a larger one is set aside (some 200,000 reservations).
MAX_FILE_SIZE = 64 * 1024 * 1024


class NotRecorded(Exception):
    """A change could not be recorded in the state file, so it is refused; the message
    (one line, fit for a client) says why."""


class StateFile:
    """The state file at C{path} (made absolute now, so a later chdir does not move it)."""

    def __init__(self, path, compact_min=journal.COMPACT_MIN):
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
        records = journal.by_token(data)
        if records is None or self._records is None or self._fd is None:
            return self._write_whole(data, records)
        change = journal.diff(self._records, self._rest, data, records)
        if change is None:
            return self._write_whole(data, records)  # a key removed: not a change lines express
        if not change:
            return None
        line = journal.change_line(change)
        if journal.compact_due(self._size + len(line) - self._base, self._base, self.compact_min):
            return self._write_whole(data, records)
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
        except BaseException:
            self._forget(truncate=True)
            raise
        self._size += len(line)
        journal.apply(self._records, self._rest, change)
        return None

    def _write_whole(self, data, records):
        text = journal.whole_line(data)
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
        L{nexusws.sessions.records.check_reservation}). A file of another format is moved aside whole.

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
            data, damaged = journal.replay(raw, self.path)
        except journal.Unusable as e:
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

        @raise nexusws.sessions.journal.Unusable: nothing in it can be used (the message says why)."""
        data, damaged = journal.replay(raw)
        if data is None:
            raise journal.Unusable(f"is damaged at line {damaged[0][0]} ({damaged[0][1]})")
        return data

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


def _kept(data):
    """A few words on what a damaged file still gave."""
    reservations = data.get("reservations") if isinstance(data, dict) else None
    orphans = data.get("orphans") if isinstance(data, dict) else None
    return (f"{len(reservations) if isinstance(reservations, list) else 0} reservation(s), "
            f"{len(orphans) if isinstance(orphans, list) else 0} process(es) to end")
