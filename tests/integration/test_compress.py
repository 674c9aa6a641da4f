"""Compression in the real proxyd (docs/compression.md) in front of a twisted.web origin
(compress_origin.py): curl --compressed and raw Accept-Encoding requests get bodies that
decode to the origin's bytes in each coding; a server-sent-events stream arrives event by
event; HEAD, 304 and an already gzipped body pass untouched; gunzip for a client that takes
no gzip."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import pytest
import zstandard

from .compress_origin import BODY
from .harness import Backend, ProcessList, Proxyd, free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DECODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


@pytest.fixture
def origin(processes: ProcessList) -> Backend:
    process = processes.start("compress-origin", [sys.executable, HERE / "compress_origin.py"])
    match = process.wait_for_output(r"PORT (\d+)\n", 15)
    return Backend(process, int(match.group(1)))


@pytest.fixture
def front(origin: Backend, proxyd: Callable[..., Proxyd]) -> int:
    port = free_port()
    proxyd(
        f"""\
[pool web]
servers = {origin.address}

[route plain]
pool = web
gunzip = on

[http front]
listen = tcp:{port}:interface=127.0.0.1
compress = on
routes =
    path /gzipped -> route plain
    path /        -> pool web
"""
    )
    return port


def get(
    port: int, path: str, accept: str | None, method: str = "GET", **fields: str
) -> http.client.HTTPResponse:
    """The response, read whole, to a request with `accept` as its Accept-Encoding."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = dict(fields)
    if accept is not None:
        headers["Accept-Encoding"] = accept
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def test_curl_compressed_gets_the_origins_json(front: int) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", f"http://127.0.0.1:{front}/json"],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nContent-Encoding: zstd\r\n" in head  # curl offers deflate, gzip, br, zstd
    assert body == BODY


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_each_coding_decodes_to_the_origins_bytes(front: int, coding: str) -> None:
    response = get(front, "/json", coding)
    assert response.status == 200
    assert response.getheader("Content-Encoding") == coding
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Vary") == "Accept-Encoding"
    assert response.getheader("ETag") == 'W/"v1"'
    assert response.getheader("Accept-Ranges") is None
    sent: bytes = response.body  # type: ignore[attr-defined]
    assert DECODE[coding](sent) == BODY
    assert len(sent) < len(BODY) / 4


def test_a_client_without_accept_encoding_gets_the_identity_with_vary(front: int) -> None:
    response = get(front, "/json", None)
    assert response.getheader("Content-Encoding") is None
    assert response.getheader("Content-Length") == str(len(BODY))
    assert response.getheader("Vary") == "Accept-Encoding"
    assert response.body == BODY  # type: ignore[attr-defined]


def test_head_and_304_are_untouched(front: int) -> None:
    head = get(front, "/json", "gzip", method="HEAD")
    assert head.status == 200
    assert head.getheader("Content-Encoding") is None
    assert head.getheader("Content-Length") == str(len(BODY))
    assert head.body == b""  # type: ignore[attr-defined]
    # The weak ETag a compressed response carried validates against the origin's.
    not_modified = get(front, "/json", "gzip", **{"If-None-Match": 'W/"v1"'})
    assert not_modified.status == 304
    assert not_modified.getheader("Content-Encoding") is None
    assert not_modified.body == b""  # type: ignore[attr-defined]


def test_an_already_gzipped_body_passes_untouched(front: int) -> None:
    response = get(front, "/gzipped", "gzip, br")
    assert response.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(response.body) == BODY  # type: ignore[attr-defined]


def test_gunzip_decompresses_for_a_client_that_takes_no_gzip(front: int) -> None:
    response = get(front, "/gzipped", None)
    assert response.getheader("Content-Encoding") is None
    assert response.getheader("Vary") == "Accept-Encoding"
    assert response.body == BODY  # type: ignore[attr-defined]


def test_server_sent_events_arrive_one_by_one(front: int, origin: Backend) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    connection.request("GET", "/events", headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    assert response.getheader("Content-Encoding") == "gzip"
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for n in range(3):
        # Each read returns as soon as the event's flushed block arrives: the origin sends
        # the next event only when asked, after this one has been read through proxyd.
        text = b""
        while not text.endswith(b"\n\n"):
            data = response.read1(65536)
            assert data, f"the stream ended before event {n}"
            text += decoder.decompress(data)
        assert text == b"data: %d\n\n" % n
        with urllib.request.urlopen(f"http://{origin.address}/next", timeout=10) as ack:
            assert ack.read() == b"ok"
    rest = response.read()
    assert decoder.decompress(rest) == b""
    assert decoder.eof
    connection.close()
