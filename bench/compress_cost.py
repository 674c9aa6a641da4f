"""What compressing a response costs, as docs/compression.md reports it:
`python -m bench.compress_cost` (from the repository's root).

1. 1 MiB of JSON records through each coding at a few levels, in one chunk and in the
   chunks the relay reads (64 KiB and 16 KiB from a server that sends fast, 1 KiB from one
   that trickles), flushed after each chunk (proxyd.filters.compress) or not: the size as a
   share of the original and the throughput, best of 3 runs of the process's CPU time.
2. The cost of one small response (an encoder made, its body compressed, its stream ended)
   per coding at its default level, by body size: what `compress_min_length` weighs.
"""

from __future__ import annotations

import json
import random
import time
import timeit

from proxyd.compress.encoders import DEFAULT_LEVELS, make_encoder

MIB = 1 << 20
LEVELS = {"gzip": (1, 6, 9), "br": (1, 4, 6, 11), "zstd": (1, 3, 9)}
CHUNKINGS = ((MIB, False), (65536, True), (16384, True), (16384, False), (1024, True))


def json_body(size: int = MIB) -> bytes:
    """`size` bytes of a JSON array of user-like records (cut at `size`)."""
    rng = random.Random(1)
    records = [
        {
            "id": i,
            "name": f"user{i}",
            "email": f"user{i}@example.com",
            "active": i % 3 == 0,
            "score": round(rng.random() * 1000, 3),
            "tags": rng.sample(["a", "b", "c", "d", "e", "f"], 3),
        }
        for i in range(size // 60)
    ]
    return json.dumps(records).encode()[:size]


def stream(body: bytes, coding: str, level: int, chunk: int, flush: bool) -> tuple[float, float]:
    """(compressed size / size, MB/s of the process's CPU), best of 3."""
    best = float("inf")
    out = 0
    for _ in range(3):
        start = time.process_time()
        encoder = make_encoder(coding, level, flush_each=flush)
        out = sum(len(encoder.compress(body[at : at + chunk])) for at in range(0, len(body), chunk))
        out += len(encoder.finish())
        best = min(best, time.process_time() - start)
    return out / len(body), len(body) / best / 1e6


def small(body: bytes, coding: str) -> tuple[int, float]:
    """(compressed size, µs) of one response of `body` at the coding's default level."""

    def once() -> bytes:
        encoder = make_encoder(coding)
        return encoder.compress(body) + encoder.finish()

    seconds = min(timeit.repeat(once, number=200, repeat=5)) / 200
    return len(once()), seconds * 1e6


def main() -> None:
    body = json_body()
    print(f"1 MiB of JSON ({len(body)} bytes): size after compression, CPU throughput")
    for coding, levels in LEVELS.items():
        for level in levels:
            for chunk, flush in CHUNKINGS:
                if level == 11 and chunk != MIB:
                    continue  # under 1 MB/s: once is enough
                ratio, speed = stream(body, coding, level, chunk, flush)
                how = "one chunk" if chunk == MIB else f"{chunk // 1024:2d} KiB chunks"
                how += ", flushed" if flush else ""
                print(f"  {coding:4} {level:2}  {how:24} {ratio:6.1%} {speed:7.1f} MB/s")
    print("one small response at the default levels " + str(DEFAULT_LEVELS))
    for size in (128, 256, 512, 1024, 4096):
        cells = []
        for coding in LEVELS:
            out, micros = small(body[:size], coding)
            cells.append(f"{coding} {out:5} B {micros:5.1f} µs")
        print(f"  {size:5} B: " + "   ".join(cells))


if __name__ == "__main__":
    main()
