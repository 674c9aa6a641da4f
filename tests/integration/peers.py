"""Backends for the integration tests: `python peers.py MODE [options]`.

Each one listens on 127.0.0.1 on a port the kernel picks, prints `PORT <n>` on stdout once it
accepts connections, and serves until it is killed. Modes:

- echo:     sends `--name` and a newline (when given), then echoes what it reads.
- stream:   sends `--name` and a newline, then 16 KiB every 10 ms until the peer goes away.
- count:    reads to EOF, answers with the number of bytes read and a newline, closes.
- eof-first: sends `hello` and a newline, shuts down its write side at once, reads to EOF and
            prints `COUNT <n>` on stdout (the reverse half-close).
- source:   sends `--size` bytes of the pattern stream (see `pattern_chunks`), then closes.
- sink:     reads an 8-byte big-endian length, then that many bytes, answers `<n> <sha256>` and
            a newline. `--initial-pause`, `--pause-every` and `--pause` make it a slow reader.

The test process imports this module for `pattern_chunks` / `pattern_digest`, so that both ends
agree on the bytes without sending a digest out of band.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import random
import struct
import sys
from collections.abc import Iterator

BLOCK = 1 << 20
_BASE = random.Random(20240601).randbytes(BLOCK)


def pattern_chunks(size: int) -> Iterator[bytes]:
    """The pattern stream in 1 MiB blocks, each stamped with its index so that a lost,
    duplicated or reordered block changes the digest even though the blocks repeat."""
    index = 0
    left = size
    while left > 0:
        block = index.to_bytes(8, "big") + _BASE[8:]
        yield block[: min(left, BLOCK)]
        left -= BLOCK
        index += 1


@functools.lru_cache(maxsize=8)
def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


async def _quietly_close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        writer.close()
        await writer.wait_closed()


async def serve_echo(args, reader, writer) -> None:
    if args.name:
        writer.write(args.name.encode() + b"\n")
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def serve_stream(args, reader, writer) -> None:
    writer.write(args.name.encode() + b"\n")
    chunk = b"s" * 16384
    while True:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)


async def serve_count(args, reader, writer) -> None:
    count = 0
    while data := await reader.read(65536):
        count += len(data)
    writer.write(b"%d\n" % count)
    await writer.drain()


async def serve_eof_first(args, reader, writer) -> None:
    writer.write(b"hello\n")
    await writer.drain()
    writer.write_eof()
    count = 0
    while data := await reader.read(65536):
        count += len(data)
    print(f"COUNT {count}", flush=True)


async def serve_source(args, reader, writer) -> None:
    for chunk in pattern_chunks(args.size):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    # Wait for the peer to close, so the last bytes are not lost to a reset.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 60)


async def serve_sink(args, reader, writer) -> None:
    try:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    except asyncio.IncompleteReadError:
        return  # a health check or a probe: connected and went away
    await asyncio.sleep(args.initial_pause)
    digest = hashlib.sha256()
    count = 0
    since_pause = 0
    while count < size:
        data = await reader.read(min(262144, size - count))
        if not data:
            break
        digest.update(data)
        count += len(data)
        since_pause += len(data)
        if args.pause_every and since_pause >= args.pause_every:
            since_pause = 0
            await asyncio.sleep(args.pause)
    writer.write(f"{count} {digest.hexdigest()}\n".encode())
    await writer.drain()
    await reader.read(1)


SERVERS = {
    "echo": serve_echo,
    "stream": serve_stream,
    "count": serve_count,
    "eof-first": serve_eof_first,
    "source": serve_source,
    "sink": serve_sink,
}


async def main(args: argparse.Namespace) -> None:
    serve = SERVERS[args.mode]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(args, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await _quietly_close(writer)

    server = await asyncio.start_server(handle, args.host, args.port, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--initial-pause", type=float, default=0.0)
    parser.add_argument("--pause-every", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
