"""proxyd.auth.api_keys: the key file (names and SHA-256 digests, every refusal with file and
line and without a digest or key), keys from a header or the query, and the key kept from
the upstream."""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.auth.api_keys import (
    ApiKeyAuth,
    KeyTable,
    key_digest,
    load_api_keys,
    parse_api_keys,
    strip_query,
)
from proxyd.auth.result import Denied, Granted
from proxyd.config.errors import ConfigError, ConfigErrors

ALPHA_KEY = b"k-alpha-8f1c2e9d0b7a"
BETA_KEY = b"k-beta-41d3a0c5e6f2"
KEY_FILE = f"""# API keys: NAME SHA256-HEX
alpha {key_digest(ALPHA_KEY)}

  beta   {key_digest(BETA_KEY).upper()}
""".encode()
CHALLENGE = ((b"WWW-Authenticate", b'ApiKey realm="api"'),)


@pytest.fixture
def table() -> KeyTable:
    return parse_api_keys(KEY_FILE, "keys.txt")


def make(table: KeyTable, **options: object) -> ApiKeyAuth:
    settings: dict[str, object] = {
        "header": b"X-Api-Key",
        "query_param": "api_key",
        "name_header": b"X-Api-Key-Name",
        "realm": "api",
    }
    settings.update(options)
    return ApiKeyAuth(table, **settings)  # type: ignore[arg-type]


def refused(data: bytes) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as raised:
        parse_api_keys(data, "keys.txt")
    return list(raised.value.errors)


def only_error(data: bytes) -> ConfigError:
    errors = refused(data)
    assert len(errors) == 1, errors
    return errors[0]


# The key file


def test_a_key_file_names_each_key_by_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_bytes(KEY_FILE)
    table = load_api_keys(str(path))
    assert len(table) == 2
    assert table.name_of(ALPHA_KEY) == "alpha"
    assert table.name_of(BETA_KEY) == "beta"
    assert table.name_of(b"k-gamma") is None
    assert table.name_of(key_digest(ALPHA_KEY).encode()) is None, "the digest is not the key"


def test_key_digest_is_what_sha256sum_prints() -> None:
    assert key_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(key_digest(b"")) == 64


def test_an_unreadable_key_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.txt")
    with pytest.raises(ConfigErrors) as raised:
        load_api_keys(path)
    (error,) = raised.value.errors
    assert (error.path, error.line, error.expected) == (path, None, "a readable API key file")
    assert error.found == "No such file or directory"


def test_a_key_written_where_its_digest_goes_is_refused_without_showing_it() -> None:
    error = only_error(b"# keys\nalpha " + ALPHA_KEY + b"\n")
    assert (error.path, error.line) == ("keys.txt", 2)
    assert error.expected == "a SHA-256 digest of 64 hex digits after the name"
    assert error.found == f"{len(ALPHA_KEY)} characters"
    assert error.hint is not None
    assert "sha256sum" in error.hint
    assert ALPHA_KEY.decode() not in str(error)


def test_a_digest_of_64_characters_not_all_hex_is_refused_without_showing_it() -> None:
    digest = "g" + key_digest(ALPHA_KEY)[1:]
    error = only_error(f"alpha {digest}".encode())
    assert error.found == "64 characters, not all hex digits"
    assert digest not in str(error)


@pytest.mark.parametrize(
    ("line", "expected", "found"),
    [
        (b"alpha", "'NAME SHA256-HEX'", "1 fields"),
        (b"alpha beta " + key_digest(b"x").encode(), "'NAME SHA256-HEX'", "3 fields"),
        (
            b"al/pha " + key_digest(b"x").encode(),
            "a name of 1 to 128 letters, digits and . _ - @ + :",
            "'/' in the name",
        ),
        (
            b"a" * 129 + b" " + key_digest(b"x").encode(),
            "a name of 1 to 128 letters, digits and . _ - @ + :",
            "a name of 129 characters",
        ),
        (
            b"alph\xe9 " + key_digest(b"x").encode(),
            "'NAME SHA256-HEX' in ASCII",
            "bytes that are not ASCII",
        ),
    ],
)
def test_a_malformed_line_is_refused_with_its_line(line: bytes, expected: str, found: str) -> None:
    error = only_error(b"\n" + line + b"\n")
    assert (error.line, error.expected, error.found) == (2, expected, found)


def test_a_line_of_three_fields_does_not_show_them() -> None:
    error = only_error(b"alpha " + ALPHA_KEY + b" more\n")
    assert ALPHA_KEY.decode() not in str(error)


def test_a_name_written_twice_is_refused_naming_both_lines() -> None:
    data = f"alpha {key_digest(ALPHA_KEY)}\nalpha {key_digest(BETA_KEY)}\n".encode()
    error = only_error(data)
    assert (error.line, error.expected) == (2, "each name once")
    assert error.found == "'alpha' again (first on line 1)"


def test_one_key_under_two_names_is_refused_without_showing_the_digest() -> None:
    digest = key_digest(ALPHA_KEY)
    error = only_error(f"alpha {digest}\n# same\nbeta {digest.upper()}\n".encode())
    assert (error.line, error.expected) == (3, "each key once")
    assert error.found == "the digest of 'alpha' (line 1) again for 'beta'"
    assert digest not in str(error).lower()


def test_every_bad_line_is_reported_at_once() -> None:
    errors = refused(b"alpha short\nbeta\ngamma " + key_digest(b"g").encode() + b"\n")
    assert [(e.path, e.line) for e in errors] == [("keys.txt", 1), ("keys.txt", 2)]
    assert str(errors[0]).startswith("keys.txt:1: expected a SHA-256 digest")


@given(st.binary(max_size=300))
def test_any_bytes_load_as_a_table_or_give_config_errors(data: bytes) -> None:
    try:
        table = parse_api_keys(data, "keys.txt")
    except ConfigErrors as e:
        assert all(error.line for error in e.errors)
    else:
        assert isinstance(table, KeyTable)


def test_reprs_show_neither_keys_nor_digests(table: KeyTable) -> None:
    assert repr(table) == "<KeyTable keys.txt: 2 keys>"
    auth = make(table)
    assert "k-alpha" not in repr(auth)
    assert key_digest(ALPHA_KEY) not in repr(auth)


# ApiKeyAuth


def test_a_key_in_the_header_is_granted_with_its_name_for_upstream(table: KeyTable) -> None:
    decision = make(table).check([(b"x-API-key", b" " + ALPHA_KEY + b" ")], "")
    assert decision == Granted("alpha", ((b"X-Api-Key-Name", b"alpha"),))


def test_without_a_name_header_nothing_goes_upstream(table: KeyTable) -> None:
    decision = make(table, name_header=None).check([(b"X-Api-Key", BETA_KEY)], "")
    assert decision == Granted("beta", ())


def test_a_key_in_the_query_is_granted(table: KeyTable) -> None:
    query = "page=2&api_key=" + urllib.parse.quote(BETA_KEY) + "&q=x"
    assert make(table).check([], query) == Granted("beta", ((b"X-Api-Key-Name", b"beta"),))


def test_a_percent_encoded_key_and_parameter_name_in_the_query_are_decoded(
    table: KeyTable,
) -> None:
    encoded = "".join(f"%{byte:02X}" for byte in ALPHA_KEY)
    assert make(table).check([], f"api%5Fkey={encoded}").identity == "alpha"  # type: ignore[union-attr]


def test_the_header_is_read_before_the_query(table: KeyTable) -> None:
    decision = make(table).check([(b"X-Api-Key", ALPHA_KEY)], "api_key=" + BETA_KEY.decode())
    assert decision == Granted("alpha", ((b"X-Api-Key-Name", b"alpha"),))


def test_a_header_only_method_ignores_the_query(table: KeyTable) -> None:
    auth = make(table, query_param=None)
    assert auth.check([], "api_key=" + ALPHA_KEY.decode()) == Denied(401, "missing", CHALLENGE)


def test_a_query_only_method_ignores_the_header(table: KeyTable) -> None:
    auth = make(table, header=None)
    assert auth.check([(b"X-Api-Key", ALPHA_KEY)], "") == Denied(401, "missing", CHALLENGE)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ([], ""),
        ([(b"Authorization", b"Bearer " + ALPHA_KEY)], "key=" + ALPHA_KEY.decode()),
        ([(b"X-Api-Key", b"  ")], "api_key="),
    ],
)
def test_no_key_is_answered_401_missing(
    table: KeyTable, headers: list[tuple[bytes, bytes]], query: str
) -> None:
    assert make(table).check(headers, query) == Denied(401, "missing", CHALLENGE)


def test_an_unknown_key_is_answered_401_unknown_key(table: KeyTable) -> None:
    auth = make(table)
    assert auth.check([(b"X-Api-Key", b"k-gamma")], "") == Denied(401, "unknown_key", CHALLENGE)
    assert auth.check([], "api_key=k-alpha") == Denied(401, "unknown_key", CHALLENGE)


def test_a_key_given_twice_is_answered_401_malformed(table: KeyTable) -> None:
    auth = make(table)
    twice = [(b"X-Api-Key", ALPHA_KEY), (b"x-api-key", ALPHA_KEY)]
    assert auth.check(twice, "") == Denied(401, "malformed", CHALLENGE)
    query = f"api_key={ALPHA_KEY.decode()}&api_key={BETA_KEY.decode()}"
    assert auth.check([], query) == Denied(401, "malformed", CHALLENGE)


def test_the_challenge_quotes_the_realm(table: KeyTable) -> None:
    denied = make(table, realm='my "api"').check([], "")
    assert denied.fields == ((b"WWW-Authenticate", b'ApiKey realm="my \\"api\\""'),)  # type: ignore[union-attr]


def test_nonsense_settings_are_refused(table: KeyTable) -> None:
    with pytest.raises(ValueError):
        make(table, header=None, query_param=None)
    with pytest.raises(ValueError):
        make(table, realm="a\r\nb")


def test_strip_takes_the_key_out_of_headers_and_query_keeping_the_rest(table: KeyTable) -> None:
    headers = [(b"Host", b"a"), (b"x-api-KEY", ALPHA_KEY), (b"Accept", b"*/*")]
    query = f"a=%41&api_key={BETA_KEY.decode()}&b=c+d&api%5fkey=x&api_key"
    assert make(table).strip(headers, query) == (
        [(b"Host", b"a"), (b"Accept", b"*/*")],
        "a=%41&b=c+d",
    )


def test_strip_leaves_the_query_when_the_method_reads_only_headers(table: KeyTable) -> None:
    assert make(table, query_param=None).strip([], "api_key=x") == ([], "api_key=x")


@pytest.mark.parametrize(
    ("query", "stripped"),
    [
        ("", ""),
        ("api_key=x", ""),
        ("a=1", "a=1"),
        ("a=1&&api_key=x&", "a=1&&"),
        ("api_keys=x&xapi_key=y", "api_keys=x&xapi_key=y"),
        ("api+key=x&api%20key=y", "api+key=x&api%20key=y"),
    ],
)
def test_strip_query_removes_only_the_parameter(query: str, stripped: str) -> None:
    assert strip_query(query, "api_key") == stripped


@given(
    st.lists(
        st.sampled_from(["api_key=s", "api%5Fkey=t", "api_key", "a=1", "", "b=%2", "api+key=u"])
    )
)
def test_after_strip_query_check_finds_no_key_and_the_other_pieces_stay(pieces: list[str]) -> None:
    query = "&".join(pieces)
    auth = ApiKeyAuth(
        KeyTable("k", {}), header=None, query_param="api_key", name_header=None, realm="r"
    )
    stripped = strip_query(query, "api_key")
    assert auth.check([], stripped).reason == "missing"  # type: ignore[union-attr]
    kept = [p for p in pieces if urllib.parse.unquote_plus(p.partition("=")[0]) != "api_key"]
    assert stripped == "&".join(kept)
