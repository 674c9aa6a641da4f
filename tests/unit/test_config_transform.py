"""[route] transformations (docs/gateway.md, "Transformations"): `query_params`,
`upstream_method`, `request_json`, `response_json` and `max_json_body` read into the route's
ProxyAction, and bad values refused with the file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Config, ProxyAction
from proxyd.gateway.json_ops import parse_json_ops
from proxyd.gateway.query_ops import QueryOp

HEAD = "[pool web]\nservers = 127.0.0.1:9001\n[http h]\nlisten = tcp:8080\nroutes =\n"
HEAD += "    path / -> route r\n[route r]\n"
"""Lines 1-7; the [route r] section's first key (pool) is on line 8."""


def load(directory: Path, keys: str) -> Config:
    path = directory / "proxyd.ini"
    text = HEAD + textwrap.dedent(keys)
    path.write_text(text)
    return loads(text, str(path))


def errors(directory: Path, keys: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(directory, keys)
    prefix = str(directory / "proxyd.ini")
    return [str(e).removeprefix(prefix) for e in info.value.errors]


def action(directory: Path, keys: str) -> ProxyAction:
    found = load(directory, keys).http[0].routes[0].action
    assert isinstance(found, ProxyAction)
    return found


def test_query_params_are_read_in_kongs_order(tmp_path: Path) -> None:
    found = action(
        tmp_path,
        """\
        pool = web
        query_params =
            append tag "a b"
            add page 1
            remove api_key
        upstream_method = POST
        """,
    )
    assert found.query_ops == (
        QueryOp("remove", "api_key"),
        QueryOp("add", "page", "1"),
        QueryOp("append", "tag", "a b"),
    )
    assert found.upstream_method == "POST"


def test_without_the_keys_the_request_is_sent_as_received(tmp_path: Path) -> None:
    found = action(tmp_path, "pool = web\n")
    assert (found.query_ops, found.upstream_method) == ((), None)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "query_params =\n    remove a\n    delete b\n",
            ":11: [route r] query_params: expected 'remove', 'rename', 'replace', 'add',"
            " 'append' ('remove NAME', 'rename NAME NEW_NAME', 'replace NAME VALUE', 'add NAME"
            " VALUE' or 'append NAME VALUE'); found 'delete'",
        ),
        (
            "query_params =\n    add page\n",
            ":10: [route r] query_params: expected one value after 'add page' (quote a value"
            " with spaces); found nothing",
        ),
        (
            "query_params =\n    rename q q\n",
            ":10: [route r] query_params: expected a new name other than 'q'; found 'q'",
        ),
        (
            "upstream_method = post\n",
            ":9: [route r] upstream_method: expected a method name in upper case such as GET;"
            " found 'post' (did you mean 'POST'?)",
        ),
        (
            "upstream_method = PO ST\n",
            ":9: [route r] upstream_method: expected a method name in upper case such as GET;"
            " found 'PO ST'",
        ),
        (
            "upstream_method = HEAD\n",
            ":9: [route r] upstream_method: expected a method other than HEAD and CONNECT;"
            " found 'HEAD' (HEAD requests keep their method; CONNECT opens a tunnel)",
        ),
    ],
)
def test_bad_transformations_are_refused_on_their_line(
    tmp_path: Path, keys: str, expected: str
) -> None:
    assert errors(tmp_path, "pool = web\n" + keys) == [expected]


def test_transformations_only_go_with_pool(tmp_path: Path) -> None:
    assert errors(
        tmp_path, "respond = 200 ok\nquery_params = remove a\nupstream_method = PUT\n"
    ) == [
        ":9: [route r] query_params: expected 'query_params' only in a [route] with 'pool';"
        " found a [route] with 'respond'",
        ":10: [route r] upstream_method: expected 'upstream_method' only in a [route] with"
        " 'pool'; found a [route] with 'respond'",
    ]


def test_json_operations_are_read_in_the_order_written(tmp_path: Path) -> None:
    found = action(
        tmp_path,
        """\
        pool = web
        request_json =
            rename /user/name /user/login
            set /meta/source "gateway"

            remove /password
        response_json =
            unwrap /result
            wrap data
        max_json_body = 64KiB
        """,
    )
    assert [str(op) for op in found.request_json_ops] == [
        "rename /user/name /user/login",
        'set /meta/source "gateway"',
        "remove /password",
    ]
    assert found.response_json_ops == parse_json_ops(["unwrap /result", "wrap data"])
    assert found.max_json_body == 64 * 1024


def test_without_json_keys_bodies_pass_and_the_bound_is_1mib(tmp_path: Path) -> None:
    found = action(tmp_path, "pool = web\n")
    assert (found.request_json_ops, found.response_json_ops) == ((), ())
    assert found.max_json_body == 1 << 20


def test_max_json_body_goes_up_to_64mib(tmp_path: Path) -> None:
    assert action(tmp_path, "pool = web\nmax_json_body = 64MiB\n").max_json_body == 64 << 20


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "request_json =\n    remove /a\n    delete /b\n",
            ":11: [route r] request_json: expected 'set', 'remove', 'rename', 'wrap', 'unwrap'"
            " ('set POINTER VALUE', 'remove POINTER', 'rename POINTER NEW_POINTER', 'wrap KEY'"
            " or 'unwrap POINTER'); found 'delete'",
        ),
        (
            "response_json =\n    wrap data\n    set /a hello\n",
            ":11: [route r] response_json: expected a JSON value; found 'hello' (Expecting value:"
            ' line 1 column 1 (char 0)) (a string is quoted: "hello")',
        ),
        (
            "request_json =\n    remove a\n",
            ":10: [route r] request_json: expected a JSON Pointer: '' or starting with '/';"
            " found 'a' (did you mean '/a'?)",
        ),
        (
            "request_json =\n",
            ":9: [route r] request_json: expected one or more JSON operations, one a line: 'set"
            " POINTER VALUE', 'remove POINTER', 'rename POINTER NEW_POINTER', 'wrap KEY' or"
            " 'unwrap POINTER'; found nothing",
        ),
        (
            "max_json_body = 65MiB\n",
            ":9: [route r] max_json_body: expected a size from 1B to 64MiB such as 64KiB or"
            " 1MiB; found '65MiB'",
        ),
        (
            "max_json_body = 0\n",
            ":9: [route r] max_json_body: expected a size from 1B to 64MiB such as 64KiB or"
            " 1MiB; found '0'",
        ),
    ],
)
def test_bad_json_keys_are_refused_on_their_line(tmp_path: Path, keys: str, expected: str) -> None:
    assert errors(tmp_path, "pool = web\n" + keys) == [expected]


def test_json_keys_only_go_with_pool(tmp_path: Path) -> None:
    assert errors(
        tmp_path,
        "respond = 200 ok\nrequest_json = remove /a\nresponse_json = wrap x\n"
        "max_json_body = 1KiB\n",
    ) == [
        ":9: [route r] request_json: expected 'request_json' only in a [route] with 'pool';"
        " found a [route] with 'respond'",
        ":10: [route r] response_json: expected 'response_json' only in a [route] with 'pool';"
        " found a [route] with 'respond'",
        ":11: [route r] max_json_body: expected 'max_json_body' only in a [route] with 'pool';"
        " found a [route] with 'respond'",
    ]
