"""proxyd.accesslog: JSON lines, flushed at once or once per reactor turn, and the cached
timestamp formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from proxyd.accesslog import AccessLog, UtcMillis, json_value
from proxyd.relay.session import iso_utc


def test_a_line_without_a_clock_is_in_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.open(str(path))
    log.log({"status": 200, "uri": "/caf\u00e9", "time": None})
    assert path.read_text() == '{"status":200,"uri":"/caf\\u00e9","time":null}\n'
    log.close()


def test_lines_with_a_clock_are_flushed_together_at_the_next_turn(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    clock = MemoryReactorClock()
    log = AccessLog.open(str(path))
    for status in (200, 404, 502):
        log.log({"status": status}, clock)
    assert len(clock.getDelayedCalls()) == 1, "one flush for the turn"
    assert path.read_text() == ""
    clock.advance(0)
    assert [json.loads(line)["status"] for line in path.read_text().splitlines()] == [
        200,
        404,
        502,
    ]
    log.log({"status": 201}, clock)
    assert len(clock.getDelayedCalls()) == 1, "a new turn, a new flush"
    log.close()
    assert path.read_text().splitlines()[-1] == '{"status":201}'


def test_off_writes_nothing() -> None:
    clock = MemoryReactorClock()
    log = AccessLog.open("off")
    assert not log.enabled
    log.log({"status": 200}, clock)
    assert clock.getDelayedCalls() == []


@given(st.lists(st.floats(min_value=-1e6, max_value=4e9, allow_nan=False), max_size=50))
def test_utc_millis_is_iso_utc(moments: list[float]) -> None:
    format_time = UtcMillis()
    for seconds in moments + sorted(moments) + [m + 0.0005 for m in moments]:
        assert format_time(seconds) == iso_utc(seconds)


def test_utc_millis_carries_a_rounded_up_microsecond_into_the_second() -> None:
    format_time = UtcMillis()
    assert format_time(1.9999996) == iso_utc(1.9999996) == "1970-01-01T00:00:02.000Z"
    assert format_time(1_700_000_000.0005) == iso_utc(1_700_000_000.0005)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_json_value_is_what_the_encoder_writes(value: object) -> None:
    assert json_value(value) == json.dumps(value, separators=(",", ":"))


def test_reopen_writes_to_a_new_file_at_the_path_after_the_old_was_moved(tmp_path) -> None:
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path))
    access_log.log({"n": 1})
    path.rename(tmp_path / "access.log.1")  # what logrotate does
    access_log.log({"n": 2})  # still to the moved file
    access_log.reopen()
    access_log.log({"n": 3})
    access_log.close()
    assert (tmp_path / "access.log.1").read_text() == '{"n":1}\n{"n":2}\n'
    assert path.read_text() == '{"n":3}\n'


def test_reopen_leaves_stdout_and_off_alone_and_keeps_the_old_file_when_it_fails(
    tmp_path,
) -> None:
    AccessLog.open("off").reopen()
    stdout = AccessLog.open("-")
    stdout.reopen()
    assert stdout.enabled
    directory = tmp_path / "logs"
    directory.mkdir()
    access_log = AccessLog.open(str(directory / "access.log"))
    (directory / "access.log").rename(tmp_path / "moved.log")
    directory.rmdir()
    with pytest.raises(OSError):
        access_log.reopen()
    access_log.log({"n": 1})
    access_log.close()
    assert (tmp_path / "moved.log").read_text() == '{"n":1}\n'
