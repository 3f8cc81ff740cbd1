"""Secrets never reach log lines: nexusws.logs.redact and printable."""

from nexusws.logs import printable, redact


def test_release_tokens_in_the_path_are_masked():
    assert redact("/v1/release/5121d252-ce4c-4172-a1ca-9cbb2e8f026c") == "/v1/release/***"
    assert redact(b"/v1/release/abc?security_token=k") == "/v1/release/***?security_token=***"


def test_other_paths_are_left_alone():
    assert redact("/v1/status") == "/v1/status"
    assert redact("/files/release/notes.txt") == "/files/release/notes.txt"


def test_secret_query_values_are_masked_under_any_spelling_of_their_name():
    assert redact("/ws?token=T&path=websockify") == "/ws?token=***&path=websockify"
    assert redact("/x?t%6Fken=T;password=p") == "/x?t%6Fken=***;password=***"


def test_printable_keeps_one_line():
    assert "\n" not in printable("a\nb\r\x1b[31m")
    assert len(printable("x" * 1000)) <= 203
