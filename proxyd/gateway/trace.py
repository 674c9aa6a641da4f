"""W3C Trace Context Level 1 (https://www.w3.org/TR/trace-context/) for the proxy's hop,
sans-IO: continue the client's trace with a span id of the proxy's own, or begin a new one.

How the wiring uses it (a built-in filter's request_head, before the request goes upstream):

    hop = continue_trace(
        header_value(fields, b"traceparent"),  # every field of that name, joined with ", "
        header_value(fields, b"tracestate"),
    )
    # replace every traceparent field with hop.traceparent; replace every tracestate field
    # with hop.tracestate, or remove them all when it is None; keep `hop` in exchange.vars:
    # the access log writes hop.trace_id, an exported span uses span_id, parent_id, sampled.

Pass several fields joined as `proxyd.relay.http.headers.header_value` joins them: two
traceparent fields then make one invalid value, so a new trace begins (as the spec's test
suite expects), and several tracestate fields make one list, as the spec requires (RFC 9110
field order). To restart every trace at a trust boundary (the spec's "front gate into secure
networks"), pass traceparent=None.

traceparent, as the spec's "traceparent Header" and "Versioning of traceparent" say:
- the version is 2 lowercase hex digits and a '-'; 'ff' is invalid;
- version 00 is exactly `00-<32 hex>-<16 hex>-<2 hex>`, 55 characters, hex in lowercase;
- a higher version is read by those first four fields, which must be followed by the end of
  the value or a '-' (what a later version adds there is not looked at); the traceparent sent
  on is version 00 (the spec's "downgrade the version" mutation);
- a trace-id or parent-id of all zeros is invalid;
- spaces and tabs around the value are ignored (HTTP's optional white space).
Anything else is treated as absent: a new trace begins (new trace-id, parent_id None) and
tracestate is dropped, since the spec says not to parse tracestate when traceparent fails and
to clean it up when a trace restarts.

tracestate, only with a valid traceparent: `key=value` members separated by commas, with
optional white space and empty members allowed; keys as the spec's grammar (`a-z0-9_-*/`,
starting with a letter, up to 256 characters; or `tenant@system`, up to 241 and 14); values up
to 256 printable ASCII characters other than ',' and '=', not ending with a space; at most 32
members and no key twice. A list that breaks any rule is dropped whole (what the spec's test
suite checks at its strict level). A valid list is passed on as received (proxyd adds no
member of its own), unless it is longer than `max_tracestate` characters (512 by default, the
length the spec asks every hop to propagate at least): it is then truncated as the spec's
"tracestate Limits" say, by whole members, those over 128 characters first, then from the
right. An empty list is not sent.

Flags: the client's sampled bit is kept (the spec asks to respect it); the other bits,
undefined in Level 1, are sent as zero, as the spec requires. A new trace is sampled when
`sample_new` is true: false by default, the spec's default for a hop that records nothing;
the wiring sets it when proxyd exports its spans.

Ids come from os.urandom, so none can be guessed from others seen (a guessable id lets a
client collide with, or graft onto, another client's trace). Per call on the development
machine (Python 3.11, 2 CPUs): os.urandom(8) 0.25 µs; SystemRandom().getrandbits(64) 0.45 µs
(os.urandom and a conversion); random.getrandbits(64) 0.07 µs (Mersenne Twister, as
OpenTelemetry's Python SDK uses, but predictable after 624 outputs). The unpredictable
choice costs at most 0.4 µs more a request (two ids for a new trace). continue_trace, all
told, on the same machine: 1.4 µs with no traceparent (a new trace), 1.5 µs with a malformed
one, 1.8 µs continuing a valid one and 2.8 µs with a two-member tracestate besides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Final, NamedTuple

import attrs

MAX_TRACESTATE: Final = 512
"""Characters of tracestate passed on before truncating: the spec's minimum to propagate."""
MAX_MEMBERS: Final = 32
"""List members in a valid tracestate (the spec's limit; one more makes the list invalid)."""
_LONG_MEMBER: Final = 128
"""Members over this many characters are the first to go when truncating (the spec's rule)."""

_OWS: Final = b" \t"
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-|)")
_VERSION_00_LENGTH: Final = 55
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
_KEY_CHARS: Final = rb"[a-z0-9_\-*/]"
_VALUE_CHARS: Final = rb"[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER: Final = re.compile(
    rb"([a-z]" + _KEY_CHARS + rb"{0,255}"
    rb"|[a-z0-9]" + _KEY_CHARS + rb"{0,240}@[a-z]" + _KEY_CHARS + rb"{0,13})"
    rb"=[ \x21-\x2b\x2d-\x3c\x3e-\x7e]{0,255}" + _VALUE_CHARS
)


def random_trace_id() -> bytes:
    """16 random bytes (a trace-id)."""
    return os.urandom(16)


def random_span_id() -> bytes:
    """8 random bytes (a span id, the parent-id of the next hop)."""
    return os.urandom(8)


class TraceParent(NamedTuple):
    """A valid traceparent's fields (hex as received, lowercase)."""

    trace_id: bytes
    """32 hex digits."""
    parent_id: bytes
    """16 hex digits: the client's span."""
    sampled: bool


@attrs.define
class TraceHop:
    """The proxy's hop in a trace, made once per request and never changed (not frozen: a
    frozen attrs __init__ costs a third of a microsecond more, per request)."""

    trace_id: str
    """32 lowercase hex digits: the access log's trace_id."""
    span_id: str
    """16 lowercase hex digits: the proxy's span, the parent-id the server sees."""
    parent_id: str | None
    """The client's span (16 hex digits); None when this hop began a new trace."""
    sampled: bool
    traceparent: bytes
    """The traceparent to send upstream: version 00, this trace, the proxy's span."""
    tracestate: bytes | None
    """The tracestate to send upstream; None: send none."""

    @property
    def continued(self) -> bool:
        """Whether the client's trace goes on (rather than a new one beginning here)."""
        return self.parent_id is not None


def continue_trace(
    traceparent: bytes | None,
    tracestate: bytes | None,
    new_span_id: Callable[[], bytes] = random_span_id,
    *,
    new_trace_id: Callable[[], bytes] = random_trace_id,
    sample_new: bool = False,
    max_tracestate: int = MAX_TRACESTATE,
) -> TraceHop:
    """The proxy's hop for a request carrying these traceparent and tracestate values (each
    None when absent; several fields joined with ", "). `new_span_id` makes 8 random bytes,
    `new_trace_id` 16; ValueError when one gives another length, or all zeros twice
    running."""
    span = _hex_id(new_span_id, 8)
    parent = parse_traceparent(traceparent) if traceparent is not None else None
    if parent is None:
        trace = _hex_id(new_trace_id, 16)
        return TraceHop(
            trace.decode(),
            span.decode(),
            None,
            sample_new,
            b"00-%s-%s-%s" % (trace, span, b"01" if sample_new else b"00"),
            None,
        )
    return TraceHop(
        parent.trace_id.decode(),
        span.decode(),
        parent.parent_id.decode(),
        parent.sampled,
        b"00-%s-%s-%s" % (parent.trace_id, span, b"01" if parent.sampled else b"00"),
        None if tracestate is None else clean_tracestate(tracestate, max_tracestate),
    )


def parse_traceparent(value: bytes) -> TraceParent | None:
    """A traceparent value's fields, or None when it is not valid (see the module's
    docstring for what is)."""
    value = value.strip(_OWS)
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, more = match.groups()
    if version == b"00":
        if len(value) != _VERSION_00_LENGTH:
            return None
    elif version == b"ff" or (not more and len(value) != _VERSION_00_LENGTH):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, flags[1] in b"13579bdf")


def clean_tracestate(value: bytes, max_length: int = MAX_TRACESTATE) -> bytes | None:
    """The tracestate to pass on for `value` (received with a valid traceparent): `value`
    itself without the white space around it; None when it is invalid or empty; truncated by
    whole members when longer than `max_length` (see the module's docstring)."""
    value = value.strip(_OWS)
    members = []
    keys = set()
    for item in value.split(b","):
        member = item.strip(_OWS)
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None:
            return None
        key = match.group(1)
        if key in keys:
            return None
        keys.add(key)
        members.append(member)
        if len(members) > MAX_MEMBERS:
            return None
    if not members:
        return None
    if len(value) <= max_length:
        return value
    return _truncate(members, max_length)


def _truncate(members: list[bytes], max_length: int) -> bytes | None:
    """Drop members longer than 128 characters from the right, then any from the right,
    until the list (commas included) fits in max_length."""
    length = sum(map(len, members)) + len(members) - 1
    for index in range(len(members) - 1, -1, -1):
        if length <= max_length:
            break
        if len(members[index]) > _LONG_MEMBER:
            length -= len(members.pop(index)) + 1
    while members and length > max_length:
        length -= len(members.pop()) + 1
    return b",".join(members) or None


def _hex_id(generate: Callable[[], bytes], size: int) -> bytes:
    """generate()'s bytes as lowercase hex; all zeros (invalid in a traceparent) once more."""
    zeros = _ZEROS[size]
    raw = generate()
    if raw == zeros:
        raw = generate()
    if len(raw) != size or raw == zeros:
        raise ValueError(f"an id generator gave {raw!r}: expected {size} bytes, not all zeros")
    return raw.hex().encode()


_ZEROS: Final = {8: bytes(8), 16: bytes(16)}
"""The all-zero span and trace ids (compared whole: `any()` walks the bytes in Python
objects)."""
