"""The compression keys (docs/compression.md): `compress`, `compress_types`,
`compress_min_length`, `compress_codings`, `compress_levels` and `gunzip` on [http], [https]
and [route] sections, their defaults, a route's keys over the listener's, and bad values
refused with the file, line, section and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxyd.compress.negotiate import DEFAULT_TYPES
from proxyd.config.compress_model import CompressConfig, RouteCompress
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Config

HEAD = "[pool web]\nservers = 127.0.0.1:9001\n[http h]\nlisten = tcp:8080\nroutes =\n"
HEAD += "    path /r -> route r\n    path / -> pool web\n"
"""Lines 1-7; the [http h] section's next key is on line 8."""


def load(directory: Path, listener: str, route: str = "pool = web\n") -> Config:
    path = directory / "proxyd.ini"
    text = HEAD + textwrap.dedent(listener) + "[route r]\n" + textwrap.dedent(route)
    path.write_text(text)
    return loads(text, str(path))


def errors(directory: Path, listener: str, route: str = "pool = web\n") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(directory, listener, route)
    prefix = str(directory / "proxyd.ini")
    return [str(e).removeprefix(prefix) for e in info.value.errors]


def test_compression_is_off_by_default_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "").http[0]
    assert config.compress == CompressConfig()
    assert not config.compress.active
    assert config.compress.types == DEFAULT_TYPES
    assert config.compress.min_length == 1024
    assert config.compress.codings == ("zstd", "br", "gzip")
    assert config.routes[0].compress is None


def test_the_listeners_keys_are_read(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        compress = on
        compress_types =
            text/html, application/json
            application/*+json  Image/SVG+XML
        compress_min_length = 2KiB
        compress_codings = br gzip
        compress_levels = gzip=5 br=3
        gunzip = on
        """,
    ).http[0]
    assert config.compress == CompressConfig(
        enabled=True,
        types=("text/html", "application/json", "application/*+json", "image/svg+xml"),
        min_length=2048,
        codings=("br", "gzip"),
        levels=(("gzip", 5), ("br", 3)),
        gunzip=True,
    )


def test_a_routes_keys_replace_the_listeners_one_by_one(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "compress = on\ncompress_codings = gzip\ncompress_min_length = 100\n",
        "pool = web\ncompress_codings = zstd gzip\n",
    ).http[0]
    route = config.routes[0]
    assert route.compress == RouteCompress(codings=("zstd", "gzip"))
    assert route.compress.over(config.compress) == CompressConfig(
        enabled=True, codings=("zstd", "gzip"), min_length=100
    )


def test_a_route_may_turn_compression_off(tmp_path: Path) -> None:
    config = load(tmp_path, "compress = on\n", "pool = web\ncompress = off\n").http[0]
    route = config.routes[0]
    assert route.compress is not None
    assert not route.compress.over(config.compress).active


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        (
            "compress = yes please\n",
            ":8: [http h] compress: expected on or off; found 'yes please'",
        ),
        (
            "compress_types = */*\n",
            ":8: [http h] compress_types: expected media types such as text/*, application/json"
            " or application/*+json; found '*/*' (a type by name: most other types are"
            " compressed already (images, video))",
        ),
        (
            "compress_types = json\n",
            ":8: [http h] compress_types: expected media types such as text/*,"
            " application/json or application/*+json; found 'json'",
        ),
        (
            "compress_codings = zstd brotli\n",
            ":8: [http h] compress_codings: expected a coding of 'gzip', 'br', 'zstd'; found"
            " 'brotli'",
        ),
        (
            "compress_codings = gzip gzip\n",
            ":8: [http h] compress_codings: expected each coding once; found 'gzip' twice",
        ),
        (
            "compress_codings = gzpi\n",
            ":8: [http h] compress_codings: expected a coding of 'gzip', 'br', 'zstd'; found"
            " 'gzpi' (did you mean 'gzip'?)",
        ),
        (
            "compress_levels = br=12\n",
            ":8: [http h] compress_levels: expected a br level from 0 to 11; found 'br=12'",
        ),
        (
            "compress_levels = gzip=0\n",
            ":8: [http h] compress_levels: expected a gzip level from 1 to 9; found 'gzip=0'",
        ),
        (
            "compress_levels = gzip 6\n",
            ":8: [http h] compress_levels: expected CODING=LEVEL words such as gzip=6 br=4"
            " zstd=3; found 'gzip'",
        ),
        (
            "compress_min_length = 1 KB\n",
            ":8: [http h] compress_min_length: expected a size from 0 to 1TiB such as 64KiB or"
            " 1MiB; found '1 KB'",
        ),
    ],
)
def test_a_bad_value_is_reported_with_its_line_what_was_expected_and_found(
    tmp_path: Path, listener: str, message: str
) -> None:
    assert errors(tmp_path, listener) == [message]


def test_a_bad_route_value_names_the_route_and_its_line(tmp_path: Path) -> None:
    found = errors(tmp_path, "compress = on\n", "pool = web\ncompress_levels = zstd=30\n")
    assert found == [
        ":11: [route r] compress_levels: expected a zstd level from 1 to 22; found 'zstd=30'"
    ]


def test_compression_keys_go_only_with_a_routes_pool(tmp_path: Path) -> None:
    found = errors(tmp_path, "", "respond = 200 ok\ncompress = on\n")
    assert found == [
        ":10: [route r] compress: expected 'compress' only in a [route] with 'pool'; found a"
        " [route] with 'respond'"
    ]
