"""A grpcio server for the gRPC tests (tests/integration/test_grpc.py), on 127.0.0.1 with an
insecure port (HTTP/2 in cleartext, h2c): a `test.Echo` service on raw bytes (no generated
code), and grpc.health.v1.Health.

    python grpc_peer.py [--name NAME] [--tls CERT KEY] [--port PORT]

It prints `PORT n` once it serves. Methods:
- Unary: the request back, prefixed with the server's name;
- Slow: the same after the number of seconds the request says;
- ServerStream: as many messages as the request says (`b"%d" % i` each);
- ClientStream: the messages' concatenation;
- Bidi: each message back as it comes;
- Fail: aborts with the status code the request says;
- SetHealth: sets the health status of service "" and "test.Echo" (the request: SERVING or
  NOT_SERVING).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="g")
    parser.add_argument("--tls", nargs=2)
    parser.add_argument("--port", type=int, default=0, help="0: one the kernel picks")
    args = parser.parse_args()
    name = args.name.encode()
    health_servicer = health.HealthServicer()

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name + b":" + request

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(float(request))
        return name + b":slow"

    def server_stream(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for i in range(int(request)):
            yield b"%d" % i

    def client_stream(requests, context: grpc.ServicerContext) -> bytes:  # type: ignore[no-untyped-def]
        return b"".join(requests)

    def bidi(requests, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        yield from requests

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(_code(int(request)), "failed on purpose")
        return b""

    def set_health(request: bytes, context: grpc.ServicerContext) -> bytes:
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(request.decode())
        health_servicer.set("", status)
        health_servicer.set("test.Echo", status)
        return b"ok"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "SetHealth": grpc.unary_unary_rpc_method_handler(set_health),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
    if args.tls:
        with open(args.tls[0], "rb") as cert, open(args.tls[1], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(f"127.0.0.1:{args.port}", credentials)
    else:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
