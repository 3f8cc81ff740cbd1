"""Group membership: the C{--groups_file}, re-read when it changes, and the system's groups.

The file is JSON, C{{"group": ["user", ...]}}. At start-up an unreadable or
invalid file stops the gateway with one line; later, a bad new version is
reported once and the last good version stays in force.
"""

import grp
import json
import os
import pwd

from nexusws.convert import DuplicateKey, unique_keys
from nexusws.errors import StartupError
from nexusws.logs import logger, printable, show

_log = logger("nexusws.groups")

#: A groups file larger than this is refused rather than read.
MAX_GROUPS_FILE = 16 * 1024 * 1024
#: The longest user name accepted.
MAX_USER = 256


def check_user(name):
    """C{(name stripped, None)}, or C{(None, a one-line reason it is no user name)}."""
    name = name.strip()
    if not name:
        return None, "empty"
    if len(name) > MAX_USER:
        return None, f"longer than {MAX_USER} characters"
    if any(not c.isprintable() for c in name):
        return None, "it holds control characters"
    return name, None


# --- groups --------------------------------------------------------------------------


class GroupsError(ValueError):
    """A groups file is unreadable or invalid; the message is one line."""


def parse_groups(raw):
    """Groups file bytes as C{{group: frozenset(users)}}; L{GroupsError} with a one-line reason."""
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as e:
        raise GroupsError(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise GroupsError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except DuplicateKey as e:
        raise GroupsError(f"group {printable(e.args[0])!r} appears twice") from None
    except RecursionError:
        raise GroupsError("nested too deeply") from None
    if not isinstance(data, dict):
        raise GroupsError(f'the top level must be an object {{"group": ["user", ...]}}, '
                         f"not {show(data, 40)}")
    groups = {}
    for group, members in data.items():
        where = f"group {printable(group)!r}"
        if not group.strip():
            raise GroupsError("a group name must not be empty")
        if not isinstance(members, list):
            raise GroupsError(f"{where}: must be a list of user names, not {show(members, 40)}")
        for i, member in enumerate(members):
            if not isinstance(member, str) or check_user(member)[0] != member:
                raise GroupsError(f"{where}: member {i + 1} is not a user name: {show(member, 40)}")
        groups[group] = frozenset(members)
    return groups


class GroupsFile:
    """The C{--groups_file}: read now, re-read when it changes.

    On use (L{members}) it is checked at most every C{interval} seconds of
    C{clock}; a new version (other mtime, size or inode) replaces the old one
    only if it is valid. A bad version is reported once, in one line, and the
    last good one stays in force.

    @raise StartupError: the file cannot be read or is invalid at start-up."""

    def __init__(self, path, clock, interval=1.0):
        self.path, self._clock, self.interval = os.fspath(path), clock, interval
        self._checked = clock.seconds()
        self._signature = self._stat()
        try:
            self.groups = self._read()
        except GroupsError as e:
            raise StartupError(f"--groups_file {self.path}: {e}") from None
        self._rejected = None

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError as e:
            return ("error", e.strerror)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_GROUPS_FILE + 1)
        except OSError as e:
            raise GroupsError(f"cannot read it: {e.strerror or e}") from None
        if len(raw) > MAX_GROUPS_FILE:
            raise GroupsError(f"larger than {MAX_GROUPS_FILE // (1024 * 1024)} MiB")
        return parse_groups(raw)

    def current(self):
        """The groups in force, after a re-read if the file changed."""
        now = self._clock.seconds()
        if not 0 <= now - self._checked < self.interval:
            self._checked = now
            self._refresh()
        return self.groups

    def _refresh(self):
        signature = self._stat()
        if signature in (self._signature, self._rejected):
            return
        try:
            groups = self._read()
        except GroupsError as e:
            self._rejected = signature
            _log.warn("--groups_file {path}: {problem}; keeping the last good version",
                      path=self.path, problem=e)
            return
        self.groups, self._signature, self._rejected = groups, signature, None
        _log.info("--groups_file {path} re-read: {n} group(s)", path=self.path, n=len(groups))

    def members(self, group):
        return self.current().get(group, frozenset())


def os_group_exists(group):
    """Whether the operating system knows C{group} (an NSS look-up: it may block on LDAP)."""
    try:
        grp.getgrnam(group)
    except (KeyError, ValueError):
        return False
    return True


def os_member(user, group):
    """Whether the operating system puts C{user} in C{group} (as a member, or as
    their primary group). These are NSS look-ups: they may block on LDAP."""
    try:
        entry = grp.getgrnam(group)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return False
    if user in entry.gr_mem:
        return True
    try:
        return pwd.getpwnam(user).pw_gid == entry.gr_gid
    except (KeyError, ValueError):
        return False
