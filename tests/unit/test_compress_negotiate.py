"""Which coding a response gets (proxyd.compress.negotiate): RFC 9110's Accept-Encoding with
its weights, refusals, `*` and identity, read leniently; and which media types compress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.compress.negotiate import (
    DEFAULT_TYPES,
    accepted_codings,
    choose_coding,
    compressible,
)
from proxyd.filters.api import header

SERVER = ("zstd", "br", "gzip")

CHOICES = [
    # Absent, empty, or nothing the server has: identity.
    (None, None),
    ("", None),
    ("   ", None),
    ("deflate", None),
    ("compress, deflate", None),
    # Named codings, all weights 1: the server's order decides.
    ("gzip", "gzip"),
    ("br", "br"),
    ("zstd", "zstd"),
    ("gzip, deflate, br", "br"),
    ("gzip, deflate, br, zstd", "zstd"),  # Chrome
    ("gzip, br", "br"),
    # Weights: the highest wins over the server's order.
    ("zstd;q=0.5, gzip", "gzip"),
    ("zstd;q=0.5, br;q=0.8, gzip;q=0.7", "br"),
    ("gzip;q=1.0, br;q=0.999", "gzip"),
    ("gzip;q=0.001", "gzip"),
    ("gzip;q=0.5, br;q=0.5", "br"),  # a tie: the server's order
    # q=0 refuses.
    ("gzip;q=0", None),
    ("br;q=0, gzip", "gzip"),
    ("zstd;q=0.000, br;q=0, gzip;q=0.", None),
    # `*` covers what is not named, and only that.
    ("*", "zstd"),
    ("*;q=0.5, gzip", "gzip"),
    ("*;q=0.5, gzip;q=0.4", "zstd"),
    ("zstd;q=0, *", "br"),
    ("zstd;q=0, br;q=0, *", "gzip"),
    ("*;q=0", None),
    ("*;q=0, gzip", "gzip"),
    ("*;q=0, identity", None),
    # Identity: preferred when stated heavier; a tie goes to the coding; identity refused with
    # nothing else acceptable is still None (proxyd sends the response as it is, like nginx).
    ("identity", None),
    ("gzip;q=0.5, identity", None),
    ("gzip;q=0.5, identity;q=0.5", "gzip"),
    ("gzip, identity;q=0", "gzip"),
    ("gzip;q=0.5", "gzip"),  # identity unnamed: does not compete
    ("*;q=0.3, zstd;q=0.2, br;q=0.2, gzip;q=0.2", None),  # identity: 0.3 through `*`
    ("identity;q=0", None),
    ("identity;q=0, deflate", None),
    ("identity;q=0, *;q=0", None),
    ("gzip;q=0, identity;q=0", None),
    # Case and whitespace.
    ("GZIP", "gzip"),
    ("Gzip;Q=0.5, BR;q=0.4", "gzip"),
    ("  gzip ;  q=0.5 ,\tbr ; q = 0.7  ", "br"),
    ("IDENTITY;Q=1, gzip;q=0.9", None),
    # Aliases and empty list elements.
    ("x-gzip", "gzip"),
    ("x-gzip;q=0, gzip", None),  # the same coding twice: the refusal stands
    ("gzip, gzip;q=0", None),
    (",, gzip ,,", "gzip"),
    # Malformed elements are ignored, the rest counts.
    ("br;q=2, gzip", "gzip"),
    ("br;q=1.5, gzip", "gzip"),
    ("br;q=1.001, gzip", "gzip"),
    ("br;q=0.1234, gzip", "gzip"),
    ("br;q=-0.5, gzip", "gzip"),
    ("br;q=abc, gzip", "gzip"),
    ("br;q=, gzip", "gzip"),
    ("br;q=.5, gzip", "gzip"),
    ("br;q=0.5;q=1, gzip", "gzip"),
    ("b r, gzip", "gzip"),
    ("br/1, gzip", "gzip"),
    ('"br", gzip', "gzip"),
    ("br;q=2", None),
    ("zstd;q=0;q=1, gzip;q=0.1", "gzip"),
    # Parameters other than q are ignored.
    ("br;level=5, gzip", "br"),
    ("br;level=5;q=0, gzip", "gzip"),
    ("br;", "br"),
]


@pytest.mark.parametrize(("accept_encoding", "chosen"), CHOICES)
def test_the_chosen_coding(accept_encoding: str | None, chosen: str | None) -> None:
    assert choose_coding(accept_encoding, SERVER) == chosen


@pytest.mark.parametrize(
    ("accept_encoding", "preference", "chosen"),
    [
        ("gzip, br, zstd", ("gzip", "br", "zstd"), "gzip"),
        ("gzip, br, zstd", ("br",), "br"),
        ("zstd", ("br", "gzip"), None),
        ("*", ("gzip",), "gzip"),
        ("gzip", (), None),
    ],
)
def test_the_servers_preference_breaks_ties_and_limits_the_choice(
    accept_encoding: str, preference: tuple[str, ...], chosen: str | None
) -> None:
    assert choose_coding(accept_encoding, preference) == chosen


def test_several_field_lines_are_joined_as_one_list() -> None:
    fields = [(b"Accept-Encoding", b"gzip;q=0.5"), (b"accept-encoding", b"br;q=0.9, zstd;q=0")]
    assert choose_coding(header(fields, b"accept-encoding"), SERVER) == "br"


def test_the_weights_read() -> None:
    assert accepted_codings("GZIP;q=0.5, x-gzip;q=0.7, *;q=0, identity, br;q=9") == {
        "gzip": 0.5,
        "*": 0.0,
        "identity": 1.0,
    }


@given(st.text())
def test_any_header_gives_an_answer_and_never_an_error(accept_encoding: str) -> None:
    assert choose_coding(accept_encoding, SERVER) in (None, *SERVER)


@given(st.lists(st.sampled_from(["gzip", "br;q=0.5", "zstd;q=0", "*;q=0.1", "identity"])))
def test_garbage_elements_change_nothing(elements: list[str]) -> None:
    garbage = ["br;q=7", "", "gz ip", "zstd;q=0.5;q=0.5", ";q=1", "=", "br;q=1.0001"]
    clean = ", ".join(elements)
    assert choose_coding(", ".join([*garbage, *elements, *garbage]), SERVER) == choose_coding(
        clean, SERVER
    )


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html", True),
        ("text/html; charset=utf-8", True),
        ("TEXT/HTML;CHARSET=UTF-8", True),
        ("text/css", True),
        ("text/javascript", True),
        ("text/event-stream", True),
        ("text/csv", True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/problem+json", True),
        ("application/ld+json", True),
        ("application/x-ndjson", True),
        ("application/javascript", True),
        ("application/xml", True),
        ("application/atom+xml", True),
        ("application/xhtml+xml", True),
        ("image/svg+xml", True),
        (" image/SVG+XML ", True),
        ("application/wasm", False),
        ("image/png", False),
        ("image/jpeg", False),
        ("video/mp4", False),
        ("font/woff2", False),
        ("application/zip", False),
        ("application/gzip", False),
        ("application/octet-stream", False),
        ("application/+json", False),  # no subtype before the suffix
        ("application/jsonx", False),
        ("application/json+zstd", False),
        ("image/svg", False),
        ("text", False),
        ("text/", False),
        ("", False),
        (None, False),
    ],
)
def test_the_default_types(content_type: str | None, expected: bool) -> None:
    assert compressible(content_type, DEFAULT_TYPES) is expected


def test_configured_types_match_exactly_by_wildcard_or_by_suffix_in_any_case() -> None:
    types = ["Application/WASM", "font/*", "application/*+YAML"]
    assert compressible("application/wasm", types)
    assert compressible("font/ttf; x=1", types)
    assert compressible("application/openapi+yaml", types)
    assert not compressible("application/yaml", types)
    assert not compressible("text/html", types)
    assert not compressible("text/html", [])
