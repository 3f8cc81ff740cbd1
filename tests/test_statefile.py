"""Tests of the session state file: atomic writes, permissions, corrupt files, start-up checks."""

import itertools
import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from nexusws.errors import StartupError
from nexusws.sessions.journal import VERSION
from nexusws.sessions.records import recover, saved_records
from nexusws.sessions.statefile import StateFile


@pytest.fixture
def warnings():
    """The text of every warning (or worse) logged during the test."""
    lines = []

    def observe(event):
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def state(tmp_path):
    return StateFile(tmp_path / "nexusws.state")


DATA = {"reservations": [{"token": "t", "service": "demo", "index": 0, "options": {}, "user": None,
                          "state": "reserved", "created": 1000.0, "pids": []}],
        "orphans": []}


def leftovers(path):
    """Files in the state file's directory other than the state file."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def test_what_is_written_is_read_back(state):
    state.write(DATA)
    assert state.read() == DATA
    on_disk = json.loads(Path(state.path).read_text())
    assert on_disk == {"version": VERSION, "data": DATA}


def test_a_missing_file_reads_as_none_without_a_warning(state, warnings):
    assert state.read() is None
    assert warnings == []


def test_a_write_failing_midway_leaves_the_old_file_whole_and_no_temp_file(state):
    state.write(DATA)
    before = Path(state.path).read_bytes()
    # json.dump streams into the temp file: the first keys are written, then this fails.
    with pytest.raises(TypeError):
        state.write({"a": "x" * 100000, "z": object()})
    assert Path(state.path).read_bytes() == before
    assert leftovers(Path(state.path)) == []


def test_a_crash_before_the_rename_leaves_the_old_file_whole(state, monkeypatch):
    state.write(DATA)
    before = Path(state.path).read_bytes()
    state = StateFile(state.path)  # a new run: its first write is whole

    def crash(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        state.write({"reservations": [], "orphans": [[1234, 5]]})
    assert Path(state.path).read_bytes() == before
    assert leftovers(Path(state.path)) == []


def test_the_new_content_arrives_by_renaming_a_temp_file_of_the_same_directory(state, monkeypatch):
    renames = []
    real = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst), json.loads(Path(src).read_text())["data"]))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    state.write(DATA)
    (src, dst, content), = renames
    assert os.path.dirname(src) == os.path.dirname(state.path) and dst == state.path
    assert content == DATA, "the temp file is complete before it is renamed"


def test_write_does_not_fsync(state, monkeypatch):
    """The file guards against the gateway's crash (the page cache survives it), not the machine's."""
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync called"))
    state.write(DATA)
    assert json.loads(Path(state.path).read_text())["data"] == DATA


def test_the_file_is_private_0600_whatever_the_umask_or_an_older_file(state):
    Path(state.path).write_text("{}")
    os.chmod(state.path, 0o644)
    old = os.umask(0)
    try:
        state.write(DATA)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b'{"version": 1, "data": {"reserv', "is not valid JSON at line 1 (Unterminated"),
        (b"\xff\xfe garbage", "is not UTF-8 text at line 1"),
        (b"[" * 100000, "is not valid JSON at line 1 (nested too deeply)"),
        (b"[1, 2]", "has no format version"),
        (b'{"version": 99, "data": {}}', "has format version 99, not 2"),
        (b'{"version": 1, "data": [1]}', "is damaged at line 1 (no data object)"),
    ],
)
def test_a_file_with_nothing_usable_is_moved_aside_with_one_warning_and_reads_as_none(
    state, warnings, content, problem
):
    Path(state.path).write_bytes(content)
    assert state.read() is None
    (aside,) = leftovers(Path(state.path))
    assert aside.startswith("nexusws.state.corrupt-")
    assert (Path(state.path).parent / aside).read_bytes() == content, "kept for inspection"
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert problem in warnings[0] and aside in warnings[0] and state.path in warnings[0]
    assert state.read() is None and len(warnings) == 1, "the next start is quiet: no crash loop"
    state.write(DATA)
    assert state.read() == DATA


@pytest.mark.parametrize(
    "content, kept, problem",
    [
        (b'{"version": 1, "data": {}}\n{"put": []}\n', {}, "line 2 (extra data after the record)"),
        (b'{"version": 2, "data": {"reservations": 5}}\n{"drop": ["t"]}\n', {"reservations": []},
         "line 1 (its reservations are not a list)"),
        (b'{"version": 2, "data": {"reservations": []}}\n[1]\n{"drop": ["t"]}\n',
         {"reservations": []}, "line 2 (not a change)"),
        (b'{"version": 2, "data": {"reservations": []}}\n{"put": [{"tok\n{"drop": []}\n',
         {"reservations": []}, "not valid JSON at line 2 (Unterminated string"),
    ],
)
def test_a_damaged_file_gives_its_well_formed_lines_and_is_moved_aside_with_one_warning(
    state, warnings, content, kept, problem
):
    Path(state.path).write_bytes(content)
    assert state.read() == kept
    (aside,) = leftovers(Path(state.path))
    assert (Path(state.path).parent / aside).read_bytes() == content, "kept for inspection"
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"state file {state.path} " in warnings[0] and aside in warnings[0]
    assert problem in warnings[0]


def full(token, index=0, state="reserved", pids=(), created=1000.0, **more):
    return {"token": token, "service": "demo", "index": index, "options": {}, "user": None,
            "state": state, "created": created, "pids": [list(p) for p in pids], **more}


def test_damage_in_the_middle_keeps_every_well_formed_line_and_ends_every_recorded_process(
    state, warnings
):
    """Only a cut last line used to be forgiven: any other damage discarded the file
    whole, every reservation and every process of the previous run with it."""
    lines = [
        {"version": 2, "data": {"reservations": [full("a"), full("b", 1, "active", [(4242, 7)])],
                                "orphans": [[4242, 7]]}},
        {"put": [full("c", 2)]},
        None,  # damaged: a put that may have recorded processes, lost
        {"put": [full("b", 1, "active", [(4242, 7), (4243, 8)])], "set": {"orphans": [[4242, 7]]}},
        {"drop": ["a"]},
        {"set": {"orphans": [[5000, 9]]}},
    ]
    raw = b"".join(b"\x00\x00garbage\xff\n" if line is None else json.dumps(line).encode() + b"\n"
                   for line in lines)
    Path(state.path).write_bytes(raw)
    data = state.read()
    assert sorted(r["token"] for r in data["reservations"]) == ["b", "c"]
    assert sorted(map(tuple, data["orphans"])) == [(4242, 7), (4243, 8), (5000, 9)], (
        "every process any well-formed line recorded is to be ended")
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"state file {state.path} is not UTF-8 text at line 3: moved aside" in warnings[0]
    assert "corrupt-" in warnings[0] and len(leftovers(Path(state.path))) == 1


def test_a_damaged_first_line_still_gives_the_changes_after_it(state, warnings):
    raw = (b'{"version": 2, "data": {"reservations": [{"tok\x00\x00\n'
           + json.dumps({"put": [full("c", pids=[(31337, 5)], state="active")]}).encode() + b"\n")
    Path(state.path).write_bytes(raw)
    data = state.read()
    assert [r["token"] for r in data["reservations"]] == ["c"]
    assert data["orphans"] == [[31337, 5]]
    assert "is not valid JSON at line 1" in warnings[0]


def test_an_unreadable_file_is_a_one_line_startup_error_naming_it(state, monkeypatch):
    """It used to be moved aside like a corrupt one: the previous run's processes were
    then never ended. Permission denied, injected (the tests run as root)."""
    Path(state.path).write_bytes(json.dumps({"version": 2, "data": DATA}).encode() + b"\n")
    real_open = os.open

    def denied(path, *args, **kw):
        if str(path) == state.path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(StartupError) as info:
        state.read()
    assert str(info.value) == f"state file {state.path}: cannot be read: Permission denied"
    assert leftovers(Path(state.path)) == [], "left where it is"


def test_files_moved_aside_in_the_same_second_keep_distinct_names(state):
    for _ in range(3):
        Path(state.path).write_bytes(b"junk")
        state.read()
    assert len(leftovers(Path(state.path))) == 3


def test_check_passes_for_a_writable_directory_and_leaves_nothing_behind(state):
    state.check()
    assert list(Path(state.path).parent.iterdir()) == []


def test_check_of_a_missing_directory_is_a_one_line_startup_error(tmp_path):
    path = tmp_path / "no" / "such" / "state.json"
    with pytest.raises(StartupError) as info:
        StateFile(path).check()
    assert str(info.value) == f"state file {path}: directory {path.parent} does not exist"


def test_a_path_that_is_a_directory_is_a_startup_error_and_never_moved_aside(tmp_path):
    with pytest.raises(StartupError, match="is a directory"):
        StateFile(tmp_path).check()
    with pytest.raises(StartupError, match="is a directory"):
        StateFile(tmp_path).read()
    assert tmp_path.is_dir()


def test_check_of_a_directory_that_cannot_be_written_is_a_startup_error(tmp_path):
    # root ignores mode bits, so as root use a directory nobody can create files in.
    if os.geteuid() == 0:
        directory = "/proc"
    else:
        directory = tmp_path / "ro"
        directory.mkdir(mode=0o500)
    with pytest.raises(StartupError, match=f"cannot create files in {directory}") as info:
        StateFile(os.path.join(directory, "state.json")).check()
    assert "\n" not in str(info.value)


def test_a_relative_path_is_fixed_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = StateFile("state.json")
    monkeypatch.chdir("/")
    state.write(DATA)
    assert (tmp_path / "state.json").exists()


# --- what a previous run's record means ------------------------------------------


class Service:
    def __init__(self, name, count):
        self.name, self.count = name, count


def record(**fields):
    base = {"token": "tok-a", "service": "demo", "index": 0, "options": {}, "user": None,
            "state": "reserved", "created": 1000.0, "pids": []}
    return {**base, **fields}


def test_recover_keeps_young_reserved_records_and_collects_processes_to_end(warnings):
    demo = Service("demo", 2)
    data = {
        "reservations": [
            record(),
            record(token="tok-b", index=1, created=700.0),  # 300 s old: expired
            record(token="tok-c", index=1, state="active", pids=[[4242, 9]]),
            record(token="tok-d", service="gone"),
            record(token="tok-e", index=5),
            record(token="tok-f"),  # index 0 again
        ],
        "orphans": [[777, 1], [4242, 9]],
    }
    keep, _, doomed = recover(data, now=1010.0, timeout=300.0, services={"demo": demo})
    assert [(s.token, service, age) for s, service, age in keep] == [("tok-a", demo, 10.0)]
    assert doomed == [(777, 1), (4242, 9)]
    assert len(warnings) == 3  # unknown service, index out of range, index taken twice


def test_saved_records_rejects_pids_that_would_signal_a_group_or_everyone(warnings):
    _, orphans = saved_records({"orphans": [[0, 1], [1, 1], [-1, 1], [True, 1], [2, None]]})
    assert orphans == [(2, None)] and len(warnings) == 4


def test_a_state_save_scans_proc_only_when_an_instance_may_have_processes(tmp_path, monkeypatch):
    """A reserve or a release with nothing running writes the file without a pass over /proc."""
    from twisted.internet.task import Clock

    from nexusws.sessions import procs
    from nexusws.sessions.keeper import SessionsService

    class Registry:
        busy = False

        def snapshot(self):
            return {"reservations": [], "orphans": []}

        def running(self):
            return self.busy

        def kept_processes(self):
            return {}

    scans = []
    monkeypatch.setattr(procs, "stat_table", lambda: scans.append(1) or {})
    registry = Registry()
    sessions = SessionsService(registry, StateFile(str(tmp_path / "state.json")), Clock())
    sessions.save()
    assert scans == [] and (tmp_path / "state.json").exists()
    registry.busy = True
    sessions.save()
    assert scans == [1]


# --- the journal: a full record, then one appended line per change ----------------


def reservation(token, state="reserved", pids=()):
    return {"token": token, "service": "demo", "index": 0, "options": {}, "user": None,
            "state": state, "created": 1000.0, "pids": [list(p) for p in pids]}


def as_read(data):
    """C{data} as L{StateFile.read} gives it back: reservations in no particular order."""
    return {**data, "reservations": sorted(data["reservations"], key=lambda r: r["token"])}


def test_a_change_is_one_appended_line_written_by_one_write(state, monkeypatch):
    first = {"reservations": [reservation("a"), reservation("b")], "orphans": []}
    state.write(first)
    whole = Path(state.path).read_bytes()
    writes = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: writes.append(bytes(b)) or real(fd, b))
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("a change rewrote the file"))
    second = {"reservations": [reservation("a", "active", [(42, 7)]), reservation("c")],
              "orphans": [[42, 7]]}
    state.write(second)
    (line,) = writes
    assert Path(state.path).read_bytes() == whole + line and line.endswith(b"\n")
    assert json.loads(line) == {"put": [reservation("a", "active", [(42, 7)]), reservation("c")],
                                "drop": ["b"], "set": {"orphans": [[42, 7]]}}
    state.write(second)
    assert len(writes) == 1, "no change, nothing written"
    assert as_read(StateFile(state.path).read()) == as_read(second)


def test_the_journal_is_rewritten_whole_once_its_changes_outweigh_the_record(tmp_path):
    state = StateFile(tmp_path / "s", compact_min=4096)
    base = [reservation(f"held-{i}") for i in range(20)]
    sizes = []
    for i in range(500):
        data = {"reservations": base + [reservation(f"t{i}")], "orphans": []}
        state.write(data)
        sizes.append(os.path.getsize(state.path))
        assert as_read(StateFile(state.path).read()) == as_read(data)
    whole = len(json.dumps({"version": VERSION, "data": data}, separators=(",", ":")))
    assert max(sizes) <= 2 * max(4096, whole) + 1000
    assert sum(b < a for a, b in itertools.pairwise(sizes)) >= 10, "rewritten whole now and then"
    assert leftovers(Path(state.path)) == []


def test_a_change_cut_short_by_a_full_disk_is_undone_and_the_next_write_is_whole(
    state, monkeypatch
):
    first = {"reservations": [reservation("a")], "orphans": []}
    state.write(first)
    before = Path(state.path).read_bytes()
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: real(fd, bytes(b)[:10]))
    with pytest.raises(OSError, match="short write"):
        state.write({"reservations": [reservation("a"), reservation("b")], "orphans": []})
    assert Path(state.path).read_bytes() == before, "the part written is cut off again"
    assert StateFile(state.path).read() == first
    monkeypatch.setattr(os, "write", real)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append(b) or real_replace(a, b))
    second = {"reservations": [reservation("a"), reservation("c")], "orphans": []}
    state.write(second)
    assert replaced == [state.path]
    assert as_read(StateFile(state.path).read()) == as_read(second)


def test_a_last_change_cut_short_is_dropped_with_a_warning_and_the_rest_used(state, warnings):
    first = {"reservations": [reservation("a")], "orphans": []}
    state.write(first)
    state.write({"reservations": [reservation("a"), reservation("b")], "orphans": []})
    state.close()
    whole = Path(state.path).read_bytes()
    Path(state.path).write_bytes(whole + b'{"put": [{"token": "c", "ser')
    got = state.read()
    assert as_read(got) == as_read({"reservations": [reservation("a"), reservation("b")],
                                    "orphans": []})
    assert len(warnings) == 1 and "cut short (line 3)" in warnings[0]
    assert leftovers(Path(state.path)) == [], "not moved aside"


def test_a_format_version_1_file_is_read(state):
    Path(state.path).write_text(json.dumps({"version": 1, "data": DATA}, indent=2))
    assert state.read() == DATA


def test_only_the_file_written_whole_holds_a_descriptor_and_close_lets_go(state):
    def open_files():
        return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")}

    state.write(DATA)
    assert state.path in open_files()
    assert os.get_inheritable(state._fd) is False, "session processes never inherit it"
    state.close()
    assert state.path not in open_files()
    state.write({"a": 1})  # not reservations by token: every write is whole, nothing kept open
    assert state.path not in open_files() and state.read() == {"a": 1}


_tokens = st.sampled_from("abcdefgh")
_states = st.lists(
    st.tuples(_tokens, st.sampled_from(["reserved", "starting", "active"]),
              st.lists(st.tuples(st.integers(2, 99), st.integers(0, 9)), max_size=2)),
    max_size=6, unique_by=lambda t: t[0],
).map(lambda rs: {"reservations": [reservation(t, s, p) for t, s, p in rs],
                  "orphans": sorted({p for _, _, ps in rs for p in ps})})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(_states, min_size=1, max_size=25))
def test_a_crash_at_any_byte_leaves_a_file_that_reads_as_a_state_once_written(tmp_path, history):
    """Whatever was written, and wherever the gateway was killed while writing a
    change, the file reads back as the last state or one written before it."""
    path = tmp_path / f"s-{uuid.uuid4().hex}"
    state, seen = StateFile(path, compact_min=300), []
    for data in history:
        state.write(data)
        data = json.loads(json.dumps(data))  # orphans' tuples as the file has them: lists
        seen.append(as_read(data))
        raw = path.read_bytes()
        assert as_read(StateFile(path).read()) == seen[-1]
        header = raw.index(b"\n") + 1
        for cut in {header, *range(header, len(raw), 7), len(raw) - 1}:
            torn = tmp_path / "torn"
            torn.write_bytes(raw[:cut])
            assert as_read(StateFile(torn).read()) in seen
    state.close()


# --- hostile records: every field checked for type and range ----------------------


HOSTILE = [
    ({"created": float("nan")}, "created nan is not a time"),
    ({"created": 1e20}, "created 1e+20 is not a time"),
    ({"created": "1000"}, "created 1000 is not a time"),
    ({"created": True}, "created True is not a time"),
    ({"index": "3"}, "index 3 is not an instance index"),
    ({"index": 2.5}, "index 2.5 is not an instance index"),
    ({"index": -1}, "index -1 is not an instance index"),
    ({"token": 5}, "token is not a text"),
    ({"token": "x" * 5000}, "token is not a text"),
    ({"token": "a\nb"}, "holds control characters"),
    ({"service": None}, "service is not a text"),
    ({"state": "exploded"}, "state exploded is not one of"),
    ({"user": ["root"]}, "user is not a text"),
    ({"options": {"size": {"w": 1}}}, "option 'size' is not a text"),
    ({"options": [1]}, "options are not an object"),
    ({"pids": [[4242, 7], [1, 1]]}, "not a process id: 1"),
    ({"pids": [[4242, 7], [4243, 1.5]]}, "not a start time: 1.5"),
]


@pytest.mark.parametrize("change, problem", HOSTILE, ids=[p for _, p in HOSTILE])
def test_a_hostile_record_is_dropped_with_a_warning_naming_its_line_and_its_processes_kept(
    state, warnings, change, problem
):
    """A record with `created` NaN or 1e20 made /v1/status, status_view and reserve
    answer 500; a bad record is now dropped, the good ones around it kept, and its
    valid processes are still to be ended."""
    bad = {**full("bad", 1, "active", [(4242, 7)]), **change}
    lines = [{"version": 2, "data": {"reservations": [full("good")], "orphans": []}},
             {"put": [bad, full("good2", 2)]}]
    Path(state.path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = state.read()
    assert [r["token"] for r in data["reservations"]] == ["good", "good2"]
    assert [4242, 7] in data["orphans"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"state file {state.path} line 2: dropped a reservation record" in warnings[0]
    assert problem in warnings[0]
    assert leftovers(Path(state.path)) == [], "well-formed lines: not damage, not moved aside"
    saved, _ = saved_records(data)
    assert [s.token for s in saved] == ["good", "good2"]


def test_a_record_that_passes_the_checks_can_be_shown_and_restored(state):
    """What passes check_reservation is safe for iso_utc (status) and the scripts."""
    from nexusws.logs import iso_utc

    edge = full("edge", created=253402300799.0, options={"size": "1x1", "many": ["a", "b"]},
                user="alice")
    Path(state.path).write_text(json.dumps({"version": 2, "data": {"reservations": [edge]}}) + "\n")
    (record,) = state.read()["reservations"]
    assert iso_utc(record["created"]) == "9999-12-31T23:59:59Z"
    assert record["options"] == {"size": "1x1", "many": ["a", "b"]}


def test_bad_entries_of_the_processes_to_end_are_dropped_with_a_warning_naming_the_line(
    state, warnings
):
    lines = [{"version": 2, "data": {"reservations": [], "orphans": [[4242, 7]]}},
             {"set": {"orphans": [[4242, 7], [0, 1], [-1, 1], [True, 1], [1e20, 1], [5, None]]}}]
    Path(state.path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert state.read()["orphans"] == [[4242, 7], [5, None]]
    assert len(warnings) == 4 and all(f"{state.path} line 2: dropped a process" in w for w in warnings)


# --- who may have written it (issue 13: a root gateway ends the processes it names) ------------


def _saved(state):
    Path(state.path).write_bytes(json.dumps({"version": 2, "data": DATA}).encode() + b"\n")
    os.chmod(state.path, 0o600)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_state_file_of_another_user_is_refused_with_one_line(state):
    _saved(state)
    os.chown(state.path, 65534, 65534)
    with pytest.raises(StartupError, match=r"belongs to uid 65534, not to this user"):
        state.read()
    assert Path(state.path).exists(), "left where it is"


def test_a_state_file_others_may_write_is_refused_with_one_line(state):
    _saved(state)
    os.chmod(state.path, 0o622)
    with pytest.raises(StartupError, match=r"is writable by other users \(mode 622\)"):
        state.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_directory_of_another_user_or_open_to_all_is_refused_unless_sticky(state):
    directory = Path(state.directory)
    os.chown(directory, 65534, 65534)
    with pytest.raises(StartupError, match=r"directory .* belongs to uid 65534"):
        state.check()
    os.chown(directory, 0, 0)
    os.chmod(directory, 0o777)
    with pytest.raises(StartupError, match=r"directory .* is writable by other users"):
        state.check()
    os.chmod(directory, 0o1777)  # as /tmp: others cannot replace this user's file
    state.check()


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero"])
def test_a_state_path_that_is_no_regular_file_is_refused_at_once(state, kind):
    """A FIFO used to hang start-up, /dev/zero to eat the memory."""
    if kind == "fifo":
        os.mkfifo(state.path)
    else:
        os.symlink("/dev/zero", state.path)
    with pytest.raises(StartupError, match=r"is not a regular file"):
        state.read()


def test_a_state_file_over_the_size_limit_is_set_aside_unread(state, monkeypatch, events):
    from nexusws.sessions import statefile

    monkeypatch.setattr(statefile, "MAX_FILE_SIZE", 1024)
    Path(state.path).write_bytes(b'{"version": 2, "data": {"x": "' + b"a" * 2000 + b'"}}\n')
    os.chmod(state.path, 0o600)
    assert state.read() is None
    assert not Path(state.path).exists() and leftovers(Path(state.path))
    assert any("over 1024" in formatEvent(e) for e in events)
