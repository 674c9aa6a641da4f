"""JSON body transformations by JSON Pointer (RFC 6901), sans-IO: set, remove, rename (move),
wrap and unwrap, applied in the order written to a whole JSON document.

One operation a line, as a multi-line config value (parse_json_ops):

    set /meta/source "gateway"       ; VALUE is JSON: the rest of the line
    remove /password
    rename /user/name /user/login    ; a move: the value leaves /user/name for /user/login
    wrap data                        ; the document becomes {"data": <the document>}
    unwrap /result                   ; the document becomes the value at /result

Pointers are RFC 6901's: "/a/b" is key b of key a, "~1" stands for '/' and "~0" for '~' in a
key, "/items/0" is an array's first element, and "-" as the last token of `set` (or rename's
target) appends to an array. A pointer, or wrap's key, containing white space is written as a
JSON string ("/first name"); so is the whole document, "" (only `set` may target it: it
replaces the document). Operations apply in the order written, each to the result of the one
before (as JSON Patch does), not grouped by kind: `wrap` then `set /data/x` differs from the
reverse. (Query parameter operations, proxyd.gateway.query_ops, are grouped in Kong's order.)

What each does with the document at hand:
- `set`: replaces the value at the pointer, or adds it. Missing objects on the way are
  created, and a null on the way counts as missing, as jq's `.a.b = v` does: "set this
  field" in a gateway's config means the field is there afterwards, where JSON Patch's `add`
  would refuse a missing parent. In an array, an index names an existing element (replaced)
  and "-" appends. A pointer that goes through a string, number or boolean, or through an
  array by a token that is not one of its indexes, cannot be applied: CannotApply.
- `remove`: deletes the value at the pointer; nothing there (or a path through a scalar) is
  not an error: the operation does nothing (the value is absent, which is what was asked).
- `rename FROM TO`: moves the value at FROM to TO (JSON Patch's `move`): nothing at FROM does
  nothing; TO is set as `set` does. TO may not be FROM, nor inside it.
- `wrap KEY`: the document becomes {KEY: document}.
- `unwrap POINTER`: the document becomes the value at POINTER; nothing there does nothing.

apply(ops, body, max_size): how the wiring (proxyd.filters.json_body) uses it. The built-in
filter sets buffer_request_body (or buffer_response_body) to the configured bound and takes
part only in bodies whose Content-Type is application/json (or +json): the chain answers 413
(or 502) for a longer one before apply is called, streams every other body untouched, and
sends the result with its new Content-Length. Then:

    try:
        data = apply(ops, data, bound)
    except NotJson:
        pass                                  # labelled JSON but not JSON: passed untouched
    except JsonBodyError as e:                # BodyTooLarge, CannotApply
        raise Rejected(Reject(e.request_status, str(e)))   # in response_body: e.response_status

The intended policy: a body that is not JSON passes untouched (a transformation of a JSON
document has nothing to act on; the server sees what the client sent, as without proxyd); a
JSON body over the bound is an error (413 for a request, 502 for a response); a document the
operations cannot be applied to is answered 400 (request) or 502 (response), never sent on
half-transformed. A route that relies on a `remove` for safety (say, of a field the client
must not set) may prefer to refuse non-JSON bodies too: NotJson is its own exception for that.
When every operation did nothing (a `remove` of an absent key, say), apply returns the body
it was given, byte for byte; otherwise the document is serialized compactly, in UTF-8.

Numbers are read and written by Python's json: integers exactly, floats as their shortest
repr (1.50 becomes 1.5, 1E2 becomes 100.0). A float beyond the double range (1e400) and a
document nested deeper than Python's recursion allows are CannotApply; NaN and Infinity,
which are not JSON, make a body NotJson. Of a key written twice in an object, the last wins.

Cost, measured on the development machine (Python 3.11, 2 CPUs): 7.6 µs for a `set` and a
`remove` on a 66-byte body; 0.64 ms on a 29 KiB one (json.loads 0.24 ms, json.dumps 0.40 ms:
about 22 µs a KiB, all of it in the C json module), 0.24 ms when nothing changed (no dumps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Final, NoReturn

import attrs

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.scalars import collect, raise_all

OPERATIONS: Final = ("set", "remove", "rename", "wrap", "unwrap")
USAGE: Final = (
    "'set POINTER VALUE', 'remove POINTER', 'rename POINTER NEW_POINTER', 'wrap KEY' or "
    "'unwrap POINTER'"
)
_ARRAY_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE: Final = re.compile(r"~(?![01])")
_COMPACT: Final = (",", ":")


class JsonBodyError(Exception):
    """A JSON body the operations cannot be applied to, with the status to answer: the
    request's (413, 400) or the response's (502)."""

    request_status: ClassVar[int] = 400
    response_status: ClassVar[int] = 502


class BodyTooLarge(JsonBodyError):
    """The body is longer than the bound."""

    request_status = 413


class CannotApply(JsonBodyError):
    """An operation would have to go through a scalar or past an array's end, or the
    document is one proxyd cannot read or write back (an integer of more than 4300 digits, a
    float beyond the double range, nesting deeper than Python's recursion limit)."""


class NotJson(Exception):
    """The body is not a JSON text: by the intended policy, passed on untouched."""


@attrs.frozen
class Pointer:
    """A JSON Pointer (RFC 6901): its reference tokens, unescaped; () is the document."""

    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pointer:
        """Raises Invalid for text that is not a JSON Pointer."""
        if text == "":
            return cls(())
        if not text.startswith("/"):
            raise Invalid(
                "a JSON Pointer: '' or starting with '/'", repr(text), f"did you mean '/{text}'?"
            )
        if _BAD_ESCAPE.search(text):
            raise Invalid(
                "a JSON Pointer whose '~' is followed by 0 or 1 ('~0' is '~', '~1' is '/')",
                repr(text),
            )
        return cls(
            tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))
        )

    def __str__(self) -> str:
        return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in self.tokens)

    def contains(self, other: Pointer) -> bool:
        """Whether `other` is inside the value this points to (a proper prefix of it)."""
        return len(other.tokens) > len(self.tokens) and (
            other.tokens[: len(self.tokens)] == self.tokens
        )


@attrs.frozen
class SetOp:
    """`set POINTER VALUE`."""

    pointer: Pointer
    value_json: str
    """The value, as compact JSON text: each apply makes a fresh copy of it to insert."""

    def transform(self, doc: Any) -> tuple[Any, bool]:
        return _set(doc, self.pointer, json.loads(self.value_json)), True

    def __str__(self) -> str:
        return f"set {_word(str(self.pointer))} {self.value_json}"


def _inside(op: Any, attribute: attrs.Attribute[Pointer], pointer: Pointer) -> None:
    if not pointer.tokens:
        raise ValueError(f"{type(op).__name__}.{attribute.name} is inside the document, not ''")


@attrs.frozen
class RemoveOp:
    """`remove POINTER`."""

    pointer: Pointer = attrs.field(validator=_inside)

    def transform(self, doc: Any) -> tuple[Any, bool]:
        parent, token = _find_parent(doc, self.pointer.tokens)
        if isinstance(parent, dict):
            if token in parent:
                del parent[token]
                return doc, True
        elif isinstance(parent, list):
            index = _index(parent, token)
            if index is not None:
                del parent[index]
                return doc, True
        return doc, False

    def __str__(self) -> str:
        return f"remove {_word(str(self.pointer))}"


@attrs.frozen
class RenameOp:
    """`rename POINTER NEW_POINTER`: a move."""

    source: Pointer = attrs.field(validator=_inside)
    target: Pointer = attrs.field(validator=_inside)

    def __attrs_post_init__(self) -> None:
        if self.source == self.target or self.source.contains(self.target):
            raise ValueError(f"rename to {self.target}, which is not outside {self.source}")

    def transform(self, doc: Any) -> tuple[Any, bool]:
        parent, token = _find_parent(doc, self.source.tokens)
        if isinstance(parent, dict):
            if token not in parent:
                return doc, False
            value = parent.pop(token)
        elif isinstance(parent, list):
            index = _index(parent, token)
            if index is None:
                return doc, False
            value = parent.pop(index)
        else:
            return doc, False
        return _set(doc, self.target, value), True

    def __str__(self) -> str:
        return f"rename {_word(str(self.source))} {_word(str(self.target))}"


@attrs.frozen
class WrapOp:
    """`wrap KEY`."""

    key: str

    def transform(self, doc: Any) -> tuple[Any, bool]:
        return {self.key: doc}, True

    def __str__(self) -> str:
        return f"wrap {_word(self.key)}"


@attrs.frozen
class UnwrapOp:
    """`unwrap POINTER`."""

    pointer: Pointer = attrs.field(validator=_inside)

    def transform(self, doc: Any) -> tuple[Any, bool]:
        parent, token = _find_parent(doc, self.pointer.tokens)
        if isinstance(parent, dict):
            if token in parent:
                return parent[token], True
        elif isinstance(parent, list):
            index = _index(parent, token)
            if index is not None:
                return parent[index], True
        return doc, False

    def __str__(self) -> str:
        return f"unwrap {_word(str(self.pointer))}"


JsonOp = SetOp | RemoveOp | RenameOp | WrapOp | UnwrapOp
"""One operation; `transform(doc)` gives the new document and whether anything changed
(it may change `doc` in place); str() is its config line."""


def parse_json_ops(lines: Iterable[str]) -> tuple[JsonOp, ...]:
    """A config value's lines, one operation a line (blank lines skipped) -> the operations.
    Raises Invalid naming what is wrong (`value_line`: the line's index in `lines`), or
    proxyd.config.scalars.Invalids with one Invalid per bad line when there are several."""
    ops: list[JsonOp] = []
    errors: list[Invalid] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            ops.append(parse_json_op(line))
        except Invalid as e:
            collect(errors, index, e)
    raise_all(errors)
    return tuple(ops)


def parse_json_op(line: str) -> JsonOp:
    """One operation (see the module's docstring); raises Invalid."""
    op, rest = _split_word(line.strip())
    if op not in OPERATIONS:
        raise Invalid(f"{one_of(OPERATIONS)} ({USAGE})", repr(op), did_you_mean(op, OPERATIONS))
    what = "a key" if op == "wrap" else "a JSON Pointer"
    first, rest = _argument(rest, f"{what} after '{op}'")
    if op == "set":
        pointer = Pointer.parse(first)
        if not rest:
            raise Invalid(f"a JSON value after 'set {_word(first)}'", "nothing")
        return SetOp(pointer, _json_value(rest))
    if op == "rename":
        source = Pointer.parse(first)
        second, rest = _argument(rest, f"the new JSON Pointer after 'rename {_word(first)}'")
        _nothing_after(op, rest)
        target = Pointer.parse(second)
        if not source.tokens:
            raise Invalid(
                "a pointer inside the document after 'rename'",
                "'' (the whole document)",
                "'wrap' puts the whole document under a key",
            )
        if not target.tokens:
            raise Invalid(
                f"a new pointer inside the document after 'rename {_word(first)}'",
                "'' (the whole document)",
                f"'unwrap {_word(first)}' makes that value the whole document",
            )
        if source == target or source.contains(target):
            raise Invalid(
                "a new pointer other than the renamed one and outside it",
                f"{_word(second)} (renaming {_word(first)})",
            )
        return RenameOp(source, target)
    _nothing_after(op, rest)
    if op == "wrap":
        return WrapOp(first)
    pointer = Pointer.parse(first)
    if not pointer.tokens:
        raise Invalid(f"a pointer inside the document after '{op}'", "'' (the whole document)")
    return RemoveOp(pointer) if op == "remove" else UnwrapOp(pointer)


def apply(ops: Sequence[JsonOp], body: bytes, max_size: int) -> bytes:
    """`body` transformed by `ops`, in order (see the module's docstring). Raises
    BodyTooLarge for a body longer than max_size, NotJson for one that is not JSON,
    CannotApply for a document the operations cannot go through. Returns `body` itself when
    there are no operations or none changed anything."""
    if not ops:
        return body
    if len(body) > max_size:
        raise BodyTooLarge(f"a JSON body of {len(body)} bytes, over the bound of {max_size}")
    try:
        doc = json.loads(body, parse_constant=_not_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NotJson(f"not JSON ({e})") from None
    except (ValueError, RecursionError) as e:  # an integer too long for int(), too deep
        raise CannotApply(f"a JSON document proxyd cannot read ({e})") from None
    changed = False
    for op in ops:
        doc, did = op.transform(doc)
        changed = changed or did
    if not changed:
        return body
    return _dumps(doc)


def _set(doc: Any, pointer: Pointer, value: Any) -> Any:
    """doc with `value` at `pointer` (changed in place unless pointer is the document)."""
    tokens = pointer.tokens
    if not tokens:
        return value
    node = doc
    for depth, token in enumerate(tokens[:-1]):
        if isinstance(node, dict):
            child = node.get(token)
            if child is None:
                child = node[token] = {}
            node = child
        elif isinstance(node, list):
            index = _index(node, token)
            if index is None:
                _cannot(pointer, depth, node, token)
            node = node[index]
        else:
            _cannot(pointer, depth, node, token)
    last = tokens[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last == "-":
        node.append(value)
    elif isinstance(node, list) and (index := _index(node, last)) is not None:
        node[index] = value
    else:
        _cannot(pointer, len(tokens) - 1, node, last)
    return doc


def _find_parent(doc: Any, tokens: tuple[str, ...]) -> tuple[Any, str]:
    """The container the last token applies to and that token; (None, "") when the path
    leads nowhere (only the caller decides what an absent value means)."""
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                return None, ""
            node = node[token]
        elif isinstance(node, list):
            index = _index(node, token)
            if index is None:
                return None, ""
            node = node[index]
        else:
            return None, ""
    return node, tokens[-1]


def _index(array: list[Any], token: str) -> int | None:
    """The element `token` names in `array` (RFC 6901: digits without a leading zero)."""
    if _ARRAY_INDEX.fullmatch(token) and (index := int(token)) < len(array):
        return index
    return None


def _cannot(pointer: Pointer, depth: int, node: Any, token: str) -> NoReturn:
    at = str(Pointer(pointer.tokens[:depth])) or "the document"
    if isinstance(node, list):
        why = f"{at} is an array of {len(node)} and has no element {token!r}"
    else:
        why = f"{at} is {_kind(node)}, not an object or array"
    raise CannotApply(f"cannot set {pointer}: {why}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a number"


def _dumps(doc: Any) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=_COMPACT, allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (\ud800 in the input): escape it again
        return json.dumps(doc, separators=_COMPACT, allow_nan=False).encode()
    except (ValueError, RecursionError) as e:  # 1e400 read as inf; wrapped past the limit
        raise CannotApply(f"a JSON document that cannot be written back ({e})") from None


def _not_json(constant: str) -> NoReturn:
    raise NotJson(f"not JSON ({constant} is not a JSON number)")


def _argument(text: str, what: str) -> tuple[str, str]:
    """The first argument of `text` (a word, or a JSON string) and the rest."""
    if not text:
        raise Invalid(what, "nothing")
    if text.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as e:
            raise Invalid(f"{what} (a JSON string)", f"{text!r} ({e.msg})") from None
        return value, text[end:].strip()
    return _split_word(text)


def _split_word(text: str) -> tuple[str, str]:
    """The first word of `text` (stripped) and the rest, stripped."""
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def _nothing_after(op: str, rest: str) -> None:
    if rest:
        hint = 'write a pointer or key with spaces as a JSON string: "/first name"'
        raise Invalid(f"nothing more after '{op}' and its argument", repr(rest), hint)


def _json_value(text: str) -> str:
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, NotJson) as e:
        hint = f'a string is quoted: "{text}"' if text[0].isalpha() and '"' not in text else None
        raise Invalid("a JSON value", f"{text!r} ({e})", hint) from None
    return json.dumps(value, ensure_ascii=False, separators=_COMPACT)


def _word(text: str) -> str:
    """An argument as it is written in a config line."""
    if text and not any(ch.isspace() for ch in text) and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)
