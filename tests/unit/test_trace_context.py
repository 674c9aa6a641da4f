"""proxyd.gateway.trace: W3C Trace Context continued, begun, and every malformed traceparent
treated as absent (the cases of the spec's own test suite, w3c/trace-context test/test.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.gateway.trace import (
    MAX_TRACESTATE,
    TraceHop,
    clean_tracestate,
    continue_trace,
    parse_traceparent,
)

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
VALID = f"00-{TRACE}-{PARENT}-01".encode()
SPAN = bytes.fromhex("00f067aa0ba902b7")
NEW_TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
_SENT = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def ids(*values: bytes) -> Callable[[], bytes]:
    """A generator giving `values` in turn (and failing the test past them)."""
    it: Iterator[bytes] = iter(values)
    return lambda: next(it)


def hop(
    traceparent: bytes | None,
    tracestate: bytes | None = None,
    *,
    sample_new: bool = False,
    max_tracestate: int = MAX_TRACESTATE,
) -> TraceHop:
    """continue_trace with known ids: span SPAN, and NEW_TRACE for a new trace."""
    return continue_trace(
        traceparent,
        tracestate,
        ids(SPAN),
        new_trace_id=ids(NEW_TRACE),
        sample_new=sample_new,
        max_tracestate=max_tracestate,
    )


def assert_new_trace(result: TraceHop) -> None:
    assert result.trace_id == NEW_TRACE.hex()
    assert result.parent_id is None
    assert not result.continued
    assert result.tracestate is None
    assert result.traceparent == f"00-{NEW_TRACE.hex()}-{SPAN.hex()}-00".encode()


def test_a_valid_traceparent_is_continued_with_the_proxys_span_id() -> None:
    result = hop(VALID, b"congo=t61rcWkgMzE")
    assert result.trace_id == TRACE
    assert result.span_id == SPAN.hex()
    assert result.parent_id == PARENT
    assert result.continued
    assert result.sampled
    assert result.traceparent == f"00-{TRACE}-{SPAN.hex()}-01".encode()
    assert result.tracestate == b"congo=t61rcWkgMzE"


def test_the_sampled_flag_is_kept_and_the_undefined_flags_are_sent_as_zero() -> None:
    for flags, sampled, sent in [("00", False, "00"), ("01", True, "01"), ("03", True, "01")]:
        result = hop(f"00-{TRACE}-{PARENT}-{flags}".encode())
        assert result.sampled is sampled
        assert result.traceparent.endswith(f"-{sent}".encode())
    result = hop(f"00-{TRACE}-{PARENT}-fe".encode())
    assert not result.sampled
    assert result.traceparent.endswith(b"-00")


def test_an_absent_traceparent_begins_a_new_trace_and_drops_tracestate() -> None:
    assert_new_trace(hop(None))
    assert_new_trace(hop(None, b"foo=1"))


def test_a_new_trace_is_sampled_only_when_asked() -> None:
    result = hop(None, sample_new=True)
    assert result.sampled
    assert result.traceparent.endswith(b"-01")


@pytest.mark.parametrize(
    "value",
    [
        # version
        f".0-{TRACE}-{PARENT}-01",
        f"0.-{TRACE}-{PARENT}-01",
        f"000-{TRACE}-{PARENT}-01",
        f"0000-{TRACE}-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01",
        # version 00 is exactly 55 characters
        f"00-{TRACE}-{PARENT}-01.",
        f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
        # trace-id
        f"00-.{TRACE[1:]}-{PARENT}-01",
        f"00-{TRACE[:-1]}.-{PARENT}-01",
        f"00-{TRACE}3-{PARENT}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        # parent-id
        f"00-{TRACE}-.{PARENT[1:]}-01",
        f"00-{TRACE}-{PARENT[:-1]}.-01",
        f"00-{TRACE}-{PARENT}7-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        # trace-flags
        f"00-{TRACE}-{PARENT}-.0",
        f"00-{TRACE}-{PARENT}-0.",
        f"00-{TRACE}-{PARENT}-001",
        f"00-{TRACE}-{PARENT}-1",
        # separators, emptiness, two fields joined
        f"00_{TRACE}_{PARENT}_01",
        f"00-{TRACE}{PARENT}-01",
        "",
        " ",
        "garbage",
        f"00-{TRACE}-{PARENT}-01, 00-{TRACE[::-1]}-{PARENT}-01",
    ],
)
def test_a_malformed_traceparent_is_treated_as_absent(value: str) -> None:
    assert parse_traceparent(value.encode()) is None
    assert_new_trace(hop(value.encode(), b"foo=1"))


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"cc-{'0' * 32}-{PARENT}-01",
    ],
)
def test_all_zero_ids_begin_a_new_trace(value: str) -> None:
    assert_new_trace(hop(value.encode(), b"foo=1"))


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE.upper().replace('1', 'A')}-{PARENT}-01",
        f"00-{TRACE}-{PARENT.replace('1', 'A')}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"0A-{TRACE}-{PARENT}-01",
        f"00-4BF92F3577B34DA6A3CE929D0E0E4736-{PARENT}-01",
    ],
)
def test_uppercase_hex_is_invalid(value: str) -> None:
    assert_new_trace(hop(value.encode()))


def test_version_ff_is_invalid() -> None:
    assert parse_traceparent(f"ff-{TRACE}-{PARENT}-01".encode()) is None


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
        f"01-{TRACE}-{PARENT}-09-",
    ],
)
def test_a_higher_version_is_read_by_its_first_four_fields_and_sent_as_version_00(
    value: str,
) -> None:
    result = hop(value.encode(), b"foo=1")
    assert result.trace_id == TRACE
    assert result.parent_id == PARENT
    assert result.sampled
    assert result.traceparent == f"00-{TRACE}-{SPAN.hex()}-01".encode()
    assert result.tracestate == b"foo=1"


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",
        f"cc-{TRACE}-{PARENT}-0",
        f"cc-{TRACE}-{PARENT}-011",
        f"cc-{TRACE}-{PARENT}",
    ],
)
def test_a_higher_version_whose_flags_are_not_followed_by_a_dash_or_the_end_is_invalid(
    value: str,
) -> None:
    assert_new_trace(hop(value.encode()))


@pytest.mark.parametrize("value", [f" {VALID.decode()}", f"\t{VALID.decode()} \t"])
def test_white_space_around_traceparent_is_ignored(value: str) -> None:
    assert hop(value.encode()).trace_id == TRACE


def test_tracestate_is_passed_on_as_received() -> None:
    for value in [
        b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        b"foo=1 \t , \t bar=2, \t baz=3",
        b"foo=1,,bar=2",
        b"foo= 1",
        b"foo=1, bar=2, rojo=1, congo=2, baz=3",  # several fields joined with ", "
    ]:
        assert hop(VALID, value).tracestate == value
    assert hop(VALID, b"\t foo=1 \t").tracestate == b"foo=1"


def test_an_empty_tracestate_is_not_sent() -> None:
    for value in [b"", b"  ", b",", b" , \t,"]:
        assert hop(VALID, value).tracestate is None


def test_tracestate_of_32_members_passes_and_33_is_dropped() -> None:
    members = [f"b{i:02}={i:02}".encode() for i in range(1, 34)]
    assert hop(VALID, b",".join(members[:32])).tracestate == b",".join(members[:32])
    assert hop(VALID, b",".join(members)).tracestate is None


@pytest.mark.parametrize(
    "value",
    [
        b"foo=1,foo=1",
        b"foo=1,foo=2",
        b"foo=1, foo=2",
        b"foo =1",
        b"FOO=1",
        b"foo.bar=1",
        b"1foo=1",
        b"foo@=1,bar=2",
        b"@foo=1,bar=2",
        b"foo@@bar=1,bar=2",
        b"foo@bar@baz=1,bar=2",
        b"foo=bar=baz",
        b"foo=,bar=3",
        b"foo",
        b"=1",
        b"foo=1,bar=2\x7f",
        "foo=caf\u00e9".encode(),
        b"foo=1\nbar=2",
        b"foo=1," + b"z" * 257 + b"=1",
        b"foo=1," + b"t" * 242 + b"@v=1",
        b"foo=1,t@" + b"v" * 15 + b"=1",
        b"foo=" + b"v" * 257,
    ],
)
def test_an_invalid_tracestate_is_dropped_whole(value: bytes) -> None:
    result = hop(VALID, value, max_tracestate=1 << 20)
    assert result.trace_id == TRACE, "a bad tracestate does not affect traceparent"
    assert result.tracestate is None


def test_tracestate_keys_and_values_at_their_limits_pass() -> None:
    key = "".join(map(chr, range(0x61, 0x7B))) + "0123456789_-*/"
    value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
    for item in [
        f"{key}={value}",
        f"{key}@a-z0-9_-*/={value}",
        "z" * 256 + "=1",
        "t" * 241 + "@" + "v" * 14 + "=1",
        "0tenant@system=1",
        "foo=" + "v" * 256,
    ]:
        text = f"foo1=1,{item}".encode()
        assert hop(VALID, text, max_tracestate=1 << 20).tracestate == text


def test_a_long_tracestate_loses_its_long_members_first_then_members_from_the_right() -> None:
    long_a = b"a=" + b"x" * 200
    long_b = b"b=" + b"y" * 200
    short = [f"s{i:02}={'v' * 40}".encode() for i in range(10)]  # 44 characters each
    value = b",".join([short[0], long_a, short[1], long_b, *short[2:]])
    assert len(value) > MAX_TRACESTATE
    result = clean_tracestate(value)
    assert result is not None
    # the two long members go first (from the right), then short ones from the right
    assert result == b",".join(short[:10])
    assert len(result) <= MAX_TRACESTATE
    assert clean_tracestate(value, max_length=300) == b",".join(short[:6])
    assert clean_tracestate(b"a=" + b"x" * 250, max_length=100) is None


def test_a_tracestate_within_the_limit_keeps_its_white_space() -> None:
    value = b"foo=1 , bar=2"
    assert clean_tracestate(value, max_length=len(value)) == value


_MEMBER = st.builds(
    lambda key, value: f"{key}={value}".encode(),
    st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True),
    st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,150}", fullmatch=True),
)


@given(st.lists(_MEMBER, max_size=32, unique_by=lambda m: m.split(b"=")[0]), st.integers(0, 900))
def test_a_valid_tracestate_is_passed_whole_or_truncated_to_fit(
    members: list[bytes], limit: int
) -> None:
    value = b",".join(members)
    result = clean_tracestate(value, limit)
    if not members:
        assert result is None
    elif len(value) <= limit:
        assert result == value
    else:
        kept = [] if result is None else result.split(b",")
        assert len(result or b"") <= limit
        assert kept == [m for m in members if m in kept], "members keep their order"
        dropped = [m for m in members if m not in kept]
        assert dropped, "something had to go"
        if any(len(m) <= 128 for m in dropped):
            assert all(len(m) <= 128 for m in kept), "long members go first"


@given(st.binary(max_size=80), st.none() | st.binary(max_size=80))
def test_any_bytes_give_a_valid_traceparent_to_send(
    traceparent: bytes, state: bytes | None
) -> None:
    result = continue_trace(traceparent, state)
    assert _SENT.fullmatch(result.traceparent)
    assert result.trace_id != "0" * 32
    assert result.traceparent[3:35].decode() == result.trace_id
    assert result.traceparent[36:52].decode() == result.span_id
    if result.parent_id is None:
        assert result.tracestate is None


_HEX = "0123456789abcdef"


@given(
    st.text(_HEX, min_size=32, max_size=32).filter(lambda t: t != "0" * 32),
    st.text(_HEX, min_size=16, max_size=16).filter(lambda t: t != "0" * 16),
    st.text(_HEX, min_size=2, max_size=2),
)
def test_every_valid_version_00_traceparent_is_continued(
    trace: str, parent: str, flags: str
) -> None:
    result = continue_trace(f"00-{trace}-{parent}-{flags}".encode(), None)
    assert (result.trace_id, result.parent_id) == (trace, parent)
    assert result.sampled is bool(int(flags, 16) & 1)
    assert re.fullmatch("[0-9a-f]{16}", result.span_id)


def test_an_all_zero_id_from_the_generator_is_drawn_again() -> None:
    result = continue_trace(None, None, ids(bytes(8), SPAN), new_trace_id=ids(bytes(16), NEW_TRACE))
    assert result.span_id == SPAN.hex()
    assert result.trace_id == NEW_TRACE.hex()


def test_a_generator_giving_zeros_twice_or_a_wrong_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        continue_trace(VALID, None, ids(bytes(8), bytes(8)))
    with pytest.raises(ValueError, match="16 bytes"):
        continue_trace(None, None, ids(SPAN), new_trace_id=ids(SPAN))


def test_the_default_generators_give_a_new_span_each_call() -> None:
    spans = {continue_trace(VALID, None).span_id for _ in range(100)}
    traces = {continue_trace(None, None).trace_id for _ in range(100)}
    assert len(spans) == 100
    assert len(traces) == 100
