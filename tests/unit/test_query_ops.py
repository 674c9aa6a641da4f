"""proxyd.gateway.query_ops: query parameter operations in Kong request-transformer's order,
leaving every parameter they do not touch where it was and as it was written."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.errors import Invalid
from proxyd.config.scalars import Invalids
from proxyd.gateway.query_ops import QueryOp, apply_query, parse_query_op, parse_query_ops


def run(lines: list[str], query: str) -> str:
    return apply_query(parse_query_ops(lines), query)


# Parsing.


def test_each_operation_parses_to_its_value() -> None:
    assert parse_query_ops(
        [
            "remove api_key",
            "rename q search",
            "replace format json",
            "add page 1",
            "append tag gateway",
        ]
    ) == (
        QueryOp("remove", "api_key"),
        QueryOp("rename", "q", "search"),
        QueryOp("replace", "format", "json"),
        QueryOp("add", "page", "1"),
        QueryOp("append", "tag", "gateway"),
    )


def test_operations_come_out_in_kongs_order_each_kind_in_the_order_written() -> None:
    ops = parse_query_ops(
        ["append t 1", "add a 1", "replace r 1", "rename x y", "remove z", "add b 2", "remove w"]
    )
    assert [str(op) for op in ops] == [
        "remove z",
        "remove w",
        "rename x y",
        "replace r 1",
        "add a 1",
        "add b 2",
        "append t 1",
    ]


def test_values_with_spaces_are_quoted_and_empty_values_allowed() -> None:
    assert parse_query_op('add q "hello world"') == QueryOp("add", "q", "hello world")
    assert parse_query_op("add 'a b' ''") == QueryOp("add", "a b", "")
    assert parse_query_op("append\tx\t1") == QueryOp("append", "x", "1")


@pytest.mark.parametrize(
    "line", ["remove api_key", 'add q "hello world"', "add 'a b' ''", "replace x 'say \"hi\"'"]
)
def test_an_operation_written_back_is_the_same_operation(line: str) -> None:
    op = parse_query_op(line)
    assert parse_query_op(str(op)) == op


@pytest.mark.parametrize(
    ("line", "expected", "hint"),
    [
        ("remov x", "'remove', 'rename'", "did you mean 'remove'?"),
        ("ad x 1", "'remove', 'rename'", "did you mean 'add'?"),
        ("remove", "a parameter name after 'remove'", None),
        ("add '' 1", "a parameter name after 'add'", None),
        ("remove a b", "'remove NAME' and nothing more", None),
        ("add a", "one value after 'add a'", None),
        ("add a b c", "one value after 'add a' (quote a value with spaces)", None),
        ("rename a", "a new name after 'rename a'", None),
        ("rename a ''", "a new name after 'rename a'", None),
        ("rename a a", "a new name other than 'a'", None),
        ("add a 'b", "a query operation with balanced quotes", None),
    ],
)
def test_a_bad_line_says_what_was_expected(line: str, expected: str, hint: str | None) -> None:
    with pytest.raises(Invalid) as caught:
        parse_query_ops([line])
    assert expected in caught.value.expected
    if hint is not None:
        assert caught.value.hint == hint


def test_errors_name_the_index_of_their_line() -> None:
    with pytest.raises(Invalid) as caught:
        parse_query_ops(["remove a", "", "add b"])
    assert caught.value.value_line == 2
    with pytest.raises(Invalids) as several:
        parse_query_ops(["remove", "add a 1", "rename a"])
    assert [e.value_line for e in several.value.errors] == [0, 2]


def test_a_query_op_checks_its_value() -> None:
    with pytest.raises(ValueError):
        QueryOp("remove", "a", "1")
    with pytest.raises(ValueError):
        QueryOp("add", "a")


# Applying.


def test_remove_drops_every_parameter_of_that_name_and_nothing_else() -> None:
    assert run(["remove api_key"], "a=%7e1&api_key=s&b=x+y&api_key=t&c") == "a=%7e1&b=x+y&c"
    assert run(["remove api_key"], "api_key=s") == ""
    assert run(["remove debug"], "debug&x=1") == "x=1"


def test_rename_keeps_position_and_value_bytes_and_drops_those_of_the_new_name() -> None:
    assert run(["rename q search"], "a=1&q=caf%C3%A9+x&b=2&q=2") == (
        "a=1&search=caf%C3%A9+x&b=2&search=2"
    )
    assert run(["rename q search"], "search=old&q=new") == "search=new"
    assert run(["rename flag on"], "flag&x=1") == "on&x=1"
    assert run(["rename q 'new name'"], "q=1") == "new%20name=1"


def test_replace_puts_one_parameter_in_place_of_the_first_only_if_present() -> None:
    assert run(["replace format json"], "a=1&format=xml&b=2&format=csv") == "a=1&format=json&b=2"
    assert run(["replace format json"], "a=1") == "a=1"
    assert run(["replace debug 1"], "debug") == "debug=1"


def test_add_appends_only_if_absent() -> None:
    assert run(["add page 1"], "q=x") == "q=x&page=1"
    assert run(["add page 1"], "page=5&q=x") == "page=5&q=x"
    assert run(["add page 1"], "") == "page=1"
    assert run(["add page 1", "add page 2"], "") == "page=1"


def test_append_always_adds_at_the_end() -> None:
    assert run(["append tag gw"], "tag=a&q=x") == "tag=a&q=x&tag=gw"
    assert run(["append tag gw", "append tag gw2"], "") == "tag=gw&tag=gw2"


def test_kongs_order_whatever_the_order_of_the_lines() -> None:
    assert run(["add x 1", "remove x"], "x=client&y=2") == "y=2&x=1"
    assert run(["replace x 2", "rename y x"], "y=1") == "x=2"
    assert run(["append x 3", "replace x 2"], "x=1") == "x=2&x=3"
    assert run(["append x 3", "add x 2"], "") == "x=2&x=3"


def test_names_match_decoded_as_form_fields() -> None:
    assert run(["remove caf\u00e9"], "caf%C3%A9=1&b=2") == "b=2"
    assert run(["remove 'a b'"], "a+b=1&a%20b=2&ab=3") == "ab=3"
    assert run(["remove a&b"], "a%26b=1&a=2") == "a=2"
    assert run(["remove A"], "a=1") == "a=1", "names are case-sensitive"
    assert run(["remove x"], "%ff=1&x=2") == "%ff=1", "a name that is not UTF-8 matches none"


def test_new_names_and_values_are_percent_encoded() -> None:
    assert run(["add q 'a b&c=d+e#f;g%h'"], "") == "q=a%20b%26c%3Dd%2Be%23f%3Bg%25h"
    assert run(["add caf\u00e9 \u20ac"], "") == "caf%C3%A9=%E2%82%AC"
    assert run(['add p "/a:b@c?d,e!$\'()*"'], "") == "p=/a:b@c?d,e!$'()*"
    assert run(["add p ''"], "") == "p="


def test_empty_pieces_are_kept_as_they_are() -> None:
    assert run(["remove b"], "a=1&&b=2&") == "a=1&&"
    assert run(["add c 3"], "&") == "&&c=3"


def test_nothing_changed_returns_the_query_itself() -> None:
    query = "a=%7e&b=x+y"
    for lines in [[], ["remove z"], ["rename z y"], ["replace z 1"], ["add a 1"]]:
        assert run(lines, query) is query


_NAME = st.text("abcxyz+% =\u00e9", min_size=0, max_size=4)
_PIECE = st.builds(
    lambda name, value: name if value is None else f"{name}={value}",
    _NAME,
    st.none() | st.text("ab%2F=+", max_size=4),
)
_QUERY = st.lists(_PIECE, max_size=6).map("&".join)


@given(_QUERY)
def test_operations_naming_absent_parameters_leave_the_query_untouched(query: str) -> None:
    ops = parse_query_ops(["remove absent", "rename absent2 x", "replace absent3 1"])
    assert apply_query(ops, query) is query


@given(_QUERY, st.sampled_from(["a", "b", "x", "a b"]))
def test_remove_keeps_every_other_piece_in_order(query: str, name: str) -> None:
    out = apply_query((QueryOp("remove", name),), query)
    pieces = query.split("&") if query else []
    assert out == "&".join(piece for piece in pieces if _decoded_name(piece) != name)


@given(_QUERY, st.text(max_size=8), st.text(max_size=8))
def test_an_appended_parameter_decodes_to_what_was_configured(
    query: str, name: str, value: str
) -> None:
    if not name:
        return
    out = apply_query((QueryOp("append", name, value),), query)
    assert out.startswith(query)
    last = out.rsplit("&", 1)[-1]
    assert parse_qsl(last, keep_blank_values=True) == [(name, value)]


def _decoded_name(piece: str) -> str:
    return unquote_plus(piece.partition("=")[0], errors="surrogateescape")
