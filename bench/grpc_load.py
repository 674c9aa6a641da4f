"""The load of bench/grpc.py's scenario: unary calls of test.Echo/Unary (tests/integration/
grpc_peer.py) over one HTTP/2 connection with `concurrency` calls in flight, for `seconds`:

    python -m bench.grpc_load PORT SECONDS CONCURRENCY

It prints `CALLS n ERRORS m SECONDS s`."""

from __future__ import annotations

import asyncio
import sys
import time

import grpc


async def run(port: int, seconds: float, concurrency: int) -> tuple[int, int, float]:
    calls = errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        began = time.monotonic()
        deadline = began + seconds

        async def worker() -> None:
            nonlocal calls, errors
            while time.monotonic() < deadline:
                try:
                    await unary(b"ping", timeout=10)
                    calls += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls, errors, time.monotonic() - began


def main() -> None:
    port, seconds, concurrency = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    calls, errors, took = asyncio.run(run(port, seconds, concurrency))
    print(f"CALLS {calls} ERRORS {errors} SECONDS {took:.3f}", flush=True)


if __name__ == "__main__":
    main()
