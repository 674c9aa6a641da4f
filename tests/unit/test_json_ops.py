"""proxyd.gateway.json_ops: JSON Pointer operations parsed from config lines and applied to
JSON bodies, and the typed errors that say what the caller answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.errors import Invalid
from proxyd.config.scalars import Invalids
from proxyd.gateway.json_ops import (
    BodyTooLarge,
    CannotApply,
    JsonBodyError,
    NotJson,
    Pointer,
    RemoveOp,
    RenameOp,
    SetOp,
    UnwrapOp,
    WrapOp,
    apply,
    parse_json_op,
    parse_json_ops,
)

BOUND = 1 << 20


def run(lines: list[str], doc: Any) -> Any:
    """The document `lines` make of `doc`."""
    return json.loads(apply(parse_json_ops(lines), json.dumps(doc).encode(), BOUND))


# Parsing.


def test_each_operation_parses_to_its_value() -> None:
    assert parse_json_ops(
        [
            'set /meta/source "gateway"',
            "remove /password",
            "rename /user/name /user/login",
            "wrap data",
            "unwrap /result",
        ]
    ) == (
        SetOp(Pointer(("meta", "source")), '"gateway"'),
        RemoveOp(Pointer(("password",))),
        RenameOp(Pointer(("user", "name")), Pointer(("user", "login"))),
        WrapOp("data"),
        UnwrapOp(Pointer(("result",))),
    )


def test_pointers_unescape_tilde_and_slash_in_that_order() -> None:
    assert Pointer.parse("/a~1b/m~0n/~01") == Pointer(("a/b", "m~n", "~1"))
    assert Pointer.parse("") == Pointer(())
    assert Pointer.parse("/") == Pointer(("",))
    assert Pointer.parse("/items/0/-") == Pointer(("items", "0", "-"))


@given(st.lists(st.text(max_size=8), max_size=5))
def test_a_pointer_written_back_parses_to_the_same_tokens(tokens: list[str]) -> None:
    pointer = Pointer(tuple(tokens))
    assert Pointer.parse(str(pointer)) == pointer


def test_a_pointer_or_key_with_spaces_is_written_as_a_json_string() -> None:
    assert parse_json_op('set "/first name" {"a": [1, 2]}') == SetOp(
        Pointer(("first name",)), '{"a":[1,2]}'
    )
    assert parse_json_op('wrap "the data"') == WrapOp("the data")
    assert parse_json_op('set "" []') == SetOp(Pointer(()), "[]")
    assert parse_json_op("set\t/a\t 1 ") == SetOp(Pointer(("a",)), "1")


@pytest.mark.parametrize(
    "line",
    [
        'set /meta/source "gateway"',
        'set "/first name" {"a":[1,"\u00e9"]}',
        'set "" null',
        "remove /a~1b",
        'rename /a "/b c"',
        'wrap "the data"',
        "wrap data",
        "unwrap /result/0",
    ],
)
def test_an_operation_written_back_is_the_same_operation(line: str) -> None:
    op = parse_json_op(line)
    assert parse_json_op(str(op)) == op


@pytest.mark.parametrize(
    ("line", "expected", "hint"),
    [
        ("sett /a 1", "'set', 'remove'", "did you mean 'set'?"),
        ("set", "a JSON Pointer after 'set'", None),
        ("set a 1", "a JSON Pointer: '' or starting with '/'", "did you mean '/a'?"),
        ("set /a~2 1", "'~' is followed by 0 or 1", None),
        ("set /a", "a JSON value after 'set /a'", None),
        ("set /a gateway", "a JSON value", 'a string is quoted: "gateway"'),
        ("set /a NaN", "a JSON value", None),
        ("set /a [1,", "a JSON value", None),
        ('set "/a 1', "a JSON Pointer after 'set' (a JSON string)", None),
        ("remove", "a JSON Pointer after 'remove'", None),
        ('remove ""', "a pointer inside the document after 'remove'", None),
        ("remove /a /b", "nothing more after 'remove'", None),
        ("remove /first name", "nothing more after 'remove'", None),
        ('unwrap ""', "a pointer inside the document after 'unwrap'", None),
        ("rename /a", "the new JSON Pointer after 'rename /a'", None),
        ("rename /a /a", "a new pointer other than the renamed one", None),
        ("rename /a /a/b", "a new pointer other than the renamed one and outside it", None),
        ('rename "" /a', "a pointer inside the document after 'rename'", None),
        ('rename /a ""', "a new pointer inside the document", "'unwrap /a' makes"),
        ("rename /a /b /c", "nothing more after 'rename'", None),
        ("wrap", "a key after 'wrap'", None),
        ("wrap a b", "nothing more after 'wrap'", None),
    ],
)
def test_a_bad_line_says_what_was_expected(line: str, expected: str, hint: str | None) -> None:
    with pytest.raises(Invalid) as caught:
        parse_json_ops([line])
    assert expected in caught.value.expected
    if hint is not None:
        assert caught.value.hint is not None and hint in caught.value.hint


def test_errors_name_the_index_of_their_line_and_blank_lines_count() -> None:
    with pytest.raises(Invalid) as caught:
        parse_json_ops(["remove /a", "", "  ", "sett /b 1"])
    assert caught.value.value_line == 3
    with pytest.raises(Invalids) as several:
        parse_json_ops(["set /a", "remove /a", "wrap"])
    assert [e.value_line for e in several.value.errors] == [0, 2]


def test_operations_made_in_code_are_checked_too() -> None:
    root, a, ab = Pointer(()), Pointer(("a",)), Pointer(("a", "b"))
    for make in [
        lambda: RemoveOp(root),
        lambda: UnwrapOp(root),
        lambda: RenameOp(root, a),
        lambda: RenameOp(a, root),
        lambda: RenameOp(a, a),
        lambda: RenameOp(a, ab),
    ]:
        with pytest.raises(ValueError):
            make()
    assert RenameOp(ab, a).target == a


def test_no_lines_is_no_operations() -> None:
    assert parse_json_ops(["", "   "]) == ()


# set


def test_set_adds_replaces_and_creates_missing_objects_on_the_way() -> None:
    assert run(['set /meta/source "gw"'], {"a": 1}) == {"a": 1, "meta": {"source": "gw"}}
    assert run(['set /a "x"'], {"a": 1}) == {"a": "x"}
    assert run(["set /a/b/c 1"], {}) == {"a": {"b": {"c": 1}}}
    assert run(["set /a/b 1"], {"a": None}) == {"a": {"b": 1}}, "null counts as missing"
    assert run(["set /a~1b 1"], {}) == {"a/b": 1}
    assert run(['set / "empty key"'], {}) == {"": "empty key"}


def test_set_in_an_array_replaces_an_element_or_appends_with_a_dash() -> None:
    assert run(["set /items/1 9"], {"items": [1, 2, 3]}) == {"items": [1, 9, 3]}
    assert run(["set /items/- 4"], {"items": [1, 2, 3]}) == {"items": [1, 2, 3, 4]}
    assert run(["set /items/0/id 7"], {"items": [{}]}) == {"items": [{"id": 7}]}
    assert run(["set /- 1"], []) == [1]


def test_set_of_the_whole_document_replaces_it() -> None:
    assert run(['set "" {"replaced": true}'], [1, 2]) == {"replaced": True}


@pytest.mark.parametrize(
    ("line", "doc", "why"),
    [
        ("set /a/b 1", {"a": "text"}, "/a is a string, not an object or array"),
        ("set /a/b 1", {"a": 5}, "/a is a number"),
        ("set /a/b 1", {"a": True}, "/a is a boolean"),
        ("set /a 1", "text", "the document is a string"),
        ("set /items/3 1", {"items": [1, 2, 3]}, "/items is an array of 3 and has no element '3'"),
        ("set /items/01 1", {"items": [1, 2]}, "no element '01'"),
        ("set /items/x/y 1", {"items": []}, "no element 'x'"),
        ("set /items/-/y 1", {"items": []}, "no element '-'"),
        ("set /a/b 1", {"a": [None]}, "no element 'b'"),
    ],
)
def test_set_through_a_scalar_or_past_an_array_cannot_apply(line: str, doc: Any, why: str) -> None:
    with pytest.raises(CannotApply, match="cannot set") as caught:
        run([line], doc)
    assert why in str(caught.value)
    assert (caught.value.request_status, caught.value.response_status) == (400, 502)


def test_a_set_value_is_fresh_on_every_body() -> None:
    ops = parse_json_ops(['set /a {"list": [1]}', "set /a/list/- 2"])
    first = apply(ops, b"{}", BOUND)
    second = apply(ops, b"{}", BOUND)
    assert first == second == b'{"a":{"list":[1,2]}}'


# remove


def test_remove_deletes_a_key_or_an_element() -> None:
    assert run(["remove /password"], {"user": "bob", "password": "x"}) == {"user": "bob"}
    assert run(["remove /items/0"], {"items": [1, 2]}) == {"items": [2]}
    assert run(["remove /a~1b"], {"a/b": 1, "c": 2}) == {"c": 2}


@pytest.mark.parametrize(
    "pointer", ["/missing", "/a/missing", "/a/b/c", "/items/5", "/items/-", "/items/01", "/s/x"]
)
def test_remove_of_nothing_returns_the_body_byte_for_byte(pointer: str) -> None:
    body = b'{ "a": {"b": 1},\n  "items": [1, 2], "s": "x" }'
    assert apply(parse_json_ops([f"remove {pointer}"]), body, BOUND) is body


# rename


def test_rename_moves_a_value() -> None:
    assert run(["rename /user/name /user/login"], {"user": {"name": "bob", "id": 1}}) == {
        "user": {"id": 1, "login": "bob"}
    }
    assert run(["rename /a /b/c"], {"a": [1]}) == {"b": {"c": [1]}}
    assert run(["rename /a /b"], {"a": 1, "b": 2}) == {"b": 1}, "the target is replaced"
    assert run(["rename /items/0 /items/-"], {"items": [1, 2, 3]}) == {"items": [2, 3, 1]}
    assert run(["rename /b/c /c"], {"b": {"c": 5}}) == {"b": {}, "c": 5}


def test_rename_of_nothing_does_nothing() -> None:
    body = b'{"b": 2}'
    assert apply(parse_json_ops(["rename /a /b"]), body, BOUND) is body
    assert apply(parse_json_ops(["rename /b/x /y"]), body, BOUND) is body


def test_rename_onto_a_path_through_a_scalar_cannot_apply() -> None:
    with pytest.raises(CannotApply):
        run(["rename /a /b/c"], {"a": 1, "b": "text"})


# wrap and unwrap


def test_wrap_puts_the_document_under_a_key() -> None:
    assert run(["wrap data"], [1, 2]) == {"data": [1, 2]}
    assert run(['wrap "the data"'], None) == {"the data": None}


def test_unwrap_makes_a_value_the_document() -> None:
    assert run(["unwrap /result"], {"result": {"a": 1}, "meta": {}}) == {"a": 1}
    assert run(["unwrap /result/0"], {"result": ["x"]}) == "x"
    body = b'{"other": 1}'
    assert apply(parse_json_ops(["unwrap /result"]), body, BOUND) is body


def test_operations_apply_in_the_order_written() -> None:
    assert run(["wrap data", "set /data/x 1"], {}) == {"data": {"x": 1}}
    assert run(["set /data/x 1", "wrap data"], {}) == {"data": {"data": {"x": 1}}}
    assert run(["unwrap /data", "remove /secret"], {"data": {"secret": 1, "ok": 2}}) == {"ok": 2}


# Bodies and errors.


def test_output_is_compact_utf_8() -> None:
    body = '{ "name" : "caf\u00e9",  "n": [1, 2.5, true, null] }'.encode()
    assert apply(parse_json_ops(["set /x 1"]), body, BOUND) == (
        '{"name":"caf\u00e9","n":[1,2.5,true,null],"x":1}'.encode()
    )


def test_no_operations_leave_any_body_untouched() -> None:
    for body in [b"not json", b"", b"x" * 100]:
        assert apply((), body, 10) is body


def test_a_body_over_the_bound_is_too_large() -> None:
    ops = parse_json_ops(["remove /a"])
    body = b'{"a": 1}'
    assert apply(ops, body, len(body)) == b"{}"
    with pytest.raises(BodyTooLarge) as caught:
        apply(ops, body, len(body) - 1)
    assert isinstance(caught.value, JsonBodyError)
    assert (caught.value.request_status, caught.value.response_status) == (413, 502)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"{'a': 1}", b'{"a": 1', b"\xff\xfe{", b"NaN", b'{"a": Infinity}']
)
def test_a_body_that_is_not_json_says_so(body: bytes) -> None:
    with pytest.raises(NotJson):
        apply(parse_json_ops(["remove /a"]), body, BOUND)
    assert not issubclass(NotJson, JsonBodyError), "passed untouched, not answered"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "b": 1e400}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"b": ' + b"1" * 5000 + b"}",
    ],
    ids=["float-out-of-range", "too-deep", "integer-too-long"],
)
def test_a_document_that_cannot_be_written_back_cannot_apply(body: bytes) -> None:
    with pytest.raises(CannotApply):
        apply(parse_json_ops(["remove /a", "set /c 1"]), body, 1 << 22)


def test_a_lone_surrogate_is_escaped_again() -> None:
    out = apply(parse_json_ops(["set /x 1"]), b'{"a": "\\ud800\\u00e9"}', BOUND)
    assert out == b'{"a":"\\ud800\\u00e9","x":1}'
    assert json.loads(out) == {"a": "\ud800\u00e9", "x": 1}


def test_json_in_utf_16_is_read_and_written_as_utf_8() -> None:
    body = '{"a": "\u00e9"}'.encode("utf-16")
    assert apply(parse_json_ops(["set /b 1"]), body, BOUND) == '{"a":"\u00e9","b":1}'.encode()


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=4) | st.just("new"), _JSON, max_size=5), _JSON)
def test_set_then_read_gives_the_value_and_keeps_the_rest(doc: dict[str, Any], value: Any) -> None:
    ops = (SetOp(Pointer(("new", "key")), json.dumps(value)),)
    if not isinstance(doc.get("new", {}), dict | None):
        with pytest.raises(CannotApply):
            apply(ops, json.dumps(doc).encode(), BOUND)
        return
    out = json.loads(apply(ops, json.dumps(doc).encode(), BOUND))
    assert out["new"]["key"] == value
    assert {k: v for k, v in out.items() if k != "new"} == {
        k: v for k, v in doc.items() if k != "new"
    }


@given(_JSON)
def test_wrap_then_unwrap_is_the_same_document(doc: Any) -> None:
    ops = parse_json_ops(["wrap k", "unwrap /k"])
    assert json.loads(apply(ops, json.dumps(doc).encode(), BOUND)) == doc


@given(st.binary(max_size=60))
def test_any_bytes_give_json_or_a_typed_error(body: bytes) -> None:
    try:
        out = apply(parse_json_ops(["remove /a", "set /b 1"]), body, BOUND)
    except (NotJson, JsonBodyError):
        return
    json.loads(out)
