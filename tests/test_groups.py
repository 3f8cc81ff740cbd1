"""Group membership in memory: the groups file (validation, re-reading on change with a
Clock, keeping the last good version), the operating system's groups, and the
authorization matrix of L{nexusws.auth.Access.refusal}."""

import grp
import json
import os
import pwd

import pytest
from twisted.internet.task import Clock

from nexusws.auth import Access
from nexusws.errors import StartupError
from nexusws.groups import GroupsError, GroupsFile, check_user, os_member, parse_groups

GOOD = {"ClusterRendering": ["alice", "bob"], "RemoteSession": ["alice", "carol"]}


def write(path, data, mtime=None):
    """Write C{data} (JSON-encoded unless bytes) and, if given, set its mtime."""
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def warnings(events):
    return [e for e in events if e.get("log_level") and e["log_level"].name == "warn"
            and e.get("log_namespace") == "nexusws.groups"]


@pytest.fixture
def groups(tmp_path):
    """A GroupsFile of GOOD on a Clock: (file, path, clock)."""
    path = tmp_path / "groups.json"
    write(path, GOOD, mtime=1_000_000)
    clock = Clock()
    return GroupsFile(path, clock), path, clock


# --- parsing ----------------------------------------------------------------------------


def test_parse_groups_gives_each_group_its_members_as_a_frozenset():
    assert parse_groups(json.dumps(GOOD).encode()) == {
        "ClusterRendering": frozenset({"alice", "bob"}), "RemoteSession": frozenset({"alice", "carol"})}
    assert parse_groups(b'\xef\xbb\xbf{"empty": []}') == {"empty": frozenset()}  # a UTF-8 BOM is fine


@pytest.mark.parametrize("raw, problem", [
    (b'{"g": ["a",', "invalid JSON at line 1"),
    (b'["alice"]', "the top level must be an object"),
    (b'{"g": "alice"}', "group 'g': must be a list of user names"),
    (b'{"g": ["alice", 5]}', "group 'g': member 2 is not a user name: 5"),
    (b'{"g": [""]}', "member 1 is not a user name"),
    (b'{"g": [" alice"]}', "member 1 is not a user name"),
    (b'{"g": ["a\\nb"]}', "member 1 is not a user name"),
    (b'{"": ["alice"]}', "a group name must not be empty"),
    (b'{"g": ["a"], "g": ["b"]}', "group 'g' appears twice"),
    (b'{"g": ["\xff"]}', "not UTF-8 text (byte 8)"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_parse_groups_refuses_bad_files_with_a_one_line_reason(raw, problem):
    with pytest.raises(GroupsError) as caught:
        parse_groups(raw)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name, result", [
    ("alice", ("alice", None)),
    ("  alice ", ("alice", None)),
    ("", (None, "empty")),
    ("a\x00b", (None, "it holds control characters")),
    ("x" * 257, (None, "longer than 256 characters")),
])
def test_check_user_strips_names_and_refuses_empty_long_and_control_character_ones(name, result):
    assert check_user(name) == result


# --- the file: start-up -----------------------------------------------------------------------


def test_groups_file_is_read_at_start_up(groups):
    file, _, _ = groups
    assert file.members("ClusterRendering") == {"alice", "bob"}
    assert file.members("nobody's group") == frozenset()


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read it: No such file or directory"),
    (b"{", "invalid JSON at line 1, column 2"),
    (b'{"g": "alice"}', "group 'g': must be a list of user names"),
])
def test_groups_file_problems_at_start_up_are_one_line_startup_errors_naming_the_file(
        tmp_path, content, problem):
    path = tmp_path / "groups.json"
    if content is not None:
        write(path, content)
    with pytest.raises(StartupError) as caught:
        GroupsFile(path, Clock())
    message = str(caught.value)
    assert message.startswith(f"--groups_file {path}: ") and problem in message and "\n" not in message


def test_groups_file_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("nexusws.groups.MAX_GROUPS_FILE", 100)
    path = tmp_path / "groups.json"
    write(path, {"g": ["u" * 200]})
    with pytest.raises(StartupError, match="larger than"):
        GroupsFile(path, Clock())


# --- the file: re-reading ------------------------------------------------------------------------


def test_a_changed_groups_file_is_re_read_on_use_once_the_interval_has_passed(groups):
    file, path, clock = groups
    write(path, {"ClusterRendering": ["dave"]}, mtime=1_000_100)
    clock.advance(0.5)
    assert file.members("ClusterRendering") == {"alice", "bob"}, "re-read before the interval"
    clock.advance(0.5)
    assert file.members("ClusterRendering") == {"dave"}
    assert file.members("RemoteSession") == frozenset()


def test_an_unchanged_groups_file_is_not_read_again(groups, monkeypatch):
    file, _, clock = groups
    reads = []
    monkeypatch.setattr(file, "_read", lambda: reads.append(1) or {})
    for _ in range(5):
        clock.advance(2)
        assert file.members("ClusterRendering") == {"alice", "bob"}
    assert reads == []


def test_a_groups_file_replaced_by_rename_is_re_read_even_with_the_same_mtime_and_size(groups, tmp_path):
    """Editors and config tools replace files atomically: the new inode counts as a change."""
    file, path, clock = groups
    other = tmp_path / "new.json"
    write(other, dict(GOOD, ClusterRendering=["erika", "bob"]), mtime=1_000_000)  # same size
    assert other.stat().st_size == path.stat().st_size
    keep = path.with_suffix(".old")
    os.link(path, keep)  # keeps the old inode alive, so the new file gets another number
    os.replace(other, path)
    clock.advance(1)
    assert file.members("ClusterRendering") == {"erika", "bob"}


def test_a_bad_new_version_is_reported_once_and_the_last_good_version_stays(groups, events):
    file, path, clock = groups
    write(path, b'{"ClusterRendering": ["mallory"', mtime=1_000_100)
    for _ in range(3):
        clock.advance(1)
        assert file.members("ClusterRendering") == {"alice", "bob"}
    (warning,) = warnings(events)
    text = warning["log_format"].format(**warning)
    assert text == (f"--groups_file {path}: invalid JSON at line 1, column 32: Expecting ',' "
                    f"delimiter; keeping the last good version")
    write(path, {"ClusterRendering": ["mallory"]}, mtime=1_000_200)
    clock.advance(1)
    assert file.members("ClusterRendering") == {"mallory"}, "the fixed version is taken"


def test_a_removed_groups_file_is_reported_and_the_last_good_version_stays(groups, events):
    file, path, clock = groups
    path.unlink()
    clock.advance(1)
    assert file.members("ClusterRendering") == {"alice", "bob"}
    clock.advance(1)
    (warning,) = warnings(events)
    assert "cannot read it: No such file or directory" in warning["log_format"].format(**warning)


# --- the operating system's groups ------------------------------------------------------------------


def me():
    """This process's user name and primary group name (skips when they have no names)."""
    try:
        user = pwd.getpwuid(os.getuid())
        return user.pw_name, grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        pytest.skip("this process's user or group has no name")


def test_os_member_counts_the_primary_group_and_refuses_unknown_groups_and_users():
    user, group = me()
    assert os_member(user, group)
    assert not os_member(user, "nexusws-no-such-group")
    assert not os_member("nexusws-no-such-user", group)
    assert not os_member(user, "bad\x00name")


def test_os_member_counts_supplementary_members():
    entry = next((g for g in grp.getgrall() if g.gr_mem), None)
    if entry is None:
        pytest.skip("no group on this system lists members")
    assert os_member(entry.gr_mem[0], entry.gr_name)


def test_membership_is_the_groups_file_or_else_the_system(groups):
    file, _, _ = groups
    user, group = me()
    both = Access(groups_file=file, os_groups=os_member)
    assert both.is_member("alice", "ClusterRendering") and both.is_member(user, group)
    assert not Access(groups_file=file).is_member(user, group)
    assert not Access(os_groups=os_member).is_member("alice", "ClusterRendering")


# --- the authorization matrix ---------------------------------------------------------------------


class Service:
    def __init__(self, group=None):
        self.name, self.group = "svc", group


@pytest.mark.parametrize("service_group, require, user, allowed", [
    (None, None, None, True),                   # nothing required: anyone, even anonymous
    (None, None, "zed", True),
    ("ClusterRendering", None, "alice", True),  # a member
    ("ClusterRendering", None, "carol", False),  # not a member of the service's group
    ("ClusterRendering", None, None, False),    # unknown user
    (None, "RemoteSession", "carol", True),
    (None, "RemoteSession", "bob", False),      # not in --require_group
    (None, "RemoteSession", None, False),
    ("ClusterRendering", "RemoteSession", "alice", True),  # both groups
    ("ClusterRendering", "RemoteSession", "bob", False),   # the service's only
    ("ClusterRendering", "RemoteSession", "carol", False),  # --require_group's only
])
def test_authorization_needs_membership_of_the_service_group_and_the_required_group(
        groups, service_group, require, user, allowed):
    file, _, _ = groups
    access = Access(groups_file=file, require_group=require)
    reason = access.refusal(user, Service(service_group))
    assert (reason is None) == allowed
    if not allowed:
        assert ("the user is unknown" if user is None else f"user {user!r} is not a member") in reason
